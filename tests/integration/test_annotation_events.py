"""The annotation change feed against a real PostgreSQL: writers, the table, the hub."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from pacs_devstack.ports import free_port
from pacs_grpc.adapters.postgres.annotation_events import (
    CHANNEL,
    LISTENER_APPLICATION_NAME,
    AnnotationEventFeed,
    EventHub,
    SubscriberTooSlowError,
    record_event,
)
from pacs_grpc.adapters.postgres.database import Connection, Database
from pacs_grpc.domain.annotation import AnnotationEvent, EventType
from pacs_grpc.domain.errors import InvalidArgument, ResourceExhausted, Unavailable
from pacs_grpc.domain.paging import BudgetedRows

STUDY_A = "1.2.826.0.1.3680043.1"
STUDY_B = "1.2.826.0.1.3680043.2"

MakeHub = Callable[..., Awaitable[EventHub]]

# Set in a task, it slows that task's reads of the feed (and no other task's).
_read_delay: ContextVar[float] = ContextVar("read_delay", default=0.0)


class _DelayedFeed(AnnotationEventFeed):
    """Returns each read late, in tasks that ask for it: events commit in the meantime."""

    async def after(
        self,
        conn: Connection,
        project_id: int,
        *,
        after_event_id: int,
        study_uid: str | None,
        limit: int,
        budget_bytes: int,
    ) -> BudgetedRows[AnnotationEvent]:
        events = await super().after(
            conn, project_id, after_event_id=after_event_id, study_uid=study_uid, limit=limit,
            budget_bytes=budget_bytes,
        )  # fmt: skip
        await asyncio.sleep(_read_delay.get())
        return events


@dataclass(frozen=True)
class Seed:
    user_id: int
    project: int
    other_project: int
    # One annotation per (project, study).
    annotations: dict[tuple[int, str], int]


@pytest.fixture
async def db(app_database_url: str) -> AsyncIterator[Database]:
    # As the server connects: a member of pacs_app, so the grants are what is tested too.
    pool = AsyncConnectionPool(
        app_database_url,
        min_size=1,
        max_size=10,
        open=False,
        check=AsyncConnectionPool.check_connection,
        kwargs={"autocommit": True},
    )
    await pool.open(wait=True)
    try:
        yield Database(pool)
    finally:
        await pool.close()


@pytest.fixture
async def make_hub(app_database_url: str, db: Database) -> AsyncIterator[MakeHub]:
    hubs: list[EventHub] = []

    async def make(**options: Any) -> EventHub:
        options.setdefault("reconnect_delay_seconds", 0.05)
        feed = options.pop("feed", AnnotationEventFeed())
        hub = EventHub(app_database_url, db, feed, **options)
        hubs.append(hub)
        await hub.start()
        return hub

    yield make
    for hub in hubs:
        await hub.stop()


@pytest.fixture
async def seed(db: Database) -> Seed:
    async with db.transaction() as conn:
        user_id = await _one(
            conn,
            "insert into security_user (keycloak_id, username)"
            " values (gen_random_uuid(), 'watcher') returning id",
        )
        projects = [
            await _one(
                conn, "insert into security_project (name) values (%s) returning id", (name,)
            )
            for name in ("watched", "other")
        ]
        annotations = {
            (project, study): await _create_annotation(conn, user_id, project, study)
            for project in projects
            for study in (STUDY_A, STUDY_B)
        }
    return Seed(user_id, projects[0], projects[1], annotations)


async def _one(conn: Connection, query: LiteralString, params: tuple[Any, ...] = ()) -> int:
    row = await (await conn.execute(query, params)).fetchone()
    assert row is not None
    return int(row[0])


async def _create_annotation(conn: Connection, user_id: int, project_id: int, study: str) -> int:
    return await _one(
        conn,
        "insert into annotation_annotation (user_id, project_id, study_uid, annotation_type,"
        " annotation_data) values (%s, %s, %s, 'length', '{\"mm\": 4}') returning id",
        (user_id, project_id, study),
    )


async def _write(
    db: Database, seed: Seed, project_id: int, study: str, kind: EventType = EventType.UPDATED
) -> int:
    async with db.transaction() as conn:
        return await _record(conn, seed, project_id, study, kind)


async def _record(
    conn: Connection,
    seed: Seed,
    project_id: int,
    study: str,
    kind: EventType = EventType.UPDATED,
) -> int:
    """record_event on the seeded annotation, in the caller's transaction."""
    return await record_event(
        conn,
        project_id=project_id,
        study_uid=study,
        annotation_id=seed.annotations[project_id, study],
        event_type=kind,
    )


