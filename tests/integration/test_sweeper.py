"""The storage sweeper against a real PostgreSQL and a real SeaweedFS: the outbox drained,
expired upload tickets cleaned up, referenced objects kept, outages survived, replicas sharing
the work, and a prompt stop."""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error
from psycopg_pool import AsyncConnectionPool

from pacs_devstack.seaweed import SeaweedConfig, SeaweedS3
from pacs_grpc.adapters.postgres import outbox
from pacs_grpc.adapters.postgres.annotations import AnnotationRepository
from pacs_grpc.adapters.postgres.database import Database
from pacs_grpc.adapters.postgres.masks import MaskRepository
from pacs_grpc.adapters.postgres.outbox import DeletionOutbox
from pacs_grpc.logs import JsonFormatter
from pacs_grpc.services.ports import DeletesObjects
from pacs_grpc.services.sweeper import Sweeper, SweepResult

BUCKET = "pacs-sweeper-test"
STUDY = "1.2.826.0.1.3680043.9"


class SeaweedStore:
    """ObjectStorage.delete on the real server (pacs_grpc.adapters.storage.objects did not
    exist when these tests were written); errors from the server or the network propagate."""

    def __init__(self, client: Minio, bucket: str = BUCKET) -> None:
        self._client = client
        self._bucket = bucket

    async def delete(self, keys: Sequence[str]) -> list[str]:
        def remove() -> list[str]:
            errors = self._client.remove_objects(self._bucket, [DeleteObject(k) for k in keys])
            return [str(error.name) for error in errors]

        return await asyncio.to_thread(remove)


class RecordingStore:
    """Passes every call on to real storage and remembers the keys.

    With a gate, each call waits for it first: the batch's rows stay locked meanwhile.
    """

    def __init__(
        self, inner: DeletesObjects, *, pause: float = 0.0, gate: asyncio.Event | None = None
    ) -> None:
        self._inner = inner
        self._pause = pause
        self._gate = gate
        self.calls: list[list[str]] = []
        self.entered = asyncio.Event()

    async def delete(self, keys: Sequence[str]) -> list[str]:
        self.calls.append(list(keys))
        self.entered.set()
        await asyncio.sleep(self._pause)
        if self._gate is not None:
            await self._gate.wait()
        return await self._inner.delete(keys)

    @property
    def keys(self) -> list[str]:
        return [key for call in self.calls for key in call]


def _config(data_dir: Path) -> SeaweedConfig:
    return SeaweedConfig(
        data_dir=data_dir,
        access_key="pacs-sweeper-access",
        secret_key="pacs-sweeper-secret-0123456789",
        bucket=BUCKET,
        s3_port=0,
    )


def _sweeper(
    db: Database, outbox: DeletionOutbox, storage: DeletesObjects, **options: Any
) -> Sweeper[Any]:
    """A sweeper with the server's default interval and grace unless a test sets its own."""
    options.setdefault("interval_seconds", 5.0)
    options.setdefault("upload_grace", timedelta(minutes=10))
    options.setdefault("trash", (AnnotationRepository(), MaskRepository()))
    options.setdefault("trash_retention", timedelta(days=30))
    return Sweeper(db, outbox, storage, **options)


@pytest.fixture(scope="module")
def http() -> Iterator[urllib3.PoolManager]:
    # No retries and a short connect timeout: a stopped server must fail a call at once.
    pool = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1, read=10), retries=False)
    yield pool
    pool.clear()


