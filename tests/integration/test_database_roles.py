"""The server runs as pacs_app (migration 0005), which owns nothing and may only append to the
audit trail; the migrations run as the owner. The stack and the tests use the same split."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from pacs_devstack.ports import free_port
from pacs_devstack.postgres import EmbeddedPostgres, PostgresConfig
from pacs_devstack.stack import DEV_SERVER_ROLE, LocalStack
from pacs_grpc.adapters.postgres.migrator import default_migrations_dir, load_migrations, migrate
from pacs_grpc.adapters.postgres.roles import APPLICATION_ROLE, ServerRoleError, verify_server_role

Conn = psycopg.AsyncConnection[TupleRow]

# What the server may do to each table, and nothing else. A migration that adds a table adds
# its grants and its line here.
EXPECTED_GRANTS: dict[str, set[str]] = {
    **{
        table: {"SELECT", "INSERT", "UPDATE", "DELETE"}
        for table in (
            "security_project_member",
            "annotation_annotation",
            "annotation_mask_group",
            "mask_upload",
            "storage_deletion_outbox",
        )
    },
    # Removed only by cascades (migration 0009), which run with the owner's rights.
    **{
        table: {"SELECT", "INSERT", "UPDATE"}
        for table in ("security_user", "security_project", "annotation_mask", "idempotency_key")
    },
    "audit_log": {"SELECT", "INSERT"},
    # Exports are written once; the cascade from their group runs as the table's owner.
    "mask_group_export": {"SELECT", "INSERT"},
    "annotation_event": {"SELECT", "INSERT"},
    "annotation_revision": {"SELECT", "INSERT"},
    "schema_migrations": {"SELECT"},
}


@pytest.fixture
async def app(app_database_url: str) -> AsyncIterator[Conn]:
    # Autocommit: a refused statement does not poison the statements after it.
    async with await psycopg.AsyncConnection.connect(app_database_url, autocommit=True) as conn:
        yield conn


async def _refused(conn: Conn, statement: str) -> str:
    """The primary message of the privilege error ``statement`` raises."""
    with pytest.raises(errors.InsufficientPrivilege) as raised:
        await conn.execute(statement.encode())
    return raised.value.diag.message_primary or ""


@pytest.mark.parametrize(
    "statement",
    [
        "alter table audit_log disable trigger all",
        "alter table audit_log disable trigger audit_log_no_update_delete",
        "alter table audit_log disable trigger audit_log_no_truncate",
        "drop trigger audit_log_no_update_delete on audit_log",
        "create or replace function audit_log_refuse_change() returns trigger"
        " language plpgsql as $$ begin return new; end $$",
    ],
)
async def test_the_app_role_cannot_switch_off_the_audit_triggers(app: Conn, statement: str) -> None:
    message = await _refused(app, statement)
    assert message.startswith(("must be owner of", "permission denied for schema"))


@pytest.mark.parametrize(
    "statement",
    [
        # No row matches, so no row trigger fires: only the missing grant can refuse these.
        "update audit_log set outcome = 'error' where false",
        "delete from audit_log where false",
        "truncate audit_log",
        "update annotation_event set event_type = 'deleted' where false",
        "delete from annotation_event where false",
        "insert into schema_migrations (version, name, checksum) values (9999, 'x', 'x')",
        "delete from schema_migrations where false",
    ],
)
async def test_append_only_tables_refuse_changes_by_grant_not_only_by_trigger(
    app: Conn, statement: str
) -> None:
    message = await _refused(app, statement)
    assert message.startswith("permission denied for table")


async def test_the_app_role_inserts_and_reads_audit_rows(app: Conn) -> None:
    request_id = secrets.token_hex(8)
    cur = await app.execute(
        "insert into audit_log (action, outcome, request_id) values ('Probe', 'ok', %s)"
        " returning id",
        (request_id,),
    )
    inserted = await cur.fetchone()
    assert inserted is not None
    cur = await app.execute("select id, action from audit_log where request_id = %s", (request_id,))
    assert await cur.fetchall() == [(inserted[0], "Probe")]


@pytest.mark.parametrize(
    "statement",
    [
        "create table app_owned (id int)",
        "create view app_view as select 1 as one",
        "create function app_fn() returns int language sql as 'select 1'",
        "alter table annotation_annotation add column smuggled text",
    ],
)
async def test_the_app_role_cannot_change_the_schema(app: Conn, statement: str) -> None:
    await _refused(app, statement)


async def test_the_app_role_cannot_pass_on_privileges(app: Conn) -> None:
    # PostgreSQL only warns about a GRANT without grant option; what counts is that nothing moved.
    await app.execute("grant update, delete on audit_log to public")
    await app.execute("grant select on annotation_annotation to public")
    cur = await app.execute(
        "select has_table_privilege('public', 'audit_log', 'UPDATE, DELETE'),"
        " has_table_privilege('public', 'annotation_annotation', 'SELECT')"
    )
    assert await cur.fetchone() == (False, False)


async def test_every_table_grants_pacs_app_exactly_what_the_server_needs(
    migrated_database_url: str,
) -> None:
    async with await psycopg.AsyncConnection.connect(migrated_database_url) as conn:
        cur = await conn.execute(
            """
            select c.relname, c.relkind,
                   coalesce(array_agg(a.privilege_type) filter (where a.privilege_type is not null),
                            '{}'),
                   pg_has_role(%(app)s, c.relowner, 'MEMBER')
            from pg_class c
            join pg_namespace n on n.oid = c.relnamespace
            left join lateral aclexplode(c.relacl) a
                   on a.grantee = (select oid from pg_roles where rolname = %(app)s)
            where n.nspname = 'public' and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')
            group by c.relname, c.relkind, c.relowner
            """,
            {"app": APPLICATION_ROLE},
        )
        rows = await cur.fetchall()
    tables = {name: set(privileges) for name, kind, privileges, _ in rows if kind != "S"}
    assert tables == EXPECTED_GRANTS
    # Identity columns draw from their sequences without a grant.
    assert [name for name, kind, privileges, _ in rows if kind == "S" and privileges] == []
    assert [name for name, _, _, owns in rows if owns] == []


async def test_verify_server_role_accepts_only_a_plain_member_of_pacs_app(
    migrated_database_url: str, app_database_url: str, postgres_admin_url: str
) -> None:
    await verify_server_role(app_database_url)
    # The suite's migrator owns the tables (and is a superuser unless DATABASE_URL says otherwise).
    with pytest.raises(ServerRoleError, match=r"is a superuser|owns the schema"):
        await verify_server_role(migrated_database_url)
    stranger = f"pacs_stranger_{secrets.token_hex(4)}"
    async with await psycopg.AsyncConnection.connect(postgres_admin_url, autocommit=True) as admin:
        await admin.execute(
            sql.SQL("create role {} login password 'x'").format(sql.Identifier(stranger))
        )
        try:
            stranger_url = make_conninfo(migrated_database_url, user=stranger, password="x")
            with pytest.raises(ServerRoleError, match=f"not a member of {APPLICATION_ROLE}"):
                await verify_server_role(stranger_url)
            # A member of pacs_app that may create roles could make itself the owner's member.
            await admin.execute(
                sql.SQL("grant {} to {}").format(
                    sql.Identifier(APPLICATION_ROLE), sql.Identifier(stranger)
                )
            )
            await admin.execute(
                sql.SQL("alter role {} createrole").format(sql.Identifier(stranger))
            )
            with pytest.raises(ServerRoleError, match="CREATEROLE"):
                await verify_server_role(stranger_url)
        finally:
            await admin.execute(sql.SQL("drop role {}").format(sql.Identifier(stranger)))


async def test_two_databases_of_a_new_cluster_can_create_pacs_app_at_once(
    scratch_dir: Callable[[str], Path],
) -> None:
    """Roles are cluster-wide but each database runs 0005: the loser of the race to create
    pacs_app must carry on, not fail its migration."""
    cluster = EmbeddedPostgres(
        PostgresConfig(data_dir=scratch_dir("roles-cluster") / "data", durable=False)
    )
    cluster.start()
    try:
        urls = [cluster.create_database(name) for name in ("first", "second")]
        migrations = load_migrations(default_migrations_dir())
        before = [m for m in migrations if m.version < 5]
        (role_migration,) = [m for m in migrations if m.version == 5]
        for url in urls:
            await migrate(url, before)
        async with (
            await psycopg.AsyncConnection.connect(urls[0]) as first,
            await psycopg.AsyncConnection.connect(urls[1]) as second,
        ):
            await first.execute(role_migration.sql.encode())
            # Its CREATE ROLE waits for the first transaction's uncommitted pacs_app.
            racing = asyncio.create_task(second.execute(role_migration.sql.encode()))
            await asyncio.sleep(0.5)
            assert not racing.done()
            await first.commit()
            await racing
            await second.commit()
        for url in urls:
            async with await psycopg.AsyncConnection.connect(url) as conn:
                cur = await conn.execute(
                    "select has_table_privilege(%(app)s, 'audit_log', 'INSERT'),"
                    " has_table_privilege(%(app)s, 'audit_log', 'UPDATE')",
                    {"app": APPLICATION_ROLE},
                )
                assert await cur.fetchone() == (True, False)
    finally:
        cluster.stop()


@pytest.fixture
def unprivileged_migrator(postgres_admin_url: str) -> Iterator[str]:
    """URL of a new database owned by a new role that is neither superuser nor CREATEROLE:
    what a managed PostgreSQL gives the migrations, once an operator created pacs_app."""
    suffix = secrets.token_hex(4)
    role, database, password = f"pacs_owner_{suffix}", f"pacs_t_owner_{suffix}", "owner-pw"
    with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("create role {} login password {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        admin.execute(
            sql.SQL("create database {} owner {}").format(
                sql.Identifier(database), sql.Identifier(role)
            )
        )
    try:
        yield make_conninfo(postgres_admin_url, dbname=database, user=role, password=password)
    finally:
        with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(database))
            )
            admin.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))


async def test_a_database_owner_without_superuser_applies_every_migration(
    unprivileged_migrator: str, migrated_database_url: str, server_login_role: tuple[str, str]
) -> None:
    # migrated_database_url made sure pacs_app exists in this cluster, as an operator would.
    applied = await migrate(unprivileged_migrator, load_migrations(default_migrations_dir()))
    assert [m.version for m in applied] == [
        m.version for m in load_migrations(default_migrations_dir())
    ]
    with pytest.raises(ServerRoleError, match="owns the schema"):
        await verify_server_role(unprivileged_migrator)
    name, password = server_login_role
    async with await psycopg.AsyncConnection.connect(
        migrated_database_url, autocommit=True
    ) as admin:
        await admin.execute(
            sql.SQL("grant {} to {}").format(sql.Identifier(APPLICATION_ROLE), sql.Identifier(name))
        )
    await verify_server_role(make_conninfo(unprivileged_migrator, user=name, password=password))


async def test_the_stacks_server_connects_as_the_app_role(live_stack: LocalStack) -> None:
    assert live_stack.server is not None
    dbname = conninfo_to_dict(live_stack.server_database_url)["dbname"]
    async with await psycopg.AsyncConnection.connect(live_stack.database_url) as admin:
        cur = await admin.execute(
            "select distinct usename from pg_stat_activity"
            " where datname = %s and application_name like %s",
            # The pool's connections and the event listener's (pacs-grpc-events).
            (dbname, "pacs-grpc%"),
        )
        users = {row[0] for row in await cur.fetchall()}
    assert users == {DEV_SERVER_ROLE}
    async with await psycopg.AsyncConnection.connect(live_stack.server_database_url) as conn:
        cur = await conn.execute(
            "select current_user, rolsuper, pg_has_role(current_user, %s, 'USAGE')"
            " from pg_roles where rolname = current_user",
            (APPLICATION_ROLE,),
        )
        assert await cur.fetchone() == (DEV_SERVER_ROLE, False, True)


def test_serve_refuses_to_run_as_the_schema_owner(live_stack: LocalStack) -> None:
    env = live_stack.server_environment(free_port())
    env["DATABASE_URL"] = live_stack.database_url
    result = subprocess.run(
        [sys.executable, "-m", "pacs_grpc", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("pacs-grpc: database role:")
    assert "is a superuser" in last
    assert "MIGRATION_DATABASE_URL" in last


def test_migrate_connects_with_migration_database_url_over_database_url(
    empty_database_url: str,
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pacs_grpc", "migrate"],
        env={
            **os.environ,
            "MIGRATION_DATABASE_URL": empty_database_url,
            # Unreachable: migrate must not use it when MIGRATION_DATABASE_URL is set.
            "DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/nowhere",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    with psycopg.connect(empty_database_url) as conn:
        row = conn.execute("select count(*) from schema_migrations").fetchone()
    assert row == (len(load_migrations(default_migrations_dir())),)
