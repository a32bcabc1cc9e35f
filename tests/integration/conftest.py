"""Databases for integration tests: each test gets its own, created on the server that
``postgres_admin_url`` (tests/conftest.py) points at, and dropped afterwards: empty, for tests
of the migrations, or a copy of a template migrated once per run (tests/support/databases.py);
a URL to it as the application role for code the server runs; and a channel to the session's
server for modules that call it (a module may define its own)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import psycopg
import pytest
from grpc import aio
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pacs_devstack.stack import LocalStack
from pacs_grpc.adapters.postgres.roles import APPLICATION_ROLE
from tests.support.databases import (
    create_database,
    create_migrated_template,
    drop_database,
    drop_template,
    new_database_name,
)


@pytest.fixture
async def empty_database_url(postgres_admin_url: str) -> AsyncIterator[str]:
    """URL of a new, empty database (``pacs_t_<hex>``), dropped after the test."""
    name = new_database_name()
    url = await create_database(postgres_admin_url, name)
    try:
        yield url
    finally:
        await drop_database(postgres_admin_url, name)


@pytest.fixture(scope="session")
async def migrated_template(postgres_admin_url: str) -> AsyncIterator[str]:
    """Name of a database with every migration applied, once per run, for tests to copy."""
    name = await create_migrated_template(postgres_admin_url)
    try:
        yield name
    finally:
        await drop_template(postgres_admin_url, name)


@pytest.fixture
async def migrated_database_url(
    postgres_admin_url: str, migrated_template: str
) -> AsyncIterator[str]:
    """URL of a new database with every migration in the repository applied: a copy of
    ``migrated_template``, owned like it by the admin, dropped after the test."""
    name = new_database_name()
    url = await create_database(postgres_admin_url, name, template=migrated_template)
    try:
        yield url
    finally:
        await drop_database(postgres_admin_url, name)


@pytest.fixture(scope="session")
async def server_login_role(
    postgres_admin_url: str, migrated_template: str
) -> AsyncIterator[tuple[str, str]]:
    """(name, password) of a login role of this run in pacs_app, owning nothing. Its own name,
    so that runs sharing a cluster do not reset each other's password; dropped at the end (it
    owns nothing, so nothing goes with it)."""
    name, password = f"pacs_server_{secrets.token_hex(4)}", secrets.token_urlsafe(18)
    role = sql.Identifier(name)
    async with await psycopg.AsyncConnection.connect(postgres_admin_url, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("create role {} login password {}").format(role, sql.Literal(password))
        )
        # Roles are cluster-wide: pacs_app exists since the template's migration 0005 ran.
        await conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(APPLICATION_ROLE), role))
    try:
        yield name, password
    finally:
        async with await psycopg.AsyncConnection.connect(
            postgres_admin_url, autocommit=True
        ) as conn:
            await conn.execute(sql.SQL("drop role if exists {}").format(role))


@pytest.fixture
def app_database_url(migrated_database_url: str, server_login_role: tuple[str, str]) -> str:
    """The migrated database as the server sees it: a login role in pacs_app, owning nothing.
    The template's grants to pacs_app come with the copy."""
    name, password = server_login_role
    return make_conninfo(migrated_database_url, user=name, password=password)


@pytest.fixture(scope="module")
async def channel(live_stack: LocalStack) -> AsyncIterator[aio.Channel]:
    assert live_stack.server is not None
    async with aio.insecure_channel(live_stack.server.address) as channel:
        yield channel
