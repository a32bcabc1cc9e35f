"""The database role the server runs as: pacs_app's privileges and nothing more.

Migration 0005 defines ``pacs_app``. A server connected as the schema's owner, or as a superuser,
could disable the audit triggers or rewrite ``audit_log``; start-up refuses such a role, so that
the split between the migrator and the server cannot be lost by a copied connection string.
"""

from __future__ import annotations

import psycopg

__all__ = ["APPLICATION_ROLE", "ServerRoleError", "verify_server_role"]

APPLICATION_ROLE = "pacs_app"

# One row: what the connected role could do that the server must not, and whether it holds
# pacs_app's privileges at all (without them every call would fail with "permission denied").
_CHECK = """
select
    r.rolname,
    r.rolsuper,
    r.rolcreaterole,
    pg_has_role(r.oid, c.relowner, 'MEMBER'),
    has_table_privilege(r.oid, c.oid, 'UPDATE, DELETE, TRUNCATE'),
    has_schema_privilege(r.oid, 'public', 'CREATE'),
    exists (select from pg_roles where rolname = %(app)s)
        and pg_has_role(r.oid, %(app)s, 'USAGE')
from pg_roles r, pg_class c
where r.rolname = current_user and c.oid = to_regclass('public.audit_log')
"""


class ServerRoleError(Exception):
    """The server's database role is more or less privileged than pacs_app; one line."""


async def verify_server_role(conninfo: str) -> None:
    """Raise ``ServerRoleError`` unless ``conninfo`` connects as a plain member of pacs_app.

    Needs the schema (``audit_log``) to exist: call it after the migrations are verified.
    """
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        cur = await conn.execute(_CHECK, {"app": APPLICATION_ROLE})
        row = await cur.fetchone()
    if row is None:
        raise ServerRoleError("table audit_log not found; run `pacs-grpc migrate` first")
    name, superuser, create_role, owner, may_change_audit, may_create, in_app_role = row
    reasons = [
        reason
        for flag, reason in (
            (superuser, "is a superuser"),
            # Before PostgreSQL 16 such a role can grant itself the owner's role.
            (create_role and not superuser, "may create roles (CREATEROLE)"),
            (owner and not superuser, "owns the schema (can disable the audit triggers)"),
            (may_change_audit and not (superuser or owner), "may change audit_log"),
            (may_create and not (superuser or owner), "may create objects in schema public"),
        )
        if flag
    ]
    if reasons:
        raise ServerRoleError(
            f"DATABASE_URL connects as role {name!r}, which {' and '.join(reasons)}; the server "
            f"must connect as a login role that is a member of {APPLICATION_ROLE} and owns "
            "nothing, and the migrations as the owner (MIGRATION_DATABASE_URL)"
        )
    if not in_app_role:
        raise ServerRoleError(
            f"DATABASE_URL connects as role {name!r}, which is not a member of "
            f"{APPLICATION_ROLE}: grant {APPLICATION_ROLE} to {name}"
        )
