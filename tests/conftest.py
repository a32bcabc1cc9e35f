"""Real dependencies for the whole suite, started once per run.

PostgreSQL is `DATABASE_URL` when set (e.g. the machine's PostgreSQL 15, to
prove the TCP path and that version), else an embedded PostgreSQL 16 that
the suite starts and stops itself. Nothing here is mocked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacs_grpc.devstack.postgres import EmbeddedPostgres, PostgresConfig


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL with the right to create databases; tests create their own."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedPostgres(
        PostgresConfig(data_dir=tmp_path_factory.mktemp("postgres") / "data", durable=False)
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
