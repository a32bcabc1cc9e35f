"""`pacs-grpc migrate` as operators and the Kubernetes Job run it."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg


def _migrate(database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacs_grpc", "migrate"],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_migrate_applies_then_is_a_no_op(empty_database_url: str) -> None:
    first = _migrate(empty_database_url)
    assert first.returncode == 0, first.stderr
    assert "migration(s) applied" in first.stdout
    assert not first.stdout.startswith("pacs-grpc migrate: 0 ")
    second = _migrate(empty_database_url)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "pacs-grpc migrate: 0 migration(s) applied"
    with psycopg.connect(empty_database_url) as conn:
        row = conn.execute("select count(*) from schema_migrations").fetchone()
    assert row is not None
    assert row[0] >= 1


def test_migrate_without_database_url_names_the_variable() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "pacs_grpc", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "pacs-grpc: configuration error: DATABASE_URL is required but not set"
    )
