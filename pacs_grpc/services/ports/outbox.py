"""The deletion outbox: objects in storage still to delete, as the sweeper works through it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from pacs_grpc.services.ports.transactions import TxT_contra


@dataclass(frozen=True)
class ExpiredTickets:
    """What one pass over expired upload tickets did: tickets removed, and keys queued for
    deletion (fewer when a ticket's key is also a recorded mask's, which must stay)."""

    removed: int
    queued: int


class SweepOutbox(Protocol[TxT_contra]):
    """Implemented by pacs_grpc.adapters.postgres.outbox.DeletionOutbox. Each method runs in
    the sweeper's one transaction per batch."""

    async def try_lock(self, conn: TxT_contra) -> bool:
        """Become the one active sweeper until the transaction ends; False at once if another
        replica is."""
        ...

    async def enqueue_expired_uploads(
        self, conn: TxT_contra, grace: timedelta, limit: int
    ) -> ExpiredTickets:
        """Remove up to `limit` tickets expired for longer than `grace` and never completed,
        queueing their objects for deletion."""
        ...

    async def claim_due(self, conn: TxT_contra, limit: int) -> list[tuple[int, str]]:
        """Lock up to `limit` due rows, oldest due first, as (row id, object key)."""
        ...

    async def finish(self, conn: TxT_contra, row_ids: Sequence[int]) -> None:
        """Remove the rows whose objects are gone."""
        ...

    async def retry_later(self, conn: TxT_contra, failures: Mapping[int, str]) -> None:
        """Reschedule each row with backoff, recording the reason (a text of our own)."""
        ...

    async def backlog(self, conn: TxT_contra) -> int:
        """Rows in the outbox, due or not."""
        ...
