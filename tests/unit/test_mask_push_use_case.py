"""PushMasks on in-memory fakes: slices stored as they arrive and recorded together, nothing
left behind when the stream breaks or a slice is refused, and the memory budget of slices in
flight. Nothing here waits on time: held uploads wait on events the tests set."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from pacs_grpc.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from pacs_grpc.domain.masks import Mask, MaskGroup, SliceDeclaration
from pacs_grpc.domain.pacs import PacsValidation
from pacs_grpc.services.mask_push import MaskPush, PushedSlice, PushMessage, PushTarget
from pacs_grpc.services.push_memory import PushMemoryBudget
from tests.fakes.database import FakeTx
from tests.fakes.mask_builders import SERIES, STUDY, MaskWorld, declaration, limits, png
from tests.fakes.masks import queued_keys
from tests.fakes.storage import md5

CHUNK = 24


@pytest.fixture
def m() -> MaskWorld:
    return MaskWorld()


def _messages(
    group: MaskGroup, images: Sequence[bytes], *, first_index: int = 0
) -> list[PushMessage]:
    """The stream a client sends: the target, then each slice's header and its chunks."""
    messages: list[PushMessage] = [PushTarget(group.annotation_id, group.id)]
    for offset, data in enumerate(images):
        header = declaration(first_index + offset, data, md5=md5(data))
        messages.append(PushedSlice(header, 8, 8))
        messages += [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    return messages


class Stream:
    """An async iterator over messages that can break off or stall after `stop_after`."""

    def __init__(
        self, messages: Sequence[PushMessage], *, stop_after: int | None = None,
        error: BaseException | None = None,
    ) -> None:  # fmt: skip
        self.messages = list(messages)
        self.stop_after = len(self.messages) if stop_after is None else stop_after
        self.error = error
        self.sent = 0
        self.stalled = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[PushMessage]:
        for message in self.messages[: self.stop_after]:
            self.sent += 1
            yield message
        if self.error is not None:
            raise self.error
        if self.stop_after < len(self.messages):
            self.stalled.set()
            await asyncio.Event().wait()


async def _push(
    m: MaskWorld, stream: Stream, *, use: MaskPush[FakeTx] | None = None, user: int = 0
) -> tuple[MaskGroup, list[Mask], int]:
    pusher = use or m.push()
    who = [m.annotator, m.viewer, m.admin][user]
    return await pusher.push(m.call("PushMasks", who), aiter(stream))


async def _settle() -> None:
    """Let every task run until it waits on something a test controls (no time passes)."""
    for _ in range(50):
        await asyncio.sleep(0)


def _header(messages: Sequence[PushMessage], n: int) -> int:
    """Where the n-th slice header sits in the stream."""
    return [i for i, x in enumerate(messages) if isinstance(x, PushedSlice)][n]


def _prefix(m: MaskWorld, group: MaskGroup) -> str:
    return f"masks/p{m.project.id}/a{group.annotation_id}/g{group.id}/"


async def test_pushed_slices_are_stored_and_recorded_together(m: MaskWorld) -> None:
    group = m.seed_group(3)
    images = [png(0, 100), png(1, 50), png(2, 24)]
    call = m.call("PushMasks")

    done, masks, received = await m.push().push(call, aiter(Stream(_messages(group, images))))

    assert (done.completed_slices, received) == (3, sum(len(i) for i in images))
    assert [x.slice_index for x in masks] == [0, 1, 2]
    for mask, image in zip(masks, images, strict=True):
        assert mask.file_path.startswith(_prefix(m, group) + "pushed/")
        stored = m.storage.latest(mask.file_path)
        assert stored is not None
        assert (stored.data, mask.checksum, mask.object_version) == (
            image,
            md5(image),
            stored.version_id,
        )
        # Every pushed object names its push, as tickets' uploads do.
        assert stored.upload_id is not None
    assert m.masks.all_masks() == masks
    assert m.audit == [m.ok(call, resource_type="mask", resource_ids=tuple(x.id for x in masks))]


async def test_a_stream_that_breaks_off_leaves_no_object_and_no_mask(m: MaskWorld) -> None:
    group = m.seed_group(3)
    messages = _messages(group, [png(0, 100), png(1, 100), png(2, 100)])
    # The first slice in full and part of the second, then the connection drops.
    broken = Stream(messages, stop_after=9, error=ConnectionResetError("peer went away"))

    with pytest.raises(ConnectionResetError):
        await _push(m, broken)

    assert m.storage.stored_keys(_prefix(m, group)) == []
    assert m.masks.all_masks() == []
    # What was written is also queued, for a worker that stored after the delete.
    assert len(queued_keys(m.w.db)) == 2
    assert m.storage.deletes == [queued_keys(m.w.db)]
    assert m.audit == []


async def test_a_cancelled_push_cleans_up_what_it_stored(m: MaskWorld) -> None:
    group = m.seed_group(3)
    messages = _messages(group, [png(0, 100), png(1, 100)])
    stalled = Stream(messages, stop_after=len(messages) - 1)
    pushing = asyncio.create_task(_push(m, stalled))
    await stalled.stalled.wait()
    await _settle()
    assert len(m.storage.stored_keys(_prefix(m, group))) == 1  # the first slice, stored in full

    pushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pushing

    assert m.storage.stored_keys(_prefix(m, group)) == []
    assert len(queued_keys(m.w.db)) == 2
    assert m.masks.all_masks() == []


async def test_cleanup_with_storage_down_queues_every_object_for_the_sweeper(
    m: MaskWorld,
) -> None:
    group = m.seed_group(2)
    messages = _messages(group, [png(0, 100), png(1, 100)])

    class StorageDiesToo(Stream):
        async def __aiter__(self) -> AsyncIterator[PushMessage]:
            # Slice 0 and the next header: slice 0's object is stored.
            for message in self.messages[:8]:
                yield message
            m.storage.down = True
            raise ConnectionResetError

    with pytest.raises(ConnectionResetError):
        await _push(m, StorageDiesToo(messages))

    (stored,) = m.storage.stored_keys(_prefix(m, group))
    assert stored in queued_keys(m.w.db)
    m.storage.down = False
    await m.sweeper().sweep_once()
    assert m.storage.stored_keys(_prefix(m, group)) == []


async def test_a_checksum_that_differs_from_the_declared_md5_refuses_the_push(
    m: MaskWorld,
) -> None:
    group = m.seed_group(3)
    messages = _messages(group, [png(0), png(1), png(2)])
    messages[_header(messages, 1)] = PushedSlice(declaration(1, png(1), md5="0" * 32), 8, 8)

    with pytest.raises(FailedPrecondition, match=r"^slice 1: checksum differs from md5$"):
        await _push(m, Stream(messages))

    assert m.storage.stored_keys(_prefix(m, group)) == []
    assert m.masks.all_masks() == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ("first is a slice", "target"),
        ("no slices", "slice"),
        ("chunk before header", "slice"),
        ("no md5", "slice[0].md5"),
        ("zero width", "slice[0].width"),
        ("repeated index", "slice[1].slice_index"),
        ("short", "slice[1]"),
        ("long", "slice[0]"),
        ("not a png", "slice[0]"),
    ],
)
async def test_a_bad_stream_is_refused_naming_the_field_and_leaves_nothing(
    m: MaskWorld, change: str, field: str
) -> None:
    group = m.seed_group(3)
    images = [png(0), png(1)]
    messages = _messages(group, images)
    if change == "first is a slice":
        messages = messages[1:]
    elif change == "no slices":
        messages = messages[:1]
    elif change == "chunk before header":
        messages = [messages[0], b"x", *messages[1:]]
    elif change == "no md5":
        messages[1] = PushedSlice(declaration(0, images[0]), 8, 8)
    elif change == "zero width":
        messages[1] = PushedSlice(declaration(0, images[0], md5=md5(images[0])), 0, 8)
    elif change == "repeated index":
        second = PushedSlice(declaration(0, images[1], md5=md5(images[1])), 8, 8)
        messages[_header(messages, 1)] = second
    elif change == "short":
        messages[-1] = messages[-1][:-1]  # type: ignore[index]
    elif change == "long":
        messages.insert(4, b"extra")
    else:
        gif = b"GIF89a" + images[0][6:]
        messages[1:4] = [PushedSlice(declaration(0, gif, md5=md5(gif)), 8, 8), gif[:24], gif[24:]]

    with pytest.raises(InvalidArgument) as refused:
        await _push(m, Stream(messages))

    assert refused.value.field == field
    assert m.storage.stored_keys() == []
    assert m.masks.all_masks() == []


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (declaration(2, png(1), md5=md5(png(1))), "slice[1].slice_index"),
        (
            declaration(1, png(1), md5=md5(png(1)), content_type="text/html"),
            "slice[1].content_type",
        ),
    ],
)
async def test_a_bad_header_later_in_the_stream_is_named_by_its_position(
    m: MaskWorld, bad: SliceDeclaration, field: str
) -> None:
    group = m.seed_group(2)
    messages = _messages(group, [png(0), png(1)])
    messages[_header(messages, 1)] = PushedSlice(bad, 8, 8)
    with pytest.raises(InvalidArgument) as refused:
        await _push(m, Stream(messages))
    assert m.storage.stored_keys() == []
    assert refused.value.field == field


