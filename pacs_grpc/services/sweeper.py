"""The background worker that deletes objects from storage once nothing references them.

Deleting an annotation or a mask group queues its objects in storage_deletion_outbox in the
same transaction; an upload ticket that expires without being completed is queued here. Every
replica runs a Sweeper, and each round goes like this, batch by batch, one transaction per batch:

1. take ``pg_try_advisory_xact_lock(lock_key)``; a replica that does not get it ends its round at
   once. So at most one replica deletes at any moment, and when it dies its transaction (and the
   lock) goes with its connection, and the next replica to try takes over;
2. first, batch by batch, purge the annotations whose time in the trash is up, queueing their
   objects, each batch a transaction that commits before any of those objects is deleted;
   then move expired, never-completed upload tickets to the outbox;
3. claim due outbox rows (``FOR UPDATE SKIP LOCKED``), delete their objects, then remove the rows
   that succeeded and reschedule the others with exponential backoff, before committing.

The row locks are held while storage is called. That is acceptable because a batch is bounded
(``batch_size`` keys, one bulk request, ``delete_timeout_seconds``), and it is what makes the
scheme safe: a sweeper that crashes mid-batch has its transaction rolled back, which releases the
rows untouched for the next round. Deleting an object twice is harmless (a missing key counts as
deleted), so a crash between the storage call and the commit only repeats work.

The SQL lives in pacs_grpc.adapters.postgres.outbox, behind the SweepOutbox port. Its
guarantees are PostgreSQL's (advisory locks, SKIP LOCKED), which only the integration tests
can show; the sweeper's own decisions (what to finish, what to retry, when to stop a round)
are unit-tested on a fake outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Generic

from pacs_grpc.domain.errors import DomainError
from pacs_grpc.services.ports import (
    DeletesObjects,
    SweepOutbox,
    Transactions,
    TrashPurger,
    TxT,
)

_log = logging.getLogger("pacs_grpc.sweeper")

# last_error texts: ours only, because exception texts may quote keys or presigned URLs.
_REFUSED = "storage did not delete the object"
_TIMED_OUT = "storage delete timed out"


@dataclass(frozen=True)
class SweepResult:
    """What a batch or round did: expired tickets moved to the outbox, objects deleted, and
    deletions that failed and were rescheduled. Results add up across batches.
    """

    expired_enqueued: int = 0
    deleted: int = 0
    failed: int = 0
    # Annotations purged from the trash (their objects count in expired_enqueued's stead: they
    # are queued, then deleted like any other).
    purged: int = 0

    def __add__(self, other: SweepResult) -> SweepResult:
        return SweepResult(
            self.expired_enqueued + other.expired_enqueued,
            self.deleted + other.deleted,
            self.failed + other.failed,
            self.purged + other.purged,
        )

    @property
    def did_work(self) -> bool:
        return bool(self.expired_enqueued or self.deleted or self.failed or self.purged)


@dataclass(frozen=True)
class _Batch:
    result: SweepResult
    claimed: int
    # Expired tickets removed, queued or not: a full batch means more may be waiting.
    expired_removed: int
    storage_down: bool


class Sweeper(Generic[TxT]):
    """Deletes queued objects in the background, one replica at a time (see the module docstring).

    Each batch is one transaction holding the lock and its claimed rows; a crash or `stop` rolls it
    back and the rows come due again. One per process: `start` it once, `stop` it at shutdown.
    """

    def __init__(
        self,
        db: Transactions[TxT],
        outbox: SweepOutbox[TxT],
        storage: DeletesObjects,
        *,
        interval_seconds: float,
        upload_grace: timedelta,
        trash: Sequence[TrashPurger[TxT]],
        trash_retention: timedelta,
        batch_size: int = 500,
        delete_timeout_seconds: float = 60.0,
        on_backlog: Callable[[int], None] | None = None,
    ) -> None:
        """`upload_grace` is how long after its expiry a ticket is left alone, for completions
        in flight and clock skew.
        `delete_timeout_seconds` bounds one storage call, and so how long a batch holds its rows.
        `on_backlog` hears the outbox's size after every round (for a metric); every replica
        reports it, the active one or not.
        What each of the `trash` purgers (annotations, mask groups) held for longer than
        `trash_retention` is purged, its objects queued in the same transaction and deleted
        like any others.
        """
        if interval_seconds <= 0 or batch_size <= 0 or delete_timeout_seconds <= 0:
            raise ValueError("interval_seconds, batch_size and delete_timeout_seconds must be > 0")
        self._db = db
        self._storage = storage
        self._interval = interval_seconds
        self._batch_size = batch_size
        self._grace = upload_grace
        self._trash = trash
        self._trash_retention = trash_retention
        self._outbox = outbox
        self._delete_timeout = delete_timeout_seconds
        self._on_backlog = on_backlog
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Run a round now and then every interval, in the background, until stop()."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="storage-sweeper")

    async def stop(self) -> None:
        """Cancel the loop and wait for it; a batch in progress is rolled back, not finished."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def sweep_once(self) -> SweepResult:
        """One round: batches until nothing is due, storage is down or another replica sweeps.

        Storage failures are recorded on the rows; database errors propagate.
        """
        total = SweepResult()
        try:
            while True:
                purged = await self._purge_expired_trash()
                if purged is None:
                    return total  # another replica sweeps
                total += SweepResult(purged=purged)
                if purged < self._batch_size:
                    break
            while True:
                batch = await self._sweep_batch()
                if batch is None:
                    break
                total += batch.result
                more_due = batch.claimed == self._batch_size
                more_expired = batch.expired_removed == self._batch_size
                # An outage would fail every further batch too, each after a timeout.
                if batch.storage_down or not (more_due or more_expired):
                    break
        finally:
            # Committed batches count even when a later one fails.
            if total.did_work:
                _log.info(
                    "storage sweep",
                    extra={
                        "expired_enqueued": total.expired_enqueued,
                        "deleted": total.deleted,
                        "failed": total.failed,
                        "purged": total.purged,
                    },
                )
        return total

    async def report_backlog(self) -> int:
        """Count the outbox's rows, due or not, and pass the number to `on_backlog`."""
        async with self._db.transaction() as conn:
            rows = await self._outbox.backlog(conn)
        if self._on_backlog is not None:
            self._on_backlog(rows)
        return rows

    async def _sweep_batch(self) -> _Batch | None:
        """One transaction; None when another sweeper holds the lock."""
        async with self._db.transaction() as conn:
            if not await self._outbox.try_lock(conn):
                return None
            expired = await self._outbox.enqueue_expired_uploads(
                conn, self._grace, self._batch_size
            )
            enqueued = expired.queued
            claimed = await self._outbox.claim_due(conn, self._batch_size)
            if not claimed:
                return _Batch(
                    SweepResult(expired_enqueued=enqueued), 0, expired.removed, storage_down=False
                )

            # The same key may be queued twice (say, by an expired ticket and by its group's
            # deletion): one delete serves every row naming it.
            keys = list(dict.fromkeys(key for _, key in claimed))
            storage_down = False
            try:
                failed_keys = set(
                    await asyncio.wait_for(self._storage.delete(keys), self._delete_timeout)
                )
                reason = _REFUSED
            except TimeoutError:
                failed_keys, reason, storage_down = set(keys), _TIMED_OUT, True
            except Exception as error:  # noqa: BLE001 - any failure means "retry these later"
                failed_keys, storage_down = set(keys), True
                reason = f"storage unavailable ({type(error).__name__})"

            done = [row_id for row_id, key in claimed if key not in failed_keys]
            retry = {row_id: reason for row_id, key in claimed if key in failed_keys}
            await self._outbox.finish(conn, done)
            await self._outbox.retry_later(conn, retry)
            result = SweepResult(expired_enqueued=enqueued, deleted=len(done), failed=len(retry))
            return _Batch(result, len(claimed), expired.removed, storage_down)

    async def _purge_expired_trash(self) -> int | None:
        """Purge a batch of what each trash (annotations, mask groups) held past its time; how
        many, or None when another sweeper holds the lock.

        In a transaction of its own, committed before any object is deleted: were the purge and
        the deletions one transaction, a failed commit would bring the rows back without the
        objects they name.
        """
        async with self._db.transaction() as conn:
            if not await self._outbox.try_lock(conn):
                return None
            purged = 0
            for trash in self._trash:
                expired = await trash.expired_trash(conn, self._trash_retention, self._batch_size)
                if expired:
                    await trash.purge(conn, expired)
                purged += len(expired)
            return purged

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep_once()
                if self._on_backlog is not None:
                    await self.report_backlog()
            except DomainError as error:
                # Outages arrive as Unavailable or Conflict (Database.transaction()); a traceback
                # every interval would add nothing.
                _log.warning("storage sweep failed", extra={"error_type": type(error).__name__})
            except Exception:  # noqa: BLE001 - the loop must outlive any one failure
                # The formatter withholds database error texts, which may hold row values.
                _log.exception("storage sweep failed")
            await asyncio.sleep(self._interval)
