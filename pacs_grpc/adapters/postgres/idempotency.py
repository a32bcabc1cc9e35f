"""idempotency_key: create calls retried with the same request_id return the first result."""

from __future__ import annotations

import hashlib

from pacs_grpc.adapters.postgres.database import Connection

# Held until the transaction ends, so concurrent retries of one request wait
# for the first to commit and then find its key instead of creating twice.
LOCK_REQUEST = "select pg_advisory_xact_lock(%(lock_key)s)"

FIND_KEY = """
select resource_id, request_fingerprint from idempotency_key
where user_id = %(user_id)s and operation = %(operation)s and request_id = %(request_id)s
"""

INSERT_KEY = """
insert into idempotency_key (user_id, operation, request_id, resource_id, request_fingerprint)
values (%(user_id)s, %(operation)s, %(request_id)s, %(resource_id)s, %(fingerprint)s)
"""


class IdempotencyRepository:
    """IdempotencyStore on idempotency_key, in the caller's transaction.

    `lock_and_find` takes a transaction-level advisory lock on (user, operation, request_id), so
    concurrent retries run one after another and the later one finds the first's key. Call
    `remember` only after it, in the same transaction: then no unique violation can occur.
    """

    async def lock_and_find(
        self, conn: Connection, user_id: int, operation: str, request_id: str
    ) -> tuple[int, str] | None:
        """Serialise on the key, then return (resource_id, fingerprint) if it was used."""
        params = {"user_id": user_id, "operation": operation, "request_id": request_id}
        async with conn.cursor() as cur:
            await cur.execute(LOCK_REQUEST, {"lock_key": _lock_key(user_id, operation, request_id)})
            await cur.execute(FIND_KEY, params)
            row = await cur.fetchone()
        return (int(row[0]), str(row[1])) if row else None

    async def remember(
        self,
        conn: Connection,
        *,
        user_id: int,
        operation: str,
        request_id: str,
        resource_id: int,
        fingerprint: str,
    ) -> None:
        params = {
            "user_id": user_id,
            "operation": operation,
            "request_id": request_id,
            "resource_id": resource_id,
            "fingerprint": fingerprint,
        }
        async with conn.cursor() as cur:
            await cur.execute(INSERT_KEY, params)


def _lock_key(user_id: int, operation: str, request_id: str) -> int:
    digest = hashlib.blake2b(f"{user_id}\0{operation}\0{request_id}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)
