"""requirements/runtime.lock: the image's runtime dependencies, pinned and hashed.

`make check-lock` compiles the lock again (it needs PyPI); this checks offline what must hold
whatever PyPI says: every declared runtime dependency is pinned within its range, every pin
carries hashes, the stubs and client built from this repository are not fetched, and the floors past
the published advisories hold.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPOSITORY = Path(__file__).resolve().parents[2]
LOCK = REPOSITORY / "requirements" / "runtime.lock"
# Built from this repository (clients/protos, clients/python), never fetched.
BUILT_HERE = {"pacs-extension-protos", "pacs-extension-client"}

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ \\]+)")


def _pins() -> dict[str, tuple[Version, list[str]]]:
    """Each locked package: its version and hashes."""
    pins: dict[str, tuple[Version, list[str]]] = {}
    current: list[str] = []
    for line in LOCK.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            current = []
            pins[canonicalize_name(match[1])] = (Version(match[2]), current)
        elif line.strip().startswith("--hash="):
            current.append(line.strip().removeprefix("--hash=").rstrip(" \\"))
        else:
            assert not line.strip() or line.strip().startswith("#"), line
    return pins


def _declared(pyproject: Path) -> list[Requirement]:
    project = tomllib.loads(pyproject.read_text())["project"]
    return [Requirement(text) for text in project["dependencies"]]


PINS = _pins()
SERVER = _declared(REPOSITORY / "pyproject.toml")
CLIENT = _declared(REPOSITORY / "clients" / "python" / "pyproject.toml")
PROTOS = _declared(REPOSITORY / "clients" / "protos" / "pyproject.toml")


@pytest.mark.parametrize(
    "requirement",
    [r for r in [*SERVER, *CLIENT, *PROTOS] if canonicalize_name(r.name) not in BUILT_HERE],
    ids=str,
)
def test_every_runtime_dependency_is_pinned_within_its_range(requirement: Requirement) -> None:
    name = canonicalize_name(requirement.name)
    assert name in PINS, f"{name} is not in runtime.lock: run `make lock`"
    version, _ = PINS[name]
    assert requirement.specifier.contains(version, prereleases=True), (requirement, version)


def test_the_extras_dependencies_are_locked_too() -> None:
    # psycopg[binary] brings libpq; pyjwt[crypto] brings cryptography.
    assert {"psycopg-binary", "cryptography"} <= set(PINS)
    assert PINS["psycopg-binary"][0] == PINS["psycopg"][0]


def test_every_pin_carries_sha256_hashes() -> None:
    assert PINS
    for name, (_, hashes) in PINS.items():
        assert hashes, name
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name


def test_the_packages_built_here_are_never_fetched() -> None:
    # A package of such a name on an index would be somebody else's.
    assert not BUILT_HERE & set(PINS)
    server = {canonicalize_name(r.name): r for r in SERVER}
    assert set(server) >= BUILT_HERE


def test_the_floors_past_published_advisories_hold() -> None:
    server: dict[str, Requirement] = {canonicalize_name(r.name): r for r in SERVER}
    # Declared by the server itself, which imports it, not only reached through minio.
    assert "urllib3" in server
    for name, floor in (("cryptography", "48.0.1"), ("urllib3", "2.7")):
        assert not server[name].specifier.contains(_just_below(floor)), name
        assert PINS[name][0] >= Version(floor), name


def _just_below(version: str) -> str:
    release = Version(version).release
    return ".".join(map(str, [*release[:-1], release[-1] - 1])) if release[-1] else "0"
