"""Databases of a test's own on a shared PostgreSQL, and the migrated template they copy.

Applying every migration costs far more than `CREATE DATABASE … TEMPLATE`, which copies files:
a run migrates one template and each test gets a copy. Tests of the migrations themselves
start from an empty database instead.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pacs_grpc.adapters.postgres.migrator import default_migrations_dir, load_migrations, migrate


def with_dbname(admin_url: str, dbname: str) -> str:
    """The admin URL pointing at another database, kept in URL form when it was a URL."""
    parts = urlsplit(admin_url)
    if parts.scheme in ("postgres", "postgresql"):
        return urlunsplit(parts._replace(path="/" + dbname))
    return make_conninfo(admin_url, dbname=dbname)


def new_database_name(prefix: str = "pacs_t") -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


async def create_database(admin_url: str, name: str, *, template: str | None = None) -> str:
    """Create `name`, empty or as a copy of `template`, and return its URL."""
    statement = sql.SQL("create database {}").format(sql.Identifier(name))
    if template is not None:
        statement += sql.SQL(" template {}").format(sql.Identifier(template))
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as conn:
        await conn.execute(statement)
    return with_dbname(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    """Drop `name`; FORCE ends connections a failed test left open, so this never hangs."""
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )


async def create_migrated_template(admin_url: str) -> str:
    """A new database with every migration applied, closed to connections; returns its name.

    PostgreSQL copies a template only while nobody is connected to it, so once migrated it
    refuses connections: a stray one would make every later copy fail.
    """
    name = new_database_name("pacs_template")
    url = await create_database(admin_url, name)
    try:
        # Migrations run as the admin, who then owns the schema, as in a test's own database.
        await migrate(url, load_migrations(default_migrations_dir()))
        async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as conn:
            await conn.execute(
                sql.SQL("alter database {} with is_template true allow_connections false").format(
                    sql.Identifier(name)
                )
            )
    except BaseException:
        await drop_database(admin_url, name)
        raise
    return name


async def drop_template(admin_url: str, name: str) -> None:
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as conn:
        # PostgreSQL refuses to drop a database while it is marked as a template.
        await conn.execute(
            sql.SQL("alter database {} with is_template false").format(sql.Identifier(name))
        )
    await drop_database(admin_url, name)