async def test_a_slice_recorded_before_refuses_the_push_and_removes_its_objects(
    m: MaskWorld,
) -> None:
    group = m.seed_group(2)
    m.seed_masks(group, [1])
    seeded = m.storage.stored_keys()
    with pytest.raises(FailedPrecondition, match="already has a recorded mask"):
        await _push(m, Stream(_messages(group, [png(0), png(1)])))
    assert m.storage.stored_keys() == seeded
    assert len(m.masks.all_masks()) == 1


async def test_a_viewer_may_not_push_and_nothing_is_read_past_the_target(m: MaskWorld) -> None:
    group = m.seed_group(1)
    stream = Stream(_messages(group, [png(0)]))
    with pytest.raises(PermissionDenied):
        await _push(m, stream, user=1)
    assert stream.sent == 1
    assert m.storage.calls == []


async def test_an_unreachable_pacs_refuses_an_enforced_push_before_anything_is_stored(
    m: MaskWorld,
) -> None:
    m.pacs.add_series(STUDY, SERIES, images=1)
    m.pacs.unreachable = True
    group = m.seed_group(1)
    stream = Stream(_messages(group, [png(0)]))
    with pytest.raises(Unavailable):
        await _push(m, stream, use=m.push(pacs=PacsValidation.ENFORCE))
    assert stream.sent == 1
    assert m.storage.calls == []


