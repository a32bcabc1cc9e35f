"""The sweeper's SweepOutbox over the fake tables, as pacs_grpc.adapters.postgres.outbox runs it.

Rows (tests.fakes.masks.OutboxRow) are due when their next_attempt_at is at or before the
transaction's start (now()); claimed oldest due first, then by id. Expired tickets are those
never completed whose expiry is more than `grace` before now(): their rows go and their keys are
queued, unless a recorded mask references the key. A failed row is rescheduled from the
FakeClock's present (clock_timestamp()) with the adapter's backoff, without its jitter, so
tests can name the time.

Switches: `held_elsewhere` (another replica holds the advisory lock), `locked_elsewhere` (row
ids another sweeper's transaction holds: SKIP LOCKED passes them by).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta

from pacs_grpc.adapters.postgres.outbox import (
    BACKOFF_BASE_SECONDS,
    BACKOFF_CAP_SECONDS,
    MAX_ERROR_CHARS,
)
from pacs_grpc.services.ports import ExpiredTickets
from tests.fakes.database import FakeDatabase, FakeTx
from tests.fakes.masks import OutboxRow, install, queue, tables


def backoff(attempts: int) -> timedelta:
    """The delay after a row's attempt number `attempts + 1` failed, without jitter."""
    return timedelta(
        seconds=min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** min(attempts, 32))
    )


class FakeSweepOutbox:
    def __init__(self, db: FakeDatabase) -> None:
        self._db = db
        install(db)
        self.held_elsewhere = False
        self.locked_elsewhere: set[int] = set()

    async def try_lock(self, conn: FakeTx) -> bool:
        tx = self._db.enter("outbox.try_lock", conn)
        if self.held_elsewhere:
            return False
        tx.locks.append(("sweeper", None))
        return True

    async def enqueue_expired_uploads(
        self, conn: FakeTx, grace: timedelta, limit: int
    ) -> ExpiredTickets:
        tx = self._db.enter("outbox.enqueue_expired_uploads", conn)
        t = tables(self._db)
        expired = sorted(
            (
                u
                for u in t.uploads.values()
                if u.completed_at is None and u.expires_at < tx.started_at - grace
            ),
            key=lambda u: u.expires_at,
        )[:limit]
        referenced = {m.file_path for m, _ in t.masks.values()}
        keys = [u.object_key for u in expired if u.object_key not in referenced]
        for upload in expired:
            del t.uploads[upload.upload_id]
        queue(self._db, keys, tx.started_at)
        if expired:
            self._db.wrote(tx, "mask_uploads")
        return ExpiredTickets(removed=len(expired), queued=len(keys))

    async def claim_due(self, conn: FakeTx, limit: int) -> list[tuple[int, str]]:
        tx = self._db.enter("outbox.claim_due", conn)
        due = sorted(
            (
                r
                for r in tables(self._db).outbox
                if r.next_attempt_at <= tx.started_at and r.id not in self.locked_elsewhere
            ),
            key=lambda r: (r.next_attempt_at, r.id),
        )[:limit]
        tx.locks.extend(("outbox", r.id) for r in due)
        return [(r.id, r.object_key) for r in due]

    async def finish(self, conn: FakeTx, row_ids: Sequence[int]) -> None:
        tx = self._db.enter("outbox.finish", conn)
        t = tables(self._db)
        gone = set(row_ids)
        t.outbox = [r for r in t.outbox if r.id not in gone]
        if gone:
            self._db.wrote(tx, "outbox")

    async def retry_later(self, conn: FakeTx, failures: Mapping[int, str]) -> None:
        tx = self._db.enter("outbox.retry_later", conn)
        failed_at = self._db.clock.now()
        for row in tables(self._db).outbox:
            reason = failures.get(row.id)
            if reason is not None:
                row.next_attempt_at = failed_at + backoff(row.attempts)
                row.attempts += 1
                row.last_error = reason[:MAX_ERROR_CHARS]
        if failures:
            self._db.wrote(tx, "outbox")

    async def backlog(self, conn: FakeTx) -> int:
        self._db.enter("outbox.backlog", conn)
        return len(tables(self._db).outbox)

    def rows(self) -> list[OutboxRow]:
        return list(tables(self._db).outbox)
