"""`pacs-grpc envoy-config`, as a Kubernetes init container runs it, checked by Envoy itself."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pacs_grpc import cli
from pacs_grpc.edge import envoy_config
from pacs_grpc.edge.envoy_config import DESCRIPTOR_NAME, OPENAPI_NAME, TEMPLATE_NAME, EnvoyAssets


@pytest.fixture
def packaged_dir(
    scratch_dir: Callable[[str], Path], envoy_assets: EnvoyAssets, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The files laid out as the wheel ships them (pacs_grpc/_envoy), found by the CLI."""
    packaged = scratch_dir("packaged") / "_envoy"
    packaged.mkdir()
    shutil.copyfile(envoy_assets.template, packaged / TEMPLATE_NAME)
    shutil.copyfile(envoy_assets.descriptor, packaged / DESCRIPTOR_NAME)
    shutil.copyfile(envoy_assets.openapi, packaged / OPENAPI_NAME)
    monkeypatch.setattr(envoy_config, "default_envoy_dir", lambda: packaged)
    return packaged


def test_the_written_configuration_is_accepted_by_envoy(
    packaged_dir: Path,
    scratch_dir: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = scratch_dir("envoy-config") / "etc-envoy"
    monkeypatch.setenv("ENVOY_CONFIG_DIR", str(out))
    monkeypatch.setenv("GRPC_PORT", "50099")
    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", "https://viewer.example")
    monkeypatch.setenv("ENVOY_RATE_LIMIT_REQUESTS", "33")

    assert cli.main(["envoy-config", "--out", str(out)]) == 0
    assert str(out / TEMPLATE_NAME) in capsys.readouterr().out
    assert (out / DESCRIPTOR_NAME).read_bytes() == (packaged_dir / DESCRIPTOR_NAME).read_bytes()
    assert (out / OPENAPI_NAME).read_bytes() == (packaged_dir / OPENAPI_NAME).read_bytes()
    text = (out / TEMPLATE_NAME).read_text()
    assert "50099" in text
    assert "https://viewer.example" in text
    assert "tokens_per_fill: 33" in text
    assert yaml.safe_load(text)["admin"]

    envoy = Path(sys.executable).parent / "envoy"
    checked = subprocess.run(
        [str(envoy), "--mode", "validate", "--disable-hot-restart", "-c", str(out / TEMPLATE_NAME)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "OK" in checked.stdout + checked.stderr


def test_a_bad_variable_exits_2_naming_it(
    packaged_dir: Path,
    scratch_dir: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ENVOY_RATE_LIMIT_BURST", "lots")
    out = scratch_dir("envoy-config-bad")
    assert cli.main(["envoy-config", "--out", str(out)]) == 2
    assert "ENVOY_RATE_LIMIT_BURST" in capsys.readouterr().err
    assert not (out / TEMPLATE_NAME).exists()


def test_a_missing_openapi_document_is_reported_not_papered_over(
    packaged_dir: Path, scratch_dir: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (packaged_dir / OPENAPI_NAME).unlink()
    out = scratch_dir("envoy-config-missing")
    assert cli.main(["envoy-config", "--out", str(out)]) == 1
    assert "openapi.json is missing" in capsys.readouterr().err
    assert not (out / TEMPLATE_NAME).exists()