async def _record_without_waiting(conn: Connection, seed: Seed, project_id: int) -> int:
    async with conn.transaction():
        await conn.execute("set local lock_timeout = '200ms'")
        return await _record(conn, seed, project_id, STUDY_B)


async def _take(
    events: AsyncIterator[AnnotationEvent], count: int, within: float = 10.0
) -> list[AnnotationEvent]:
    async with asyncio.timeout(within):
        return [await anext(events) for _ in range(count)]


async def _assert_quiet(events: AsyncIterator[AnnotationEvent], seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            await anext(events)


def _ids(events: list[AnnotationEvent]) -> list[int]:
    return [event.event_id for event in events]


async def test_live_events_arrive_in_order_with_the_annotation(
    db: Database, seed: Seed, make_hub: MakeHub
) -> None:
    hub = await make_hub()
    before = [await _write(db, seed, seed.project, STUDY_A) for _ in range(2)]
    async with hub.subscribe(seed.project, study_uid=None, after_event_id=0) as events:
        kinds = [EventType.CREATED, EventType.UPDATED, EventType.UPDATED]
        written = [await _write(db, seed, seed.project, STUDY_A, kind) for kind in kinds]
        received = await _take(events, 3)
        await _assert_quiet(events)

    assert written[0] > before[-1]
    assert _ids(received) == written
    assert [event.event_type for event in received] == kinds
    for event in received:
        assert (event.project_id, event.study_uid) == (seed.project, STUDY_A)
        assert event.annotation is not None
        assert event.annotation.id == event.annotation_id == seed.annotations[seed.project, STUDY_A]
        assert event.annotation.annotation_data == {"mm": 4}


async def test_only_the_watched_project_and_study_arrive(
    db: Database, seed: Seed, make_hub: MakeHub
) -> None:
    hub = await make_hub()
    async with AsyncExitStack() as stack:
        project = await stack.enter_async_context(
            hub.subscribe(seed.project, study_uid=None, after_event_id=0)
        )
        study = await stack.enter_async_context(
            hub.subscribe(seed.project, study_uid=STUDY_A, after_event_id=0)
        )
        other = await stack.enter_async_context(
            hub.subscribe(seed.other_project, study_uid=None, after_event_id=0)
        )
        order = [
            (seed.project, STUDY_A),
            (seed.project, STUDY_B),
            (seed.other_project, STUDY_A),
            (seed.project, STUDY_A),
            (seed.other_project, STUDY_B),
        ]
        ids = [await _write(db, seed, p, s) for p, s in order]

        assert _ids(await _take(project, 3)) == [ids[0], ids[1], ids[3]]
        assert _ids(await _take(study, 2)) == [ids[0], ids[3]]
        assert _ids(await _take(other, 2)) == [ids[2], ids[4]]
        for events in (project, study, other):
            await _assert_quiet(events)


@pytest.mark.parametrize("study", [None, STUDY_A])
async def test_replay_then_live_has_no_gap_and_no_duplicate(
    db: Database, seed: Seed, make_hub: MakeHub, study: str | None
) -> None:
    # Small batches so that replays and fan-outs cross many batch boundaries.
    hub = await make_hub(batch_size=7, feed=_DelayedFeed())
    total = 200
    studies = [STUDY_A if i % 3 else STUDY_B for i in range(total)]
    written: list[int] = []
    progress = asyncio.Condition()

    async def writer() -> None:
        for study_uid in studies:
            written.append(await _write(db, seed, seed.project, study_uid))
            async with progress:
                progress.notify_all()

    async def join(at: int) -> tuple[list[int], list[int]]:
        """Joins once `at` events are written and resumes half-way: part replay, part live."""
        # Events commit and are fanned out while each of its reads of the table is returning.
        _read_delay.set(0.01)
        async with progress:
            await progress.wait_for(lambda: len(written) >= at)
        resume = at // 2
        wanted = [i for i in range(resume + 1, total) if study in (None, studies[i])]
        async with hub.subscribe(
            seed.project, study_uid=study, after_event_id=written[resume]
        ) as events:
            # Reading while the writer goes on: the switch to live happens under load.
            received = _ids(await _take(events, len(wanted)))
            await _assert_quiet(events, 0.1)
        return received, [written[i] for i in wanted]

    # Watching from the start, it keeps the project's cursor moving while the others join.
    async with hub.subscribe(seed.project, study_uid=None, after_event_id=0) as watcher:
        watching = asyncio.create_task(_take(watcher, total))
        joining = [asyncio.create_task(join(at)) for at in range(10, total, 20)]
        await writer()
        assert _ids(await watching) == written
        for received, expected in await asyncio.gather(*joining):
            assert received == expected


async def test_a_slow_watcher_overflows_and_the_others_get_everything(
    db: Database, seed: Seed, make_hub: MakeHub
) -> None:
    hub = await make_hub(queue_size=20)
    async with (
        hub.subscribe(seed.project, study_uid=None, after_event_id=0) as slow,
        hub.subscribe(seed.project, study_uid=None, after_event_id=0) as fast,
    ):
        written: list[int] = []
        received: list[AnnotationEvent] = []
        # In bursts the fast watcher drains before the next, so only the slow one overflows.
        for _ in range(10):
            burst = [await _write(db, seed, seed.project, STUDY_A) for _ in range(5)]
            received += await _take(fast, len(burst))
            written += burst
        assert _ids(received) == written

        with pytest.raises(SubscriberTooSlowError) as raised:
            await anext(slow)
        assert isinstance(raised.value, ResourceExhausted)
        assert "resume from the last event id" in raised.value.message

        written.append(await _write(db, seed, seed.project, STUDY_A))
        assert _ids(await _take(fast, 1)) == written[-1:]


async def test_events_from_another_replica_reach_every_hub(
    app_database_url: str, seed: Seed, make_hub: MakeHub
) -> None:
    first, second = await make_hub(), await make_hub()
    async with (
        first.subscribe(seed.project, study_uid=None, after_event_id=0) as on_first,
        second.subscribe(seed.project, study_uid=STUDY_B, after_event_id=0) as on_second,
    ):
        # Another replica: its own connection, not this process's pool.
        async with await psycopg.AsyncConnection.connect(app_database_url) as conn:
            ids = []
            for study in (STUDY_A, STUDY_B):
                async with conn.transaction():
                    ids.append(await _record(conn, seed, seed.project, study))
        assert _ids(await _take(on_first, 2)) == ids
        assert _ids(await _take(on_second, 1)) == ids[1:]


@pytest.mark.parametrize(("writers", "per_writer"), [(4, 30), (32, 8)])
async def test_concurrent_writers_are_seen_in_commit_order_with_none_missing(
    app_database_url: str,
    db: Database,
    seed: Seed,
    make_hub: MakeHub,
    writers: int,
    per_writer: int,
) -> None:
    hub = await make_hub()

    async def writer(study: str) -> None:
        async with await psycopg.AsyncConnection.connect(app_database_url) as conn:
            for _ in range(per_writer):
                async with conn.transaction():
                    await _record(conn, seed, seed.project, study)
                    # Without the project lock, a lower id committing after a higher one
                    # would be behind the hub's cursor already, and never delivered.
                    await asyncio.sleep(random.uniform(0, 0.003))

    async with hub.subscribe(seed.project, study_uid=None, after_event_id=0) as events:
        # Once this one is read, the watcher's own read of the table is over: what follows
        # comes from the hub's fan-out, which is where a late commit would be skipped.
        warm_up = await _write(db, seed, seed.project, STUDY_A)
        assert _ids(await _take(events, 1)) == [warm_up]
        receiving = asyncio.create_task(_take(events, writers * per_writer))
        studies = [(STUDY_A, STUDY_B)[n % 2] for n in range(writers)]
        await asyncio.gather(*(writer(study) for study in studies))
        received = [warm_up, *_ids(await receiving)]
        await _assert_quiet(events)

    async with db.transaction() as conn:
        cur = await conn.execute(
            "select event_id from annotation_event where project_id = %s order by event_id",
            (seed.project,),
        )
        in_table = [int(row[0]) for row in await cur.fetchall()]
    assert received == sorted(set(received))
    assert received == in_table


async def test_record_event_locks_only_its_project_and_notifies_its_id_at_commit(
    app_database_url: str, seed: Seed
) -> None:
    url = app_database_url
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as listener,
        await psycopg.AsyncConnection.connect(url) as holder,
        await psycopg.AsyncConnection.connect(url) as same_project,
        await psycopg.AsyncConnection.connect(url) as other_project,
    ):
        await listener.execute(f"listen {CHANNEL}")
        async with holder.transaction():
            await _record(holder, seed, seed.project, STUDY_A)
            assert [n async for n in listener.notifies(timeout=0.2)] == []

            with pytest.raises(pg_errors.LockNotAvailable):
                await _record_without_waiting(same_project, seed, seed.project)
            await _record_without_waiting(other_project, seed, seed.other_project)

        payloads = {n.payload async for n in listener.notifies(timeout=0.5)}
        assert payloads == {str(seed.project), str(seed.other_project)}


