"""The wheels the image installs: the server carries everything `pacs-grpc` needs at run time
and nothing of the local development stack; the stubs and the client split `pacs` between them."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
            "--no-build-isolation", "--wheel-dir", str(out),
            str(REPOSITORY / "clients" / "protos"), str(REPOSITORY / "clients" / "python"),
            str(REPOSITORY),
        ],
        check=True,
        timeout=180,
    )  # fmt: skip
    return out


def _names(wheels: Path, pattern: str) -> set[str]:
    (wheel,) = wheels.glob(pattern)
    return set(zipfile.ZipFile(wheel).namelist())


def test_wheel_contains_the_migrations_and_the_entry_point(wheels: Path) -> None:
    (wheel,) = wheels.glob("pacs_grpc-*.whl")
    names = _names(wheels, "pacs_grpc-*.whl")
    shipped = {n.rsplit("/", 1)[-1] for n in names if n.startswith("pacs_grpc/_migrations/")}
    in_repository = {p.name for p in (REPOSITORY / "migrations").glob("*.sql")}
    assert in_repository
    assert shipped == in_repository
    assert "pacs_grpc/bootstrap/__init__.py" in names
    # What `pacs-grpc envoy-config` renders and copies for the sidecar.
    for shipped_file in ("envoy.yaml", "pacs.binpb", "openapi.json"):
        assert f"pacs_grpc/_envoy/{shipped_file}" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    commands = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "pacs-grpc = pacs_grpc.cli:main" in commands
    assert not any(n.startswith("tests/") for n in names)


def test_the_server_wheel_holds_no_development_stack_and_no_stubs(wheels: Path) -> None:
    names = _names(wheels, "pacs_grpc-*.whl")
    tops = {n.split("/", 1)[0] for n in names if not n.startswith("pacs_grpc-")}
    # Only the server's own package: the stubs come from pacs-extension-protos.
    assert tops == {"pacs_grpc"}
    assert not any("devstack" in n for n in names)
    (wheel,) = wheels.glob("pacs_grpc-*.whl")
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "pacs-dev" not in zipfile.ZipFile(wheel).read(entry_points).decode()
    # Nothing the server ships imports it (what the import contract forbids, in the wheel).
    archive = zipfile.ZipFile(wheel)
    imported = {
        module
        for n in names
        if n.endswith(".py")
        for module in _imported_modules(archive.read(n).decode())
    }
    assert "pacs_grpc.config" in imported
    assert not {m for m in imported if m.split(".")[0] == "pacs_devstack"}


def test_the_stubs_and_the_client_share_the_pacs_namespace(wheels: Path) -> None:
    protos = _names(wheels, "pacs_extension_protos-*.whl")
    client = _names(wheels, "pacs_extension_client-*.whl")
    generated = {p.name for p in (REPOSITORY / "clients/protos/src/pacs/v1").glob("*_pb2*.py*")}
    assert generated
    assert {n.rsplit("/", 1)[-1] for n in protos if n.startswith("pacs/v1/")} == {
        *generated,
        "__init__.py",
        "py.typed",
    }
    assert "pacs/client/client.py" in client
    assert "pacs/client/py.typed" in client
    # A namespace package: neither wheel owns pacs/__init__.py, and neither ships the other's.
    for names, other in ((protos, "pacs/client/"), (client, "pacs/v1/")):
        assert "pacs/__init__.py" not in names
        assert not any(n.startswith(other) for n in names)


def _imported_modules(source: str) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
    return modules
