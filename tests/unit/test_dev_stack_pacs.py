"""What the local stack tells its server and its developer about the PACS (nothing started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs_devstack.orthanc import INSTALL_HINT
from pacs_devstack.stack import (
    LocalStack,
    SampleSeries,
    StackConfig,
    pacs_banner,
)


def test_server_is_linked_to_a_pacs_url_from_the_stacks_environment(tmp_path: Path) -> None:
    stack = LocalStack(
        StackConfig(tmp_path, environment={"PACS_DICOMWEB_URL": "https://pacs.example/dicom-web"})
    )
    stack.pacs_url = "https://pacs.example/dicom-web"  # as start_dependencies sets it
    env = stack.server_environment(50051)
    assert env["PACS_DICOMWEB_URL"] == "https://pacs.example/dicom-web"
    assert env["PACS_VALIDATE"] == "enforce"


def test_a_pacs_validate_the_caller_chose_is_kept(tmp_path: Path) -> None:
    stack = LocalStack(StackConfig(tmp_path, environment={"PACS_VALIDATE": "warn"}))
    stack.pacs_url = "http://127.0.0.1:8042/dicom-web"
    assert stack.server_environment(50051)["PACS_VALIDATE"] == "warn"


def test_a_stack_without_a_pacs_drops_one_from_the_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests' stacks have an explicit environment: a developer's PACS must not reach them.
    monkeypatch.setenv("PACS_DICOMWEB_URL", "https://pacs.example/dicom-web")
    monkeypatch.delenv("PACS_VALIDATE", raising=False)
    stack = LocalStack(StackConfig(tmp_path))
    env = stack.server_environment(50051)
    assert "PACS_DICOMWEB_URL" not in env
    assert "PACS_VALIDATE" not in env


def test_banner_without_a_pacs_says_how_to_add_one() -> None:
    banner = pacs_banner("", own=False, sample=None)
    assert INSTALL_HINT in banner
    assert INSTALL_HINT == "sudo apt-get install orthanc orthanc-dicomweb"
    assert "PACS_DICOMWEB_URL" in banner


def test_banner_with_the_local_pacs_gives_its_url_and_the_sample_uids() -> None:
    sample = SampleSeries(study_uid="2.25.1", series_uid="2.25.2", instances=64)
    banner = pacs_banner("http://127.0.0.1:8042/dicom-web", own=True, sample=sample)
    assert "http://127.0.0.1:8042/dicom-web" in banner
    assert "study UID    2.25.1" in banner
    assert "series UID   2.25.2" in banner
    assert "64 synthetic slices" in banner
