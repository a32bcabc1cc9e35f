"""Deletions scheduled ahead, for the objects ImportSegmentation's upload tickets let in."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pacs_grpc.adapters.postgres.database import Connection

# The sweeper claims a row once next_attempt_at has passed; a later time defers the delete.
ENQUEUE_AT = """
insert into storage_deletion_outbox (object_key, next_attempt_at)
select unnest(%(keys)s::text[]), %(due_at)s
"""


class ScheduledDeletionRepository:
    """ScheduledDeletions on storage_deletion_outbox, in the caller's transaction: the keys come due
    at `due_at`, and are queued only if that transaction commits. Maps no errors.
    """

    async def enqueue_at(self, conn: Connection, keys: Sequence[str], due_at: datetime) -> None:
        async with conn.cursor() as cur:
            await cur.execute(ENQUEUE_AT, {"keys": list(keys), "due_at": due_at})
