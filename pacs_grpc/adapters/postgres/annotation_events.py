"""Live annotation events: one LISTEN connection per server process, fanned out to viewers.

The annotation_event table is the truth; NOTIFY is only a wake-up. Notifications are
lost while nobody listens and PostgreSQL may fold several into one, so on every wake-up
the hub reads the table from where it stopped (a cursor per watched project), and after
a reconnect it reads every watched project the same way. Writing events and reading the
table are in annotation_event_feed.py, re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pacs_grpc.adapters.postgres.annotation_event_feed import (
    CHANNEL,
    AnnotationEventFeed,
    project_lock_key,
    record_event,
)
from pacs_grpc.adapters.postgres.database import Database
from pacs_grpc.domain.annotation import AnnotationEvent
from pacs_grpc.domain.errors import InvalidArgument, ResourceExhausted, Unavailable
from pacs_grpc.domain.paging import BudgetedRows

__all__ = [
    "CHANNEL",
    "LISTENER_APPLICATION_NAME",
    "AnnotationEventFeed",
    "EventHub",
    "SubscriberTooSlowError",
    "project_lock_key",
    "record_event",
]

_log = logging.getLogger("pacs_grpc.events")

# Names the LISTEN session in pg_stat_activity, for operators (and tests) looking for it.
LISTENER_APPLICATION_NAME = "pacs-grpc-events"
_MAX_RECONNECT_DELAY_SECONDS = 30.0
# A dead peer sends no error, so a quiet connection is probed this often.
_HEARTBEAT_SECONDS = 30.0
# start() waits this long for the first connection attempt, never for PostgreSQL itself.
_START_WAIT_SECONDS = 5.0

_Reader = Callable[[int, int, str | None], Coroutine[Any, Any, BudgetedRows[AnnotationEvent]]]


class SubscriberTooSlowError(ResourceExhausted):
    """A watcher fell `queue_size` events behind; its stream ends with RESOURCE_EXHAUSTED.

    Nothing is lost: the table keeps every event, and the client resumes after the last
    event_id it received.
    """

    def __init__(self) -> None:
        super().__init__(
            "watcher fell too far behind the annotation events; "
            "resume from the last event id received"
        )


class _Subscriber(AsyncIterator[AnnotationEvent]):
    """One watcher: the table from its resume point, then the events the hub pushes."""

    def __init__(
        self,
        read: _Reader,
        project_id: int,
        study_uid: str | None,
        *,
        batch_size: int,
        queue_size: int,
    ) -> None:
        self._read = read
        self._project_id = project_id
        self._study_uid = study_uid
        self._batch_size = batch_size
        self._queue_size = queue_size
        self._last_event_id = 0
        self._replay: deque[AnnotationEvent] = deque()
        self._replay_done = False
        self._live: deque[AnnotationEvent] = deque()
        self._wakeup = asyncio.Event()
        self._overflowed = False
        self._closed = False

    def resume_after(self, event_id: int) -> None:
        self._last_event_id = event_id

    def push(self, event: AnnotationEvent) -> None:
        """Called by the hub; never waits, so one slow watcher cannot hold up the others."""
        if self._overflowed or self._closed:
            return
        if self._study_uid is not None and event.study_uid != self._study_uid:
            return
        if len(self._live) >= self._queue_size:
            # Its buffer is dropped at once: the watcher resumes from the table anyway.
            self._overflowed = True
            self._live.clear()
        else:
            self._live.append(event)
        self._wakeup.set()

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()

    async def __anext__(self) -> AnnotationEvent:
        while True:
            if self._overflowed:
                raise SubscriberTooSlowError
            if self._closed:
                raise StopAsyncIteration
            if self._replay:
                return self._deliver(self._replay.popleft())
            if not self._replay_done:
                read = await self._read(self._project_id, self._last_event_id, self._study_uid)
                batch = read.rows
                self._replay_done = not read.cut and len(batch) < self._batch_size
                if batch:
                    self._replay.extend(batch)
                    # Pushed while replaying and already in the replay: free their room now.
                    while self._live and self._live[0].event_id <= batch[-1].event_id:
                        self._live.popleft()
                continue
            if self._live:
                event = self._live.popleft()
                if event.event_id > self._last_event_id:
                    return self._deliver(event)
                continue
            self._wakeup.clear()
            await self._wakeup.wait()

    def _deliver(self, event: AnnotationEvent) -> AnnotationEvent:
        self._last_event_id = event.event_id
        return event


@dataclass(eq=False)
class _Project:
    subscribers: set[_Subscriber] = field(default_factory=set)
    # Highest event_id fanned out; None until the first subscriber has read it.
    cursor: int | None = None
    # Serialises reading the cursor's start with advancing it.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class EventHub:
    """Streams a project's (or a study's) annotation events to every watcher in this process.

    `conninfo` is for the LISTEN session only, which never comes from the pool (a pooled
    connection would be handed back, or checked and replaced, under the listener); give it
    a connect_timeout. Reads of the table go through `db`.
    """

    def __init__(
        self,
        conninfo: str,
        db: Database,
        feed: AnnotationEventFeed,
        *,
        queue_size: int = 1000,
        batch_size: int = 500,
        batch_budget_bytes: int = 512 * 1024,
        reconnect_delay_seconds: float = 1.0,
    ) -> None:
        self._conninfo = conninfo
        self._db = db
        self._feed = feed
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._batch_budget_bytes = batch_budget_bytes
        self._reconnect_delay = reconnect_delay_seconds
        self._projects: dict[int, _Project] = {}
        self._dirty: set[int] = set()
        self._wake = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

    async def start(self) -> None:
        """Start listening; returns after the first attempt even if PostgreSQL is down."""
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._listen(), name="annotation-events-listen"),
            asyncio.create_task(self._pump(), name="annotation-events-pump"),
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_START_WAIT_SECONDS):
                await self._first_attempt.wait()

    async def stop(self) -> None:
        """End every subscription (their iterators finish) and close the LISTEN connection."""
        self._stopped = True
        for project in self._projects.values():
            for subscriber in project.subscribers:
                subscriber.close()
        self._projects.clear()
        self._dirty.clear()
        for task in self._tasks:
            # Cancelled again until done: on Python 3.11, asyncio.wait_for (inside the pool's
            # getconn) drops a cancellation that races the connection being handed over.
            while not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=0.1)
        self._tasks = []

    def subscribe(
        self, project_id: int, *, study_uid: str | None, after_event_id: int
    ) -> AbstractAsyncContextManager[AsyncIterator[AnnotationEvent]]:
        """The project's events in event_id order, filtered to `study_uid` when given.

        after_event_id 0: only events after the project's latest at subscribe time.
        Otherwise: every later event from the table first, then live, with no gap and no
        duplicate. The iterator raises SubscriberTooSlowError if it falls `queue_size`
        events behind, and ends when the hub stops.
        """
        if after_event_id < 0:
            raise InvalidArgument("after_event_id", "must not be negative")
        return self._subscription(project_id, study_uid, after_event_id)

    @asynccontextmanager
    async def _subscription(
        self, project_id: int, study_uid: str | None, after_event_id: int
    ) -> AsyncIterator[AsyncIterator[AnnotationEvent]]:
        if self._stopped:
            raise Unavailable("annotation events are shutting down, retry shortly")
        subscriber = _Subscriber(
            self._read,
            project_id,
            study_uid,
            batch_size=self._batch_size,
            queue_size=self._queue_size,
        )
        project = self._projects.setdefault(project_id, _Project())
        # Registered before anything is read: every event fanned out from now on reaches it,
        # and every earlier one is committed before its replay reads the table. The replay
        # overlaps the live events, never misses any; ids it already gave are skipped.
        project.subscribers.add(subscriber)
        try:
            if project.cursor is None:
                async with project.lock:
                    if project.cursor is None:
                        project.cursor = await self._latest(project_id)
            subscriber.resume_after(
                after_event_id if after_event_id > 0 else await self._latest(project_id)
            )
            yield subscriber
        finally:
            subscriber.close()
            project.subscribers.discard(subscriber)
            if not project.subscribers and self._projects.get(project_id) is project:
                del self._projects[project_id]
                self._dirty.discard(project_id)

    async def _read(
        self, project_id: int, after_event_id: int, study_uid: str | None
    ) -> BudgetedRows[AnnotationEvent]:
        async with self._db.autocommit() as conn:
            return await self._feed.after(
                conn,
                project_id,
                after_event_id=after_event_id,
                study_uid=study_uid,
                limit=self._batch_size,
                budget_bytes=self._batch_budget_bytes,
            )

    async def _latest(self, project_id: int) -> int:
        async with self._db.autocommit() as conn:
            return await self._feed.latest_event_id(conn, project_id)

    def _wake_up(self, project_ids: set[int]) -> None:
        if project_ids:
            self._dirty |= project_ids
            self._wake.set()

    async def _pump(self) -> None:
        """Fans out, one project at a time, whatever the listener flagged."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                project_id = self._dirty.pop()
                try:
                    await self._catch_up(project_id)
                    continue
                except Unavailable:
                    _log.warning("annotation events cannot be read, retrying")
                except Exception:  # noqa: BLE001 - the pump must outlive any one failure
                    _log.exception("annotation event fan-out failed, retrying")
                self._dirty.add(project_id)
                await asyncio.sleep(self._reconnect_delay)

    async def _catch_up(self, project_id: int) -> None:
        project = self._projects.get(project_id)
        if project is None:
            return
        async with project.lock:
            while project.cursor is not None and project.subscribers:
                read = await self._read(project_id, project.cursor, None)
                for event in read.rows:
                    for subscriber in project.subscribers:
                        subscriber.push(event)
                if read.rows:
                    project.cursor = read.rows[-1].event_id
                if not read.cut and len(read.rows) < self._batch_size:
                    return

    async def _listen(self) -> None:
        """Keeps one LISTEN session open for the life of the hub, reconnecting with backoff."""
        delay = self._reconnect_delay
        lost = False
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, application_name=LISTENER_APPLICATION_NAME
                )
            except psycopg.Error as error:
                if not lost:
                    _log.warning(
                        "annotation event listener cannot connect, retrying",
                        extra={"sqlstate": error.sqlstate},
                    )
                lost = True
                self._first_attempt.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RECONNECT_DELAY_SECONDS)
                continue
            try:
                async with conn:
                    await conn.execute(sql.SQL("listen {}").format(sql.Identifier(CHANNEL)))
                    if lost:
                        _log.info("annotation event listener reconnected")
                    lost = False
                    delay = self._reconnect_delay
                    self._first_attempt.set()
                    # Whatever was notified while nobody listened is lost; the table is not.
                    self._wake_up(set(self._projects))
                    await self._receive(conn)
            except (psycopg.Error, TimeoutError) as error:
                _log.warning(
                    "annotation event listener lost its connection, reconnecting",
                    extra={"sqlstate": getattr(error, "sqlstate", None)},
                )
            except Exception:  # noqa: BLE001 - the listener must outlive any one failure
                _log.exception("annotation event listener failed, reconnecting")
            lost = True
            await asyncio.sleep(delay)

    async def _receive(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            async with contextlib.aclosing(conn.notifies(timeout=_HEARTBEAT_SECONDS)) as notifies:
                async for notify in notifies:
                    try:
                        project_ids = {int(notify.payload)}
                    except ValueError:
                        # Not one of ours: cheaper to re-read every watched project than to guess.
                        project_ids = set(self._projects)
                    self._wake_up(project_ids & self._projects.keys())
            async with asyncio.timeout(_HEARTBEAT_SECONDS):
                await conn.execute("select 1")
