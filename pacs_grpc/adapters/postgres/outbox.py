"""storage_deletion_outbox: the objects in storage still to delete, and the sweeper's queries.

Rows are written in the transaction that deletes what referenced the objects (annotations, mask
groups), or here, when an upload ticket expires without being completed. The sweeper claims due
rows, deletes their objects and then removes or reschedules the rows; see
pacs_grpc.services.sweeper for how replicas share the work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta

from pacs_grpc.adapters.postgres.database import Connection
from pacs_grpc.services.ports import ExpiredTickets

# Key of the pg_try_advisory_xact_lock that makes one sweeper active at a time: the bytes of
# "pacsswep". Advisory locks share one bigint space per database with the migrator ("pacsmigr"),
# the annotation feed ("pcev" << 32 | project) and the hashed idempotency keys.
SWEEPER_LOCK_KEY = 0x7061_6373_7377_6570

# Retry schedule of a row whose object could not be deleted: BASE * 2**attempts, up to CAP, plus
# up to JITTER of that, so that rows failed together (a whole batch during an outage) spread out
# instead of hitting storage in one burst when it returns. The cap bounds the jittered value too.
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_CAP_SECONDS = 3600.0
BACKOFF_JITTER = 0.2
# last_error is for operators reading the table; reasons are short texts of our own.
MAX_ERROR_CHARS = 200

TRY_LOCK_SWEEPER = "select pg_try_advisory_xact_lock(%(lock_key)s)"

# SKIP LOCKED: rows another sweeper holds are its batch, not ours to wait for.
CLAIM_DUE = """
select id, object_key from storage_deletion_outbox
where next_attempt_at <= now()
order by next_attempt_at, id
limit %(limit)s
for update skip locked
"""

FINISH = "delete from storage_deletion_outbox where id = any(%(ids)s)"

# clock_timestamp(), not now(): the storage call ran inside this transaction, and the delay counts
# from the failure, not from the start of the transaction. The exponent is bounded only to keep
# the arithmetic small; the cap applies long before.
RETRY = """
update storage_deletion_outbox o
set attempts = o.attempts + 1,
    next_attempt_at = clock_timestamp() + make_interval(secs => least(
        %(cap_seconds)s,
        %(base_seconds)s * power(2, least(o.attempts, 32)) * (1 + %(jitter)s * random())
    )),
    last_error = f.reason
from unnest(%(ids)s::bigint[], %(reasons)s::text[]) as f(id, reason)
where o.id = f.id
"""

# Upload tickets that expired (plus a grace period for completions in flight) without being
# completed: their rows go and their objects, if a client uploaded any, are queued for deletion.
# FOR UPDATE SKIP LOCKED leaves alone a ticket that a completion is changing right now, and
# re-checks completed_at on the newest version of every row it does lock, so a completion that
# committed after this statement started is not undone. A key that a recorded mask references is
# never queued, whatever the ticket says: its row goes (it would only be found again every round),
# its object stays.
ENQUEUE_EXPIRED_UPLOADS = """
with expired as (
    select upload_id from mask_upload
    where completed_at is null and expires_at < now() - %(grace)s
    order by expires_at
    limit %(limit)s
    for update skip locked
), removed as (
    delete from mask_upload u
    using expired e
    where u.upload_id = e.upload_id
    returning u.object_key
), queued as (
    insert into storage_deletion_outbox (object_key)
    select r.object_key from removed r
    where not exists (select 1 from annotation_mask m where m.file_path = r.object_key)
    returning 1
)
select (select count(*) from removed), (select count(*) from queued)
"""

BACKLOG = "select count(*) from storage_deletion_outbox"


async def try_lock_sweeper(conn: Connection, lock_key: int = SWEEPER_LOCK_KEY) -> bool:
    """Take the sweeper lock until the transaction ends, or return False at once if it is held."""
    async with conn.cursor() as cur:
        await cur.execute(TRY_LOCK_SWEEPER, {"lock_key": lock_key})
        row = await cur.fetchone()
    return bool(row and row[0])


async def claim_due_deletions(conn: Connection, limit: int) -> list[tuple[int, str]]:
    """Lock up to `limit` due rows, oldest due first, as (id, object_key); needs a transaction."""
    async with conn.cursor() as cur:
        await cur.execute(CLAIM_DUE, {"limit": limit})
        rows = await cur.fetchall()
    return [(int(row[0]), str(row[1])) for row in rows]


async def finish_deletions(conn: Connection, ids: Sequence[int]) -> None:
    """Remove the rows whose objects are gone."""
    if not ids:
        return
    async with conn.cursor() as cur:
        await cur.execute(FINISH, {"ids": list(ids)})


async def retry_deletions(conn: Connection, failures: Mapping[int, str]) -> None:
    """Count a failed attempt for each row and schedule the next one with backoff.

    A reason is stored as last_error, cut to MAX_ERROR_CHARS; callers pass texts of their own
    (never object keys, URLs or library error messages).
    """
    if not failures:
        return
    ids = list(failures)
    params = {
        "ids": ids,
        "reasons": [failures[i][:MAX_ERROR_CHARS] for i in ids],
        "base_seconds": BACKOFF_BASE_SECONDS,
        "cap_seconds": BACKOFF_CAP_SECONDS,
        "jitter": BACKOFF_JITTER,
    }
    async with conn.cursor() as cur:
        await cur.execute(RETRY, params)


async def enqueue_expired_uploads(conn: Connection, grace: timedelta, limit: int) -> ExpiredTickets:
    """Remove up to `limit` expired, never-completed upload tickets and queue their objects
    (not those whose key a mask references)."""
    async with conn.cursor() as cur:
        await cur.execute(ENQUEUE_EXPIRED_UPLOADS, {"grace": grace, "limit": limit})
        row = await cur.fetchone()
    removed, queued = row if row else (0, 0)
    return ExpiredTickets(removed=int(removed), queued=int(queued))


async def backlog(conn: Connection) -> int:
    """Rows in the outbox, due or not (for metrics)."""
    async with conn.cursor() as cur:
        await cur.execute(BACKLOG)
        row = await cur.fetchone()
    return int(row[0]) if row else 0


class DeletionOutbox:
    """The sweeper's port (pacs_grpc.services.ports.SweepOutbox) on the functions above.

    `lock_key` must be the same on every replica of a database; tests running sweepers that
    must not see each other give them different keys.
    """

    def __init__(self, lock_key: int = SWEEPER_LOCK_KEY) -> None:
        self._lock_key = lock_key

    async def try_lock(self, conn: Connection) -> bool:
        return await try_lock_sweeper(conn, self._lock_key)

    async def enqueue_expired_uploads(
        self, conn: Connection, grace: timedelta, limit: int
    ) -> ExpiredTickets:
        return await enqueue_expired_uploads(conn, grace, limit)

    async def claim_due(self, conn: Connection, limit: int) -> list[tuple[int, str]]:
        return await claim_due_deletions(conn, limit)

    async def finish(self, conn: Connection, row_ids: Sequence[int]) -> None:
        await finish_deletions(conn, row_ids)

    async def retry_later(self, conn: Connection, failures: Mapping[int, str]) -> None:
        await retry_deletions(conn, failures)

    async def backlog(self, conn: Connection) -> int:
        return await backlog(conn)