async def test_record_event_refuses_to_run_outside_a_transaction(db: Database, seed: Seed) -> None:
    async with db.transaction() as conn:
        pass
    with pytest.raises(RuntimeError, match="inside the writer's transaction"):
        await _record(conn, seed, seed.project, STUDY_A)


async def test_the_hub_reconnects_and_catches_up(
    postgres_admin_url: str,
    app_database_url: str,
    db: Database,
    seed: Seed,
    make_hub: MakeHub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pacs_grpc.events")
    hub = await make_hub()
    dbname = conninfo_to_dict(app_database_url)["dbname"]
    find_listener = "select pid from pg_stat_activity where datname = %s and application_name = %s"
    async with (
        hub.subscribe(seed.project, study_uid=STUDY_A, after_event_id=0) as events,
        await psycopg.AsyncConnection.connect(postgres_admin_url, autocommit=True) as admin,
    ):
        before = await _write(db, seed, seed.project, STUDY_A)
        assert _ids(await _take(events, 1)) == [before]

        pids = await (
            await admin.execute(find_listener, (dbname, LISTENER_APPLICATION_NAME))
        ).fetchall()
        assert len(pids) == 1
        await admin.execute("select pg_terminate_backend(%s)", (pids[0][0],))
        # Written while the hub has no listener: their notifications go nowhere.
        lost = [await _write(db, seed, seed.project, STUDY_A) for _ in range(3)]

        assert _ids(await _take(events, 3)) == lost
        after = await _write(db, seed, seed.project, STUDY_A)
        assert _ids(await _take(events, 1)) == [after]

        new_pids = await (
            await admin.execute(find_listener, (dbname, LISTENER_APPLICATION_NAME))
        ).fetchall()
        assert len(new_pids) == 1
        assert new_pids != pids

    records = [record for record in caplog.records if record.name == "pacs_grpc.events"]
    messages = [record.getMessage() for record in records]
    assert any("lost its connection" in message for message in messages)
    assert any("reconnected" in message for message in messages)
    assert all(STUDY_A not in str(vars(record)) for record in records)


async def test_start_succeeds_while_postgres_is_down(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    nowhere = f"postgresql://pacs@127.0.0.1:{free_port()}/pacs?connect_timeout=1"
    hub = EventHub(nowhere, db, AnnotationEventFeed(), reconnect_delay_seconds=0.05)
    async with asyncio.timeout(5):
        await hub.start()
        await asyncio.sleep(0.2)
        await hub.stop()
    assert any("cannot connect" in r.getMessage() for r in caplog.records)


async def test_stop_ends_every_subscription(db: Database, seed: Seed, make_hub: MakeHub) -> None:
    hub = await make_hub()

    async def drain(events: AsyncIterator[AnnotationEvent]) -> list[AnnotationEvent]:
        return [event async for event in events]

    async with (
        hub.subscribe(seed.project, study_uid=None, after_event_id=0) as waiting,
        hub.subscribe(seed.other_project, study_uid=STUDY_B, after_event_id=1) as idle,
    ):
        draining = asyncio.create_task(drain(waiting))
        await asyncio.sleep(0.1)
        async with asyncio.timeout(5):
            await hub.stop()
            assert await draining == []
            assert [event async for event in idle] == []

    with pytest.raises(Unavailable):
        async with hub.subscribe(seed.project, study_uid=None, after_event_id=0):
            pass


async def test_a_deleted_annotation_arrives_without_its_state(
    db: Database, seed: Seed, make_hub: MakeHub
) -> None:
    hub = await make_hub()
    async with hub.subscribe(seed.project, study_uid=STUDY_B, after_event_id=0) as events:
        async with db.transaction() as conn:
            annotation_id = await _create_annotation(conn, seed.user_id, seed.project, STUDY_B)
            created = await record_event(
                conn,
                project_id=seed.project,
                study_uid=STUDY_B,
                annotation_id=annotation_id,
                event_type=EventType.CREATED,
            )
        [event] = await _take(events, 1)
        assert event.event_id == created
        assert event.annotation is not None
        assert event.annotation.id == annotation_id

        async with db.transaction() as conn:
            await conn.execute(
                "update annotation_annotation set deleted_at = now() where id = %s",
                (annotation_id,),
            )
            deleted = await record_event(
                conn,
                project_id=seed.project,
                study_uid=STUDY_B,
                annotation_id=annotation_id,
                event_type=EventType.DELETED,
            )
        [event] = await _take(events, 1)
        assert (event.event_id, event.event_type, event.annotation) == (
            deleted,
            EventType.DELETED,
            None,
        )


async def test_a_project_is_tracked_only_while_someone_watches_it(
    db: Database, seed: Seed, make_hub: MakeHub
) -> None:
    hub = await make_hub()
    tracked = hub._projects  # what the hub keeps per project: its cursor and watchers
    async with hub.subscribe(seed.project, study_uid=None, after_event_id=0) as first:
        assert tracked[seed.project].cursor == 0
        async with hub.subscribe(seed.project, study_uid=STUDY_A, after_event_id=0):
            # The first event may come from the watcher's own read of the table; once that
            # read is done, everything comes from the hub, which advanced its cursor first.
            await _write(db, seed, seed.project, STUDY_A)
            await _take(first, 1)
            written = await _write(db, seed, seed.project, STUDY_A)
            await _take(first, 1)
            assert tracked[seed.project].cursor == written
        assert seed.project in tracked
    assert tracked == {}

    # A new first watcher starts from the table as it is now, not from a stale cursor.
    async with hub.subscribe(seed.project, study_uid=None, after_event_id=0):
        assert tracked[seed.project].cursor == written


async def test_a_negative_resume_point_is_refused(seed: Seed, make_hub: MakeHub) -> None:
    hub = await make_hub()
    with pytest.raises(InvalidArgument):
        hub.subscribe(seed.project, study_uid=None, after_event_id=-1)


async def test_replay_of_large_annotations_goes_in_budgeted_batches_without_a_gap(
    db: Database, seed: Seed, make_hub: MakeHub
) -> None:
    """Each batch of the table stops at its byte budget, yet the watcher still gets every
    event, in order, each with its annotation."""
    blob = "x" * 40_000
    async with db.transaction() as conn:
        big = [
            await _one(
                conn,
                "insert into annotation_annotation (user_id, project_id, study_uid,"
                " annotation_type, annotation_data) values (%s, %s, %s, 'polygon',"
                " jsonb_build_object('blob', %s::text)) returning id",
                (seed.user_id, seed.project, STUDY_A, blob),
            )
            for _ in range(6)
        ]
    start = await _write(db, seed, seed.project, STUDY_B)
    written = []
    for annotation_id in big:
        async with db.transaction() as conn:
            written.append(
                await record_event(
                    conn, project_id=seed.project, study_uid=STUDY_A,
                    annotation_id=annotation_id, event_type=EventType.CREATED,
                )
            )  # fmt: skip
    # Room for two of them per batch (the first row of a batch always fits).
    budget = 100_000
    async with db.transaction() as conn:
        first = await AnnotationEventFeed().after(
            conn, seed.project, after_event_id=start, study_uid=None, limit=500,
            budget_bytes=budget,
        )  # fmt: skip
    assert first.cut
    assert _ids(first.rows) == written[:3]
    hub = await make_hub(batch_budget_bytes=budget)
    async with hub.subscribe(seed.project, study_uid=None, after_event_id=start) as events:
        received = await _take(events, len(written))
        await _assert_quiet(events)
    assert _ids(received) == written
    assert all(e.annotation is not None and e.annotation.annotation_data == {"blob": blob}
               for e in received)  # fmt: skip
