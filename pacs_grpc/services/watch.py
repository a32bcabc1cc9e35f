"""Keeping an open WatchAnnotations stream within what its caller may still read.

A stream is authorised once, when it opens, and may then run for hours. While it runs:

- when its token stops being valid (the verifier's own limit: `exp` plus the allowed clock
  skew), a timer set for that instant ends it with UNAUTHENTICATED;
- every `recheck_seconds`, one small query reads the caller's role in the project again;
  once the caller could no longer open the stream, it ends with the refusal a new call
  would get (NOT_FOUND for a removed member, PERMISSION_DENIED for too small a role).

A platform administrator's role comes from the token only, so its loss shows in the next
token; the expiry timer covers that. Rechecks write no audit rows: the stream's one row was
written when it was authorised, and the edge's log line of the RPC records how it ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Generic, NoReturn, TypeVar

from pacs_grpc.domain.errors import NotFound, Unauthenticated, Unavailable
from pacs_grpc.services.context import CallContext, check_access
from pacs_grpc.services.ports import Clock, ProjectStore, Transactions, TxT

T = TypeVar("T")

# Raises the domain error that ends the stream; returns when access still holds.
AccessCheck = Callable[[], Awaitable[None]]

# A recheck that cannot reach the database is tried again at the next tick: one blip must
# not end every stream of the replica at once. This many in a row end the stream (the
# client resumes from its last event id), so access is never unconfirmed for long.
FAILED_RECHECKS_TOLERATED = 1

_END = object()


class WatchAccess(Generic[TxT]):
    """Guards the subscriptions of WatchAnnotations with their caller's current access."""

    def __init__(
        self,
        db: Transactions[TxT],
        projects: ProjectStore[TxT],
        *,
        recheck_seconds: float,
        clock: Clock,
    ) -> None:
        self._db = db
        self._projects = projects
        self.recheck_seconds = recheck_seconds
        self._clock = clock

    def guard(
        self,
        call: CallContext,
        project_id: int,
        subscription: AbstractAsyncContextManager[AsyncIterator[T]],
    ) -> AbstractAsyncContextManager[AsyncIterator[T]]:
        async def still_readable() -> None:
            # Not audited: the stream has its row already.
            async with self._db.autocommit() as conn:
                found = await self._projects.with_role(conn, project_id, call.caller.user_id)
            if found is None:
                raise NotFound("project not found")
            project, role = found
            # The same rule that admitted the stream, so it ends exactly when a new one
            # would be refused (viewers keep reading a deactivated project).
            check_access(call, role, project_active=project.is_active, what="project")

        return guarded(
            subscription,
            still_readable,
            valid_until=call.caller.principal.valid_until,
            recheck_seconds=self.recheck_seconds,
            clock=lambda: self._clock.now().timestamp(),
        )


@asynccontextmanager
async def guarded(
    subscription: AbstractAsyncContextManager[AsyncIterator[T]],
    check: AccessCheck,
    *,
    valid_until: float | None,
    recheck_seconds: float,
    clock: Callable[[], float],
) -> AsyncIterator[AsyncIterator[T]]:
    """`subscription`'s items until `valid_until` (epoch seconds on `clock`) or until `check`
    raises.

    The iterator then raises Unauthenticated, or `check`'s error. Nothing it owns outlives
    the block: the guard's tasks and a pending read are finished before the subscription
    is left, so the subscription's own cleanup runs with nobody reading it.
    """
    async with subscription as items:
        stream = _GuardedStream(items, check, valid_until, recheck_seconds, clock)
        try:
            yield stream
        finally:
            await stream.close()


class _GuardedStream(Generic[T], AsyncIterator[T]):
    def __init__(
        self,
        items: AsyncIterator[T],
        check: AccessCheck,
        valid_until: float | None,
        recheck_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self._items = items
        self._check = check
        self._recheck_seconds = recheck_seconds
        self._clock = clock
        self._closed = False
        self._pending: asyncio.Task[object] | None = None
        # Each runs until it raises: the reason the stream ends.
        self._guards: list[asyncio.Task[NoReturn]] = [
            asyncio.create_task(self._recheck(), name="watch-access-recheck")
        ]
        if valid_until is not None:
            self._guards.append(
                asyncio.create_task(self._expire(valid_until), name="watch-token-expiry")
            )

    async def __anext__(self) -> T:
        if self._pending is None:
            self._pending = asyncio.create_task(self._next(), name="watch-next-event")
        # Kept in self._pending while waiting: if this wait is cancelled (the client went
        # away), close() still finds and ends the read.
        done, _ = await asyncio.wait(
            [self._pending, *self._guards], return_when=asyncio.FIRST_COMPLETED
        )
        for guard in self._guards:
            if guard in done:
                # Revocation wins over an event that arrived at the same moment.
                guard.result()
        item, self._pending = self._pending.result(), None
        if item is _END:
            raise StopAsyncIteration
        return item  # type: ignore[return-value]

    async def _next(self) -> object:
        # StopAsyncIteration is turned into a value: a task should end with a result.
        try:
            return await anext(self._items)
        except StopAsyncIteration:
            return _END

    async def _expire(self, valid_until: float) -> NoReturn:
        # The loop's timer is monotonic and the token's time is the wall clock: sleep again
        # if the wall clock says the instant has not come yet (a few times at most, should
        # the wall clock be stepped back meanwhile).
        for _ in range(3):
            left = valid_until - self._clock()
            if left <= 0:
                break
            await asyncio.sleep(left)
        raise Unauthenticated("token expired")

    async def _recheck(self) -> NoReturn:
        failed = 0
        while True:
            await asyncio.sleep(self._recheck_seconds)
            if self._closed:
                raise asyncio.CancelledError
            try:
                await self._check()
            except Unavailable:
                failed += 1
                if failed > FAILED_RECHECKS_TOLERATED:
                    raise Unavailable(
                        "access to the project could not be checked again; "
                        "resume with after_event_id"
                    ) from None
            else:
                failed = 0

    async def close(self) -> None:
        self._closed = True
        tasks = [task for task in (self._pending, *self._guards) if task is not None]
        self._pending = None
        # All cancelled before any wait, so a close that is itself cancelled leaves no
        # guard running until the token expires.
        for task in tasks:
            task.cancel()
        await asyncio.shield(_finish(tasks))


async def _finish(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        # Cancelled again until done: on Python 3.11, asyncio.wait_for inside the pool's
        # getconn can drop a cancellation that races a connection being handed over.
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=0.1)
        if not task.cancelled():
            # Retrieved, so that asyncio does not log it as never retrieved.
            task.exception()
