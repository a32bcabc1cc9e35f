"""security_user: profiles created and kept in step from token claims."""

from __future__ import annotations

from collections.abc import Mapping

from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import class_row

from pacs_grpc.adapters.postgres.database import Connection
from pacs_grpc.domain.errors import AlreadyExists, FailedPrecondition
from pacs_grpc.domain.identity import Principal, User

_USER_COLUMNS = (
    "id, keycloak_id::text as keycloak_id, username, email, full_name, organization,"
    " department, phone, created_at, updated_at"
)

# A token whose e-mail changed (in Keycloak) replaces the stored one; an
# unchanged token leaves a profile edit alone (see migration 0002). The
# no-op update when nothing changed still returns the row in one round trip.
UPSERT_FROM_CLAIMS = f"""
insert into security_user as u (keycloak_id, username, email, claims_email, full_name)
values (%(keycloak_id)s, %(username)s, %(email)s, %(email)s, %(full_name)s)
on conflict (keycloak_id) do update set
    username = excluded.username,
    email = case when u.claims_email is distinct from excluded.claims_email
                 then excluded.email else u.email end,
    claims_email = excluded.claims_email,
    full_name = coalesce(u.full_name, excluded.full_name),
    updated_at = case when (u.username, u.claims_email) is distinct from
                           (excluded.username, excluded.claims_email)
                      then now() else u.updated_at end
returning {_USER_COLUMNS}
"""

GET_USER = f"select {_USER_COLUMNS} from security_user where id = %(user_id)s"

# The columns UpdateUser may change; anything else is refused before SQL.
UPDATABLE_COLUMNS = frozenset({"email", "full_name", "organization", "department", "phone"})


class UserRepository:
    """UserStore (pacs_grpc.services.ports) on security_user, in the caller's transaction.

    `upsert_from_claims` runs in a savepoint: a username another account holds is
    FailedPrecondition, an e-mail another profile holds is left off this one. `update` maps an
    e-mail another account holds to AlreadyExists (user.email).
    """

    async def upsert_from_claims(self, conn: Connection, principal: Principal) -> User:
        params = {
            "keycloak_id": principal.subject,
            "username": principal.username,
            "email": principal.email,
            "full_name": principal.full_name,
        }
        async with conn.cursor(row_factory=class_row(User)) as cur:
            try:
                # A savepoint, so a unique violation leaves the transaction usable.
                async with conn.transaction():
                    await cur.execute(UPSERT_FROM_CLAIMS, params)
            except pg_errors.UniqueViolation as error:
                if _constraint(error) == "security_user_username_key":
                    raise FailedPrecondition(
                        "another account already uses this username; ask an administrator"
                    ) from None
                # The token's e-mail belongs to another profile: keep this
                # one without it rather than refuse the caller.
                await cur.execute(UPSERT_FROM_CLAIMS, {**params, "email": None})
            user = await cur.fetchone()
        assert user is not None
        return user

    async def get(self, conn: Connection, user_id: int) -> User | None:
        async with conn.cursor(row_factory=class_row(User)) as cur:
            await cur.execute(GET_USER, {"user_id": user_id})
            return await cur.fetchone()

    async def update(
        self, conn: Connection, user_id: int, changes: Mapping[str, str | None]
    ) -> User | None:
        """Set the given columns (a subset of UPDATABLE_COLUMNS); values are parameters."""
        columns = sorted(changes)
        if not columns or not set(columns) <= UPDATABLE_COLUMNS:
            raise ValueError(f"not updatable: {set(columns) - UPDATABLE_COLUMNS}")
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(c), sql.Placeholder(c)) for c in columns
        )
        query = sql.SQL(
            "update security_user set {assignments}, updated_at = now()"
            " where id = %(user_id)s returning {columns}"
        ).format(assignments=assignments, columns=sql.SQL(_USER_COLUMNS))
        async with conn.cursor(row_factory=class_row(User)) as cur:
            try:
                await cur.execute(query, {**changes, "user_id": user_id})
            except pg_errors.UniqueViolation:
                raise AlreadyExists("user.email", "is used by another account") from None
            return await cur.fetchone()


def _constraint(error: pg_errors.UniqueViolation) -> str | None:
    return error.diag.constraint_name
