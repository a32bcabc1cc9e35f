"""`pacs-grpc migrate` connects as the schema's owner: MIGRATION_DATABASE_URL, else DATABASE_URL."""

from __future__ import annotations

import pytest

from pacs_grpc.config import ConfigError, migration_database_url_from_env

SERVER = "postgresql://pacs_server:pw@db.internal:5432/pacs"
OWNER = "postgresql://pacs_owner:pw@db.internal:5432/pacs"


def test_the_owners_url_wins_over_the_servers() -> None:
    env = {"DATABASE_URL": SERVER, "MIGRATION_DATABASE_URL": OWNER}
    assert migration_database_url_from_env(env) == OWNER


@pytest.mark.parametrize("unset", [{}, {"MIGRATION_DATABASE_URL": "  "}])
def test_without_it_migrate_uses_database_url(unset: dict[str, str]) -> None:
    assert migration_database_url_from_env({"DATABASE_URL": SERVER, **unset}) == SERVER


def test_a_malformed_owner_url_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^MIGRATION_DATABASE_URL must be a postgresql:// URL"):
        migration_database_url_from_env({"DATABASE_URL": SERVER, "MIGRATION_DATABASE_URL": "x"})


def test_neither_names_database_url() -> None:
    with pytest.raises(ConfigError, match=r"^DATABASE_URL"):
        migration_database_url_from_env({})