@pytest.fixture(scope="module")
def seaweed(scratch_dir: Callable[[str], Path]) -> Iterator[SeaweedS3]:
    """One server for the tests that keep it running."""
    server = SeaweedS3(_config(scratch_dir("sweeper-s3") / "data"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(seaweed: SeaweedS3, http: urllib3.PoolManager) -> Minio:
    return seaweed.client(http)


@pytest.fixture
def store(client: Minio) -> SeaweedStore:
    return SeaweedStore(client)


@pytest.fixture
async def db(app_database_url: str) -> AsyncIterator[Database]:
    # As the server connects: a member of pacs_app, so the grants are what is tested too.
    pool = AsyncConnectionPool(
        app_database_url,
        min_size=1,
        max_size=6,
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
async def group_id(db: Database) -> int:
    """A mask group under an annotation, for masks and upload tickets to belong to."""
    async with db.transaction() as conn:
        return await _one(
            conn,
            """
            with u as (
                insert into security_user (keycloak_id, username)
                values (gen_random_uuid(), 'sweeper') returning id
            ), p as (
                insert into security_project (name) values ('sweeper') returning id
            ), a as (
                insert into annotation_annotation
                    (user_id, project_id, study_uid, annotation_type, annotation_data)
                select u.id, p.id, %s, 'segmentation', '{}' from u, p returning id
            )
            insert into annotation_mask_group (annotation_id) select id from a returning id
            """,
            (STUDY,),
        )


async def _one(conn: Any, query: str, params: Sequence[Any] = ()) -> int:
    row = await (await conn.execute(query, params)).fetchone()
    assert row is not None
    return int(row[0])


def _new_key() -> str:
    return f"masks/{secrets.token_hex(8)}/0.png"


def _put(client: Minio, key: str) -> None:
    body = secrets.token_bytes(64)
    client.put_object(BUCKET, key, io.BytesIO(body), len(body), content_type="image/png")


def _exists(client: Minio, key: str) -> bool:
    try:
        client.stat_object(BUCKET, key)
    except S3Error as error:
        if error.code in ("NoSuchKey", "NotFound"):
            return False
        raise
    return True


def _objects(client: Minio, count: int) -> list[str]:
    keys = [_new_key() for _ in range(count)]
    for key in keys:
        _put(client, key)
    return keys


async def _enqueue(db: Database, keys: Sequence[str]) -> None:
    async with db.transaction() as conn:
        await conn.execute(
            "insert into storage_deletion_outbox (object_key) select unnest(%s::text[])",
            (list(keys),),
        )


async def _outbox_rows(db: Database) -> dict[str, tuple[int, float, str | None]]:
    """object_key -> (attempts, seconds until next attempt, last_error)."""
    async with db.transaction() as conn:
        cur = await conn.execute(
            "select object_key, attempts,"
            " extract(epoch from next_attempt_at - clock_timestamp())::float8, last_error"
            " from storage_deletion_outbox"
        )
        return {row[0]: (row[1], row[2], row[3]) for row in await cur.fetchall()}


async def _add_upload(
    db: Database,
    group_id: int,
    key: str,
    *,
    expires_in: timedelta,
    completed: bool = False,
    slice_index: int = 0,
) -> uuid.UUID:
    upload_id = uuid.uuid4()
    async with db.transaction() as conn:
        await conn.execute(
            "insert into mask_upload (upload_id, mask_group_id, slice_index, content_type,"
            " size_bytes, method, object_key, expires_at, completed_at)"
            " values (%s, %s, %s, 'image/png', 64, 'POST', %s, now() + %s,"
            " case when %s then now() end)",
            (upload_id, group_id, slice_index, key, expires_in, completed),
        )
    return upload_id


async def _add_mask(
    db: Database, group_id: int, key: str, slice_index: int, upload_id: uuid.UUID | None
) -> None:
    async with db.transaction() as conn:
        await conn.execute(
            "insert into annotation_mask (mask_group_id, slice_index, file_path, file_size,"
            " upload_id) values (%s, %s, %s, 64, %s)",
            (group_id, slice_index, key, upload_id),
        )


async def _upload_ids(db: Database) -> set[uuid.UUID]:
    async with db.transaction() as conn:
        cur = await conn.execute("select upload_id from mask_upload")
        return {row[0] for row in await cur.fetchall()}


async def _backlog(db: Database) -> int:
    async with db.transaction() as conn:
        return await outbox.backlog(conn)


async def test_queued_objects_are_deleted_and_their_rows_removed(
    db: Database, client: Minio, store: SeaweedStore, caplog: pytest.LogCaptureFixture
) -> None:
    keys = _objects(client, 3)
    never_uploaded = _new_key()
    await _enqueue(db, [*keys, never_uploaded])
    caplog.set_level(logging.INFO, logger="pacs_grpc.sweeper")

    result = await _sweeper(db, DeletionOutbox(), store).sweep_once()

    assert result == SweepResult(expired_enqueued=0, deleted=4, failed=0)
    assert not any(_exists(client, key) for key in keys)
    assert await _backlog(db) == 0
    # One line for the round, counts only.
    records = [r for r in caplog.records if r.name == "pacs_grpc.sweeper"]
    assert len(records) == 1
    line = JsonFormatter().format(records[0])
    assert '"deleted": 4' in line
    assert not any(key in line for key in [*keys, never_uploaded])


async def test_a_round_with_nothing_to_do_logs_nothing(
    db: Database, store: SeaweedStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pacs_grpc.sweeper")

    assert await _sweeper(db, DeletionOutbox(), store).sweep_once() == SweepResult()
    assert not [r for r in caplog.records if r.name == "pacs_grpc.sweeper"]


async def test_a_key_queued_twice_is_deleted_once_and_both_rows_go(
    db: Database, client: Minio, store: SeaweedStore
) -> None:
    (key,) = _objects(client, 1)
    await _enqueue(db, [key, key])
    recording = RecordingStore(store)

    result = await _sweeper(db, DeletionOutbox(), recording).sweep_once()

    assert result.deleted == 2
    assert recording.keys == [key]
    assert not _exists(client, key)
    assert await _backlog(db) == 0


async def test_large_backlogs_are_drained_in_batches(
    db: Database, client: Minio, store: SeaweedStore
) -> None:
    keys = _objects(client, 12)
    await _enqueue(db, keys)
    recording = RecordingStore(store)

    result = await _sweeper(db, DeletionOutbox(), recording, batch_size=5).sweep_once()

    assert result.deleted == 12
    assert [len(call) for call in recording.calls] == [5, 5, 2]
    assert await _backlog(db) == 0


async def test_expired_uploads_past_the_grace_period_are_cleaned_up(
    db: Database, client: Minio, store: SeaweedStore, group_id: int
) -> None:
    expired, in_grace, pending, completed = _objects(client, 4)
    expired_id = await _add_upload(db, group_id, expired, expires_in=timedelta(hours=-1))
    kept = {
        await _add_upload(db, group_id, in_grace, expires_in=timedelta(minutes=-5), slice_index=1),
        await _add_upload(db, group_id, pending, expires_in=timedelta(minutes=10), slice_index=2),
    }
    completed_id = await _add_upload(
        db, group_id, completed, expires_in=timedelta(hours=-1), completed=True, slice_index=3
    )
    await _add_mask(db, group_id, completed, 3, completed_id)

    result = await _sweeper(
        db, DeletionOutbox(), store, upload_grace=timedelta(minutes=10)
    ).sweep_once()

    assert result == SweepResult(expired_enqueued=1, deleted=1, failed=0)
    assert not _exists(client, expired)
    assert all(_exists(client, key) for key in (in_grace, pending, completed))
    assert await _upload_ids(db) == kept | {completed_id}
    assert expired_id not in await _upload_ids(db)
    assert await _backlog(db) == 0


async def test_an_object_a_mask_references_is_never_deleted(
    db: Database, client: Minio, store: SeaweedStore, group_id: int
) -> None:
    (key,) = _objects(client, 1)
    # A recorded mask names the key, and so does an expired ticket that was never completed.
    await _add_mask(db, group_id, key, 0, None)
    await _add_upload(db, group_id, key, expires_in=timedelta(days=-1))

    result = await _sweeper(db, DeletionOutbox(), store).sweep_once()

    assert result == SweepResult()
    assert _exists(client, key)
    assert await _backlog(db) == 0
    # The stale ticket goes, so it is not examined again every round.
    assert await _upload_ids(db) == set()


async def test_retries_back_off_exponentially_up_to_an_hour(db: Database) -> None:
    await _enqueue(db, ["a", "b", "c"])
    async with db.transaction() as conn:
        await conn.execute(
            "update storage_deletion_outbox set attempts ="
            " case object_key when 'a' then 0 when 'b' then 3 else 20 end"
        )
        claimed = await outbox.claim_due_deletions(conn, 10)
        reason = "x" * 500
        await outbox.retry_deletions(conn, dict.fromkeys((i for i, _ in claimed), reason))

    rows = await _outbox_rows(db)
    assert {key: attempts for key, (attempts, _, _) in rows.items()} == {"a": 1, "b": 4, "c": 21}
    assert 4.0 < rows["a"][1] <= 6.0
    assert 39.0 < rows["b"][1] <= 48.0
    assert 3590.0 < rows["c"][1] <= 3600.0
    assert {error for _, _, error in rows.values()} == {"x" * outbox.MAX_ERROR_CHARS}


@pytest.mark.slow
async def test_storage_outage_reschedules_rows_and_loses_nothing(
    db: Database, http: urllib3.PoolManager, scratch_dir: Callable[[str], Path]
) -> None:
    server = SeaweedS3(_config(scratch_dir("sweeper-outage") / "data"))
    server.start()
    try:
        client = server.client(http)
        keys = _objects(client, 3)
        await _enqueue(db, keys)
        sweeper = _sweeper(db, DeletionOutbox(), SeaweedStore(client))
        server.kill()

        down = await sweeper.sweep_once()

        assert down == SweepResult(expired_enqueued=0, deleted=0, failed=3)
        rows = await _outbox_rows(db)
        assert set(rows) == set(keys)
        for attempts, due_in, error in rows.values():
            assert attempts == 1
            assert due_in > 3.0
            assert error is not None
            assert error.startswith("storage unavailable")
            assert "masks/" not in error
            assert "http" not in error

        server.start()
        assert all(_exists(client, key) for key in keys)
        # Not due yet: nothing happens until the backoff has passed.
        assert await sweeper.sweep_once() == SweepResult()
        async with db.transaction() as conn:
            await conn.execute("update storage_deletion_outbox set next_attempt_at = now()")

        assert await sweeper.sweep_once() == SweepResult(deleted=3)
        assert not any(_exists(client, key) for key in keys)
        assert await _backlog(db) == 0
    finally:
        server.stop()


@pytest.mark.parametrize("shared_lock", [True, False], ids=["same-lock", "skip-locked-only"])
async def test_concurrent_sweepers_delete_each_object_once(
    db: Database, client: Minio, store: SeaweedStore, *, shared_lock: bool
) -> None:
    keys = _objects(client, 40)
    await _enqueue(db, keys)
    # The pause keeps each batch's rows locked while the other sweeper looks for work.
    first, second = RecordingStore(store, pause=0.05), RecordingStore(store, pause=0.05)
    sweepers = [
        _sweeper(db, DeletionOutbox(1001), first, batch_size=7),
        _sweeper(db, DeletionOutbox(1001 if shared_lock else 1002), second, batch_size=7),
    ]

    results: list[SweepResult] = []
    for _ in range(10):
        results += await asyncio.gather(*(s.sweep_once() for s in sweepers))
        if await _backlog(db) == 0:
            break

    assert sorted(first.keys + second.keys) == sorted(keys)
    assert sum(r.deleted for r in results) == 40
    assert sum(r.failed for r in results) == 0
    assert not any(_exists(client, key) for key in keys)
    if not shared_lock:
        # Without the lock both work at once, on disjoint rows.
        assert first.keys
        assert second.keys


async def test_while_one_sweeper_holds_the_lock_another_skips_its_round(
    db: Database, client: Minio, store: SeaweedStore
) -> None:
    keys = _objects(client, 10)
    await _enqueue(db, keys)
    gate = asyncio.Event()
    busy, idle = RecordingStore(store, gate=gate), RecordingStore(store)
    first = asyncio.create_task(_sweeper(db, DeletionOutbox(1001), busy, batch_size=5).sweep_once())
    try:
        async with asyncio.timeout(10):
            await busy.entered.wait()

        async with asyncio.timeout(5):
            skipped = await _sweeper(db, DeletionOutbox(1001), idle, batch_size=5).sweep_once()

        backlog_meanwhile = await _backlog(db)
    finally:
        # Never leave the task running into the fixtures' teardown.
        gate.set()
        first_result = await first

    assert skipped == SweepResult()
    assert idle.calls == []
    assert backlog_meanwhile == 10
    assert first_result == SweepResult(deleted=10)
    assert sorted(busy.keys) == sorted(keys)


async def test_sweepers_without_a_shared_lock_skip_each_others_rows(
    db: Database, client: Minio, store: SeaweedStore
) -> None:
    keys = _objects(client, 10)
    await _enqueue(db, keys)
    gate = asyncio.Event()
    busy, other = RecordingStore(store, gate=gate), RecordingStore(store)
    # One batch only for the first: it stops after its five rows.
    first = asyncio.create_task(_sweeper(db, DeletionOutbox(1001), busy, batch_size=5).sweep_once())
    try:
        async with asyncio.timeout(10):
            await busy.entered.wait()

        # Does not wait for the rows the first holds: it takes the others.
        async with asyncio.timeout(5):
            second = await _sweeper(db, DeletionOutbox(1002), other, batch_size=5).sweep_once()
    finally:
        gate.set()
        first_result = await first

    assert second == SweepResult(deleted=5)
    assert first_result.deleted == 5
    assert sorted(busy.keys + other.keys) == sorted(keys)
    assert not set(busy.keys) & set(other.keys)
    assert await _backlog(db) == 0


async def test_stop_returns_promptly_when_idle(db: Database, store: SeaweedStore) -> None:
    sweeper = _sweeper(db, DeletionOutbox(), store, interval_seconds=60)
    await sweeper.start()
    await asyncio.sleep(0.2)

    started = time.monotonic()
    await sweeper.stop()

    assert time.monotonic() - started < 1.0
    await sweeper.stop()  # a second stop is harmless


async def test_stop_during_a_storage_call_releases_the_rows_untouched(
    db: Database, client: Minio, store: SeaweedStore
) -> None:
    keys = _objects(client, 2)
    await _enqueue(db, keys)
    stuck = RecordingStore(store, gate=asyncio.Event())
    sweeper = _sweeper(db, DeletionOutbox(), stuck)
    await sweeper.start()
    async with asyncio.timeout(10):
        await stuck.entered.wait()

    started = time.monotonic()
    await sweeper.stop()

    assert time.monotonic() - started < 1.0
    rows = await _outbox_rows(db)
    assert set(rows) == set(keys)
    assert all(attempts == 0 for attempts, _, _ in rows.values())
    # Released, not stuck behind a lock: the next sweeper deletes them.
    assert await _sweeper(db, DeletionOutbox(), store).sweep_once() == SweepResult(deleted=2)
    assert not any(_exists(client, key) for key in keys)


async def test_the_loop_survives_database_errors(
    db: Database,
    migrated_database_url: str,
    client: Minio,
    store: SeaweedStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = _objects(client, 2)
    await _enqueue(db, keys)
    # Only the owner may rename the table; the sweeper runs as pacs_app.
    async with await psycopg.AsyncConnection.connect(
        migrated_database_url, autocommit=True
    ) as owner:
        await owner.execute("alter table storage_deletion_outbox rename to outbox_away")
        caplog.set_level(logging.INFO, logger="pacs_grpc.sweeper")
        sweeper = _sweeper(db, DeletionOutbox(), store, interval_seconds=0.05)
        await sweeper.start()
        try:
            await _eventually(lambda: _failures_logged(caplog))
            await owner.execute("alter table outbox_away rename to storage_deletion_outbox")
            await _eventually(lambda: _backlog_is_empty(db))
        finally:
            await sweeper.stop()

    assert not any(_exists(client, key) for key in keys)
    failures = _sweeper_failures(caplog)
    assert failures
    assert all(key not in JsonFormatter().format(r) for r in failures for key in keys)


def _sweeper_failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "pacs_grpc.sweeper" and r.getMessage() == "storage sweep failed"
    ]


async def _failures_logged(caplog: pytest.LogCaptureFixture) -> bool:
    return bool(_sweeper_failures(caplog))


async def _backlog_is_empty(db: Database) -> bool:
    return await _backlog(db) == 0


async def _eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    for _ in range(1_000_000):
        if await check():
            return
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    pytest.fail(f"not true within {within} s")