async def test_an_enforced_push_binds_slices_to_their_images(m: MaskWorld) -> None:
    series = m.pacs.add_series(STUDY, SERIES, images=2)
    group = m.seed_group(2)
    _, masks, _ = await _push(
        m, Stream(_messages(group, [png(0), png(1)])), use=m.push(pacs=PacsValidation.ENFORCE)
    )
    lowest = min(series.instances, key=lambda i: i.position or ())
    assert masks[0].sop_instance_uid == lowest.sop_instance_uid


# -- memory and flow control -------------------------------------------------------------------


async def test_a_slice_larger_than_the_users_budget_is_refused_with_a_retry_hint(
    m: MaskWorld,
) -> None:
    group = m.seed_group(1)
    pusher = m.push(mask_limits=limits(push_memory_per_user=50))
    with pytest.raises(ResourceExhausted) as refused:
        await _push(m, Stream(_messages(group, [png(0, 64)])), use=pusher)
    assert refused.value.retry_after_seconds == 2.0
    assert m.storage.calls == []


async def test_a_users_second_slice_waits_for_the_first_to_be_stored(m: MaskWorld) -> None:
    group = m.seed_group(3)
    pusher = m.push(mask_limits=limits(push_memory_per_user=64))
    m.storage.hold_puts = asyncio.Event()
    stream = Stream(_messages(group, [png(0, 64), png(1, 64), png(2, 64)]))
    pushing = asyncio.create_task(_push(m, stream, use=pusher))
    await _settle()
    # Slice 0 read and being stored; slice 1's header read, its bytes not: no room for them.
    assert stream.sent == 1 + (1 + 3) + 1
    assert m.storage.calls == ["put_stream"]

    m.storage.hold_puts.set()
    _, masks, _ = await pushing
    assert len(masks) == 3


async def test_one_users_slices_in_flight_refuse_another_users_push_over_the_process_budget(
    m: MaskWorld,
) -> None:
    group, other = m.seed_group(1), m.seed_group(1)
    pusher = m.push(mask_limits=limits(push_memory_per_process=100, push_memory_per_user=100))
    m.storage.hold_puts = asyncio.Event()
    holding = asyncio.create_task(_push(m, Stream(_messages(group, [png(0, 64)])), use=pusher))
    await _settle()

    with pytest.raises(ResourceExhausted):
        await _push(m, Stream(_messages(other, [png(1, 64)])), use=pusher, user=2)

    m.storage.hold_puts.set()
    await holding
    # The memory came back: the same push now goes through.
    _, masks, _ = await _push(m, Stream(_messages(other, [png(1, 64)])), use=pusher, user=2)
    assert len(masks) == 1


async def test_memory_of_a_refused_push_is_given_back(m: MaskWorld) -> None:
    group = m.seed_group(2)
    budget_limits = limits(push_memory_per_process=1000, push_memory_per_user=1000)
    pusher = m.push(mask_limits=budget_limits)
    messages = _messages(group, [png(0, 64), png(1, 64)])
    messages[_header(messages, 1)] = PushedSlice(declaration(1, png(1, 64), md5="0" * 32), 8, 8)
    with pytest.raises(FailedPrecondition):
        await _push(m, Stream(messages), use=pusher)
    budget: PushMemoryBudget = pusher._push_memory
    assert (budget.in_use, budget.used_by(m.annotator.id)) == (0, 0)


async def test_at_most_the_parallel_limit_of_slices_is_stored_at_once(m: MaskWorld) -> None:
    group = m.seed_group(5)
    pusher = m.push(mask_limits=limits(push_parallel_slices=2))
    m.storage.hold_puts = asyncio.Event()
    stream = Stream(_messages(group, [png(i, 24) for i in range(5)]))
    pushing = asyncio.create_task(_push(m, stream, use=pusher))
    await _settle()
    assert m.storage.calls == ["put_stream", "put_stream"]
    # Two slices read and being stored, and the third's header.
    assert stream.sent == 1 + 2 * 2 + 1
    m.storage.hold_puts.set()
    _, masks, _ = await pushing
    assert [x.slice_index for x in masks] == [0, 1, 2, 3, 4]


async def test_the_recording_transaction_locks_the_group_against_a_concurrent_delete(
    m: MaskWorld,
) -> None:
    """Without the lock, a DeleteMaskGroup committed between the check and the insert would
    leave the insert a foreign-key violation (INTERNAL) instead of NOT_FOUND."""
    group = m.seed_group(1)
    await _push(m, Stream(_messages(group, [png(0)])))
    assert ("mask_group", group.id) in m.w.db.committed[-1].locks
