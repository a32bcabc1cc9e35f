"""Databases for integration tests: each test gets its own, created on the server that
``postgres_admin_url`` (tests/conftest.py) points at, and dropped afterwards; a URL to it as
the application role for code the server runs; and a channel to the session's server for
modules that call it (a module may define its own)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from grpc import aio
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pacs_grpc.adapters.postgres.migrator import default_migrations_dir, load_migrations, migrate
from pacs_grpc.adapters.postgres.roles import APPLICATION_ROLE
from pacs_grpc.devstack.stack import LocalStack


def _with_dbname(admin_url: str, dbname: str) -> str:
    """The admin URL pointing at another database, kept in URL form when it was a URL."""
    parts = urlsplit(admin_url)
    if parts.scheme in ("postgres", "postgresql"):
        return urlunsplit(parts._replace(path="/" + dbname))
    return make_conninfo(admin_url, dbname=dbname)


@pytest.fixture
async def empty_database_url(postgres_admin_url: str) -> AsyncIterator[str]:
    """URL of a new, empty database (``pacs_t_<hex>``), dropped after the test."""
    name = f"pacs_t_{secrets.token_hex(6)}"
    async with await psycopg.AsyncConnection.connect(postgres_admin_url, autocommit=True) as conn:
        await conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield _with_dbname(postgres_admin_url, name)
    finally:
        # FORCE ends connections a failed test left open, so the drop never hangs or fails.
        async with await psycopg.AsyncConnection.connect(
            postgres_admin_url, autocommit=True
        ) as conn:
            await conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


@pytest.fixture
async def migrated_database_url(empty_database_url: str) -> str:
    """URL of a new database with every migration in the repository applied."""
    await migrate(empty_database_url, load_migrations(default_migrations_dir()))
    return empty_database_url


@pytest.fixture(scope="session")
def server_login_role(postgres_admin_url: str) -> Iterator[tuple[str, str]]:
    """(name, password) of a login role of this run, made a member of pacs_app by
    ``app_database_url``. Its own name, so that runs sharing a cluster do not reset each
    other's password; dropped at the end (it owns nothing, so nothing goes with it)."""
    name, password = f"pacs_server_{secrets.token_hex(4)}", secrets.token_urlsafe(18)
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("create role {} login password {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
    try:
        yield name, password
    finally:
        with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


@pytest.fixture
async def app_database_url(migrated_database_url: str, server_login_role: tuple[str, str]) -> str:
    """The migrated database as the server sees it: a login role in pacs_app, owning nothing."""
    name, password = server_login_role
    # pacs_app exists once a migration has run (0005 creates it when the cluster lacks it).
    async with await psycopg.AsyncConnection.connect(
        migrated_database_url, autocommit=True
    ) as conn:
        await conn.execute(
            sql.SQL("grant {} to {}").format(sql.Identifier(APPLICATION_ROLE), sql.Identifier(name))
        )
    return make_conninfo(migrated_database_url, user=name, password=password)


@pytest.fixture(scope="module")
async def channel(live_stack: LocalStack) -> AsyncIterator[aio.Channel]:
    assert live_stack.server is not None
    async with aio.insecure_channel(live_stack.server.address) as channel:
        yield channel
