"""The sweeper's own decisions on a fake outbox and fake storage: what it finishes, what it
retries and why, when it stops a round, and that it leaves the work to a replica holding the
lock. PostgreSQL's part (advisory locks, SKIP LOCKED) is for tests/integration/test_sweeper.py."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta

import pytest

from pacs_grpc.domain.errors import Unavailable
from pacs_grpc.domain.masks import UploadMethod
from pacs_grpc.services.sweeper import SweepResult
from tests.fakes.mask_builders import MaskWorld, declaration, png
from tests.fakes.masks import queue, queued_keys
from tests.fakes.outbox import backoff


@pytest.fixture
def m() -> MaskWorld:
    return MaskWorld()


def _queued(m: MaskWorld, count: int, *, due_in: float = 0) -> list[str]:
    """Objects stored and queued for deletion, due `due_in` seconds from now."""
    keys = [f"masks/p1/a1/g1/pushed/{m.w.db.next_id('test keys')}" for _ in range(count)]
    for key in keys:
        m.storage.overwrite(key, png(0))
        m.storage.overwrite(key, png(1))  # every version goes
    queue(m.w.db, keys, m.w.clock.now() + timedelta(seconds=due_in))
    return keys


async def test_due_objects_are_deleted_and_their_rows_finished(m: MaskWorld) -> None:
    keys = _queued(m, 3)
    later = _queued(m, 1, due_in=30)

    result = await m.sweeper().sweep_once()

    assert result == SweepResult(deleted=3)
    assert m.storage.stored_keys() == later
    assert queued_keys(m.w.db) == later
    assert m.storage.deletes == [keys]


async def test_keys_storage_refused_are_retried_later_with_the_reason(m: MaskWorld) -> None:
    keys = _queued(m, 3)
    m.storage.refuse_delete = {keys[1]}

    result = await m.sweeper().sweep_once()

    assert result == SweepResult(deleted=2, failed=1)
    (row,) = m.outbox.rows()
    assert (row.object_key, row.attempts, row.last_error) == (
        keys[1],
        1,
        "storage did not delete the object",
    )
    assert row.next_attempt_at == m.w.clock.now() + backoff(0)
    # Not due again yet: the next round leaves it alone.
    assert await m.sweeper().sweep_once() == SweepResult()
    assert len(m.storage.deletes) == 1


async def test_retries_back_off_exponentially_up_to_the_cap(m: MaskWorld) -> None:
    (key,) = _queued(m, 1)
    m.storage.refuse_delete = {key}
    delays = []
    for _ in range(12):
        await m.sweeper().sweep_once()
        (row,) = m.outbox.rows()
        delay = row.next_attempt_at - m.w.clock.now()
        delays.append(delay.total_seconds())
        m.w.clock.advance(delay.total_seconds())
    assert delays[:4] == [5.0, 10.0, 20.0, 40.0]
    assert delays[-1] == 3600.0
    assert m.outbox.rows()[0].attempts == 12
    m.storage.refuse_delete = set()
    assert await m.sweeper().sweep_once() == SweepResult(deleted=1)


async def test_a_storage_timeout_stops_the_round_and_reschedules_the_batch(
    m: MaskWorld,
) -> None:
    keys = _queued(m, 5)
    # What asyncio.wait_for raises when the delete outlives delete_timeout_seconds.
    m.storage.delete_error = TimeoutError()

    result = await m.sweeper(batch_size=2).sweep_once()

    # A full batch would go on; an outage would fail every further batch too.
    assert result == SweepResult(failed=2)
    assert len(m.storage.deletes) == 1
    assert m.storage.stored_keys() == keys
    failed = [r for r in m.outbox.rows() if r.attempts]
    assert [r.last_error for r in failed] == ["storage delete timed out"] * 2


async def test_storage_down_stops_the_round_and_records_only_the_errors_type(
    m: MaskWorld,
) -> None:
    _queued(m, 3)
    m.storage.down = True
    result = await m.sweeper(batch_size=2).sweep_once()
    assert result == SweepResult(failed=2)
    assert {r.last_error for r in m.outbox.rows() if r.attempts} == {
        "storage unavailable (Unavailable)"
    }
    assert len(m.outbox.rows()) == 3


async def test_a_replica_without_the_lock_does_no_work(m: MaskWorld) -> None:
    keys = _queued(m, 2)
    await _expired_ticket(m)
    m.outbox.held_elsewhere = True
    before = len(m.w.db.committed)

    assert await m.sweeper().sweep_once() == SweepResult()

    assert m.storage.calls == []
    assert len(m.tables.uploads) == 1
    assert queued_keys(m.w.db) == keys
    # One transaction: it asked for the lock and ended.
    assert len(m.w.db.committed) == before + 1


async def test_batches_continue_while_they_come_back_full(m: MaskWorld) -> None:
    keys = _queued(m, 5)
    result = await m.sweeper(batch_size=2).sweep_once()
    assert result == SweepResult(deleted=5)
    assert m.storage.deletes == [keys[0:2], keys[2:4], keys[4:5]]
    assert m.outbox.rows() == []


async def test_a_round_whose_last_batch_was_exactly_full_ends_with_an_empty_one(
    m: MaskWorld,
) -> None:
    _queued(m, 4)
    result = await m.sweeper(batch_size=2).sweep_once()
    assert result == SweepResult(deleted=4)
    assert len(m.storage.deletes) == 2
    # The round's purge of expired trash (nothing here), then three batches.
    assert len(m.w.db.committed) == 4


async def test_rows_another_sweeper_holds_are_passed_by(m: MaskWorld) -> None:
    keys = _queued(m, 3)
    held = m.outbox.rows()[1].id
    m.outbox.locked_elsewhere = {held}
    assert await m.sweeper().sweep_once() == SweepResult(deleted=2)
    assert queued_keys(m.w.db) == [keys[1]]


async def test_a_key_queued_twice_is_deleted_once_and_both_rows_go(m: MaskWorld) -> None:
    (key,) = _queued(m, 1)
    queue(m.w.db, [key], m.w.clock.now())
    assert await m.sweeper().sweep_once() == SweepResult(deleted=2)
    assert m.storage.deletes == [[key]]
    assert m.outbox.rows() == []


async def test_a_database_error_rolls_the_batch_back_and_propagates(m: MaskWorld) -> None:
    keys = _queued(m, 2)
    m.w.db.fail_next("outbox.finish", Unavailable("database unavailable"))
    with pytest.raises(Unavailable):
        await m.sweeper().sweep_once()
    # Deleted from storage, but the rows stay: the next round deletes again, harmlessly.
    assert queued_keys(m.w.db) == keys
    assert await m.sweeper().sweep_once() == SweepResult(deleted=2)


async def test_the_backlog_is_reported_due_or_not(m: MaskWorld) -> None:
    _queued(m, 2)
    _queued(m, 1, due_in=600)
    heard: list[int] = []
    assert await m.sweeper(on_backlog=heard.append).report_backlog() == 3
    assert heard == [3]


async def test_a_round_that_did_something_logs_its_counts(
    m: MaskWorld, caplog: pytest.LogCaptureFixture
) -> None:
    _queued(m, 2)
    with caplog.at_level(logging.INFO, logger="pacs_grpc.sweeper"):
        await m.sweeper().sweep_once()
        await m.sweeper().sweep_once()
    (record,) = caplog.records
    counts = [getattr(record, name) for name in ("deleted", "failed", "expired_enqueued")]
    assert counts == [2, 0, 0]


@pytest.mark.parametrize(
    ("interval", "batch", "timeout"), [(0, 1, 1.0), (1.0, 0, 1.0), (1.0, 1, 0)]
)
def test_settings_that_would_spin_or_stall_are_refused(
    m: MaskWorld, interval: float, batch: int, timeout: float
) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        m.sweeper(interval_seconds=interval, batch_size=batch, delete_timeout_seconds=timeout)


# -- expired upload tickets --------------------------------------------------------------------

GRACE = timedelta(minutes=10)
TTL = 60


async def _expired_ticket(m: MaskWorld, slice_index: int = 0, *, upload: bool = True) -> str:
    group = next(iter(m.tables.groups.values()), None) or m.seed_group(3)
    (ticket,) = await m.urls().create_upload_urls(
        m.call("CreateUploadUrls"), m.annotation.id, group.id,
        [declaration(slice_index, png(slice_index))], ttl_seconds=TTL, method=UploadMethod.POST,
    )  # fmt: skip
    if upload:
        assert m.storage.post(ticket, png(slice_index)) == 204
    return ticket.object_key


async def test_tickets_expired_past_the_grace_period_lose_their_objects(m: MaskWorld) -> None:
    expired = await _expired_ticket(m, 0)
    never_uploaded = await _expired_ticket(m, 1, upload=False)
    m.w.clock.advance(TTL + GRACE.total_seconds() - 1)
    in_grace = await _expired_ticket(m, 2)
    m.w.clock.advance(2)

    result = await m.sweeper(upload_grace=GRACE).sweep_once()

    # A ticket nobody used still has its key queued: the sweeper cannot know.
    assert result == SweepResult(expired_enqueued=2, deleted=2)
    assert m.storage.stored_keys() == [in_grace]
    assert [u.object_key for u in m.tables.uploads.values()] == [in_grace]
    assert expired not in queued_keys(m.w.db)
    assert never_uploaded not in queued_keys(m.w.db)


async def test_a_completed_tickets_object_is_never_queued(m: MaskWorld) -> None:
    group = m.seed_group(1)
    (ticket,) = await m.urls().create_upload_urls(
        m.call("CreateUploadUrls"), m.annotation.id, group.id, [declaration(0, png(0))],
        ttl_seconds=TTL, method=UploadMethod.POST,
    )  # fmt: skip
    m.storage.post(ticket, png(0))
    await m.completion().complete_upload(
        m.call("CompleteUpload"), m.annotation.id, group.id, [(str(ticket.upload_id), 8, 8, "")]
    )
    m.w.clock.advance(timedelta(days=1).total_seconds())
    assert await m.sweeper().sweep_once() == SweepResult()
    assert m.storage.stored_keys() == [ticket.object_key]


async def test_an_expired_ticket_whose_key_a_mask_references_goes_but_its_object_stays(
    m: MaskWorld,
) -> None:
    key = await _expired_ticket(m, 0)
    # A mask recorded on that key (as after a race the SQL guards against).
    (upload,) = m.tables.uploads.values()
    group = m.tables.groups[upload.mask_group_id]
    (mask,) = m.seed_masks(group, [1])
    m.tables.masks[mask.id] = (replace(mask, file_path=key), None)
    m.w.clock.advance(TTL + GRACE.total_seconds() + 1)

    assert await m.sweeper(upload_grace=GRACE).sweep_once() == SweepResult()
    assert m.tables.uploads == {}
    assert key in m.storage.stored_keys()


async def test_expired_tickets_are_taken_in_batches_too(m: MaskWorld) -> None:
    for index in range(3):
        await _expired_ticket(m, index)
    m.w.clock.advance(TTL + GRACE.total_seconds() + 1)
    result = await m.sweeper(batch_size=2, upload_grace=GRACE).sweep_once()
    assert result == SweepResult(expired_enqueued=3, deleted=3)
    assert m.storage.stored_keys() == []


async def test_a_deleted_groups_objects_leave_storage_at_the_next_round(m: MaskWorld) -> None:
    group = m.seed_group(3)
    m.seed_masks(group, [0, 1])
    pending = await _expired_ticket(m, 2)
    await m.group_trash().delete(
        m.call("DeleteMaskGroup", m.admin), m.annotation.id, group.id, purge=True
    )
    assert pending in m.storage.stored_keys()
    assert await m.sweeper().sweep_once() == SweepResult(deleted=3)
    assert m.storage.stored_keys() == []


async def test_a_batch_of_expired_tickets_counts_those_whose_object_stays(m: MaskWorld) -> None:
    """A full batch of removed tickets means more may be waiting, even when some keys were not
    queued (a mask references them): the round goes on and leaves no expired ticket behind."""
    keys = [await _expired_ticket(m, index) for index in range(3)]
    (upload, *_) = sorted(m.tables.uploads.values(), key=lambda u: u.slice_index)
    group = m.tables.groups[upload.mask_group_id]
    (mask,) = m.seed_masks(group, [2])
    m.tables.masks[mask.id] = (replace(mask, file_path=keys[0]), None)
    m.w.clock.advance(TTL + GRACE.total_seconds() + 1)

    result = await m.sweeper(batch_size=2, upload_grace=GRACE).sweep_once()

    assert m.tables.uploads == {}
    assert result == SweepResult(expired_enqueued=2, deleted=2)
    stored = m.storage.stored_keys()
    assert keys[0] in stored
    assert not {keys[1], keys[2]} & set(stored)
