"""The wheel the image installs carries everything `pacs-grpc` needs at run time."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_wheel_contains_the_migrations_and_the_entry_point(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
            "--no-build-isolation", "--wheel-dir", str(tmp_path), str(REPOSITORY),
        ],
        check=True,
        timeout=120,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("pacs_grpc-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n.rsplit("/", 1)[-1] for n in names if n.startswith("pacs_grpc/_migrations/")}
    in_repository = {p.name for p in (REPOSITORY / "migrations").glob("*.sql")}
    assert in_repository
    assert shipped == in_repository
    assert "pacs_grpc/bootstrap.py" in names
    # What `pacs-grpc envoy-config` renders and copies for the sidecar.
    for shipped_file in ("envoy.yaml", "pacs.binpb", "openapi.json"):
        assert f"pacs_grpc/_envoy/{shipped_file}" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "pacs-grpc = pacs_grpc.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert not any(n.startswith("tests/") for n in names)
