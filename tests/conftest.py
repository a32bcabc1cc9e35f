"""Real dependencies for the whole suite, started once per run.

PostgreSQL is `DATABASE_URL` when set (e.g. the machine's PostgreSQL 15, to
prove the TCP path and that version), else an embedded PostgreSQL 16 that
the suite starts and stops itself. Nothing here is mocked.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pacs_devstack.issuer import DevIssuer
from pacs_devstack.postgres import EmbeddedPostgres, PostgresConfig
from pacs_devstack.server import ServerProcess
from pacs_devstack.stack import LocalStack
from tests.support.pacs import running_orthanc
from tests.support.stacks import ServerStarter, own_stack


@pytest.fixture(scope="session")
def scratch_dir() -> Iterator[Callable[[str], Path]]:
    """Makes data directories for the servers tests start, removed after the run.

    Not under pytest's tmp_path: every pytest run (another developer's, a
    helper's) resets its root to mode 0700, which locks the unprivileged
    user PostgreSQL runs as out of a data directory kept there.
    """
    root = Path(tempfile.mkdtemp(prefix="pacs-tests-"))
    root.chmod(0o755)
    counter = iter(range(1_000_000))

    def make(name: str) -> Path:
        path = root / f"{name}{next(counter)}"
        path.mkdir()
        return path

    try:
        yield make
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_admin_url(scratch_dir: Callable[[str], Path]) -> Iterator[str]:
    """A URL with the right to create databases; tests create their own."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedPostgres(
        PostgresConfig(data_dir=scratch_dir("postgres") / "data", durable=False)
    )
    server.start()
    try:
        yield server.url()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave logs and screenshots worth keeping after a CI run."""
    path = Path(os.environ.get("PACS_TEST_ARTIFACTS", "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


@pytest.fixture(scope="session")
def pacs_url(scratch_dir: Callable[[str], Path], artifacts_dir: Path) -> Iterator[str]:
    """The DICOMweb root of an Orthanc of this run's own, on free ports, empty at start.

    Fails, never skips, where Orthanc is not installed: CI installs it. Tests that stop
    the PACS start their own (tests/support/pacs.py running_orthanc).
    """
    with running_orthanc(
        scratch_dir("orthanc"), log_path=artifacts_dir / "session-orthanc.log"
    ) as orthanc:
        yield orthanc.dicomweb_url


@pytest.fixture(scope="session")
def live_stack(scratch_dir: Callable[[str], Path], artifacts_dir: Path) -> Iterator[LocalStack]:
    """The whole stack with a running server, shared by tests that only call it.

    Tests that stop PostgreSQL, storage or the server start their own.
    """
    with own_stack(
        scratch_dir("live"),
        {"HEALTH_PROBE_INTERVAL_SECONDS": "0.5", "SWEEPER_INTERVAL_SECONDS": "1"},
        server_log=artifacts_dir / "live-server.log",
    ) as stack:
        yield stack


@pytest.fixture(scope="session")
def issuer(live_stack: LocalStack) -> DevIssuer:
    """The dev issuer `live_stack`'s servers trust: it mints the tests' tokens."""
    assert live_stack.issuer is not None
    return live_stack.issuer


@pytest.fixture(scope="session")
def pacs_server(
    live_stack: LocalStack, pacs_url: str, artifacts_dir: Path
) -> Iterator[ServerProcess]:
    """A second server on the session stack's database and storage, linked to the session's
    PACS with PACS_VALIDATE=enforce; `live_stack`'s own server stays unlinked."""
    servers = ServerStarter(live_stack, artifacts_dir, "pacs-linked-server")
    try:
        yield servers.start_linked(pacs_url)
    finally:
        servers.stop_all()
