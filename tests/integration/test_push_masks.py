"""PushMasks: slices streamed through the service into storage, all or nothing."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import psycopg
import pytest
from grpc import aio
from pacs.v1 import (
    mask_pb2,
    mask_pb2_grpc,
)

from pacs_devstack.stack import LocalStack
from tests.support.png import png
from tests.support.projects import create_annotation, create_project
from tests.support.users import ApiUser, login, unique_name

CHUNK = 64 * 1024


@pytest.fixture(scope="module")
async def target(live_stack: LocalStack, channel: aio.Channel) -> tuple[ApiUser, int, int]:
    assert live_stack.issuer is not None
    admin = await login(channel, live_stack.issuer, unique_name("admin"), admin=True)
    project_id = await create_project(channel, admin, unique_name("push"))
    annotation_id = await create_annotation(channel, admin, project_id, "1.2.3", {"k": 1})
    return admin, project_id, annotation_id


async def _group(channel: aio.Channel, user: ApiUser, annotation_id: int, count: int) -> int:
    reply = await mask_pb2_grpc.MaskServiceStub(channel).CreateMaskGroup(
        mask_pb2.CreateMaskGroupRequest(
            annotation_id=annotation_id, mask_group=mask_pb2.MaskGroup(slice_count=count)
        ),
        metadata=user.metadata(),
    )
    return reply.mask_group.id


def _messages(
    annotation_id: int, group_id: int, images: list[bytes], *, stop_after_bytes: int | None = None
) -> Iterator[mask_pb2.PushMasksRequest]:
    yield mask_pb2.PushMasksRequest(
        target=mask_pb2.PushTarget(annotation_id=annotation_id, group_id=group_id)
    )
    sent = 0
    for index, image in enumerate(images):
        yield mask_pb2.PushMasksRequest(
            slice=mask_pb2.PushSliceHeader(
                slice_index=index, content_type="image/png", size_bytes=len(image),
                width=64, height=64, md5=hashlib.md5(image).hexdigest(),
            )
        )  # fmt: skip
        for start in range(0, len(image), CHUNK):
            if stop_after_bytes is not None and sent >= stop_after_bytes:
                return
            chunk = image[start : start + CHUNK]
            sent += len(chunk)
            yield mask_pb2.PushMasksRequest(chunk=chunk)


def _objects_under(live_stack: LocalStack, prefix: str) -> list[str]:
    assert live_stack.s3 is not None
    client = live_stack.s3.client()
    return [o.object_name for o in client.list_objects("pacs-masks", prefix=prefix, recursive=True)]


@pytest.mark.slow
async def test_a_hundred_slices_pushed_are_recorded_and_stored_intact(
    live_stack: LocalStack, channel: aio.Channel, target: tuple[ApiUser, int, int]
) -> None:
    user, project_id, annotation_id = target
    images = [png(64, 64, seed, padding=100_000) for seed in range(100)]
    group_id = await _group(channel, user, annotation_id, 100)
    stub = mask_pb2_grpc.MaskServiceStub(channel)
    reply = await stub.PushMasks(
        _messages(annotation_id, group_id, images), metadata=user.metadata(), timeout=120
    )
    assert reply.mask_group.status == mask_pb2.MASK_GROUP_STATUS_COMPLETE
    assert reply.bytes_received == sum(len(i) for i in images)
    assert [m.slice_index for m in reply.masks] == list(range(100))
    prefix = f"masks/p{project_id}/a{annotation_id}/g{group_id}/"
    assert len(_objects_under(live_stack, prefix)) == 100
    assert live_stack.s3 is not None
    stored = live_stack.s3.client().get_object("pacs-masks", reply.masks[7].file_path).read()
    assert stored == images[7]


async def test_a_push_that_breaks_off_records_nothing_and_leaves_no_objects(
    live_stack: LocalStack, channel: aio.Channel, target: tuple[ApiUser, int, int]
) -> None:
    user, project_id, annotation_id = target
    images = [png(64, 64, seed, padding=200_000) for seed in range(5)]
    group_id = await _group(channel, user, annotation_id, 5)
    stub = mask_pb2_grpc.MaskServiceStub(channel)
    sent_enough = asyncio.Event()

    async def stalls_midway() -> AsyncIterator[mask_pb2.PushMasksRequest]:
        # Part of the series, then silence: a pipeline whose connection drops.
        for message in _messages(annotation_id, group_id, images, stop_after_bytes=600_000):
            yield message
        sent_enough.set()
        await asyncio.Event().wait()

    call = stub.PushMasks(stalls_midway(), metadata=user.metadata(), timeout=30)
    await asyncio.wait_for(sent_enough.wait(), 10)
    await asyncio.sleep(0.5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    prefix = f"masks/p{project_id}/a{annotation_id}/g{group_id}/"
    for _ in range(50):
        if not _objects_under(live_stack, prefix):
            break
        await asyncio.sleep(0.1)
    assert _objects_under(live_stack, prefix) == []
    with psycopg.connect(live_stack.database_url) as conn:
        count = conn.execute(
            "select count(*) from annotation_mask where mask_group_id = %s", [group_id]
        ).fetchone()
    assert count == (0,)


@pytest.mark.parametrize("fault", ["short", "checksum", "repeat"])
async def test_a_bad_slice_refuses_the_whole_push(
    live_stack: LocalStack, channel: aio.Channel, target: tuple[ApiUser, int, int], fault: str
) -> None:
    user, project_id, annotation_id = target
    images = [png(64, 64, seed) for seed in range(3)]
    group_id = await _group(channel, user, annotation_id, 3)
    messages = list(_messages(annotation_id, group_id, images))
    if fault == "short":
        messages[-1] = mask_pb2.PushMasksRequest(chunk=messages[-1].chunk[:-5])
    elif fault == "checksum":
        messages[1].slice.md5 = "0" * 32
    else:
        messages[-2].slice.slice_index = 0
    stub = mask_pb2_grpc.MaskServiceStub(channel)
    request_id = str(uuid.uuid4())
    with pytest.raises(aio.AioRpcError) as raised:
        await stub.PushMasks(iter(messages), metadata=user.metadata(request_id), timeout=30)
    expected = {
        "short": grpc.StatusCode.INVALID_ARGUMENT,
        "checksum": grpc.StatusCode.FAILED_PRECONDITION,
        "repeat": grpc.StatusCode.INVALID_ARGUMENT,
    }[fault]
    assert raised.value.code() is expected
    assert _objects_under(live_stack, f"masks/p{project_id}/a{annotation_id}/g{group_id}/") == []
    with psycopg.connect(live_stack.database_url) as conn:
        audited = conn.execute(
            "select outcome, error_code from audit_log where request_id = %s", [request_id]
        ).fetchall()
    assert audited == [("error", expected.name)]
