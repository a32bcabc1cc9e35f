"""MaskService on the real stack: tickets, uploads straight to SeaweedFS, verified completion."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import pytest
import urllib3
from grpc import aio
from pacs.v1 import (
    mask_pb2,
    mask_pb2_grpc,
)

from pacs_devstack.stack import LocalStack
from tests.support.png import png
from tests.support.projects import ANNOTATOR, VIEWER, create_annotation, new_team
from tests.support.users import ApiUser, login, unique_name

POST = mask_pb2.UPLOAD_METHOD_POST
_http = urllib3.PoolManager(maxsize=32, retries=False, timeout=urllib3.Timeout(10))


@dataclass
class Setup:
    writer: ApiUser
    viewer: ApiUser
    outsider: ApiUser
    project_id: int
    annotation_id: int
    # A platform administrator: an owner of every project (purges).
    admin: ApiUser


@pytest.fixture(scope="module")
def masks(channel: aio.Channel) -> mask_pb2_grpc.MaskServiceAsyncStub:
    return mask_pb2_grpc.MaskServiceStub(channel)


@pytest.fixture(scope="module")
async def setup(live_stack: LocalStack, channel: aio.Channel) -> Setup:
    assert live_stack.issuer is not None
    team = await new_team(
        channel, live_stack.issuer, unique_name("seg"), {"pipeline": ANNOTATOR, "viewer": VIEWER}
    )
    outsider = await login(channel, live_stack.issuer, unique_name("outsider"))
    annotation_id = await create_annotation(
        channel, team["pipeline"], team.project_id, "1.2.840.1", {"model": "lung-seg"},
        series_uid="1.2.840.1.2",
    )  # fmt: skip
    return Setup(
        team["pipeline"], team["viewer"], outsider, team.project_id, annotation_id, team.admin
    )


async def _group(
    masks: mask_pb2_grpc.MaskServiceAsyncStub, setup: Setup, slice_count: int
) -> mask_pb2.MaskGroup:
    reply = await masks.CreateMaskGroup(
        mask_pb2.CreateMaskGroupRequest(
            annotation_id=setup.annotation_id,
            mask_group=mask_pb2.MaskGroup(
                group_name="lungs", model_name="nnU-Net", version="2.1", modality="CT",
                slice_count=slice_count,
            ),
        ),
        metadata=setup.writer.metadata(),
    )  # fmt: skip
    assert reply.mask_group.status == mask_pb2.MASK_GROUP_STATUS_PENDING
    return reply.mask_group


def _slices(images: list[bytes], *, with_md5: bool = True) -> list[mask_pb2.SliceUpload]:
    return [
        mask_pb2.SliceUpload(
            slice_index=index,
            label_name="lung",
            content_type="image/png",
            size_bytes=len(image),
            md5=hashlib.md5(image).hexdigest() if with_md5 else "",
        )
        for index, image in enumerate(images)
    ]


def _upload(ticket: mask_pb2.UploadTicket, body: bytes, content_type: str = "image/png") -> int:
    if ticket.method == POST:
        fields: dict[str, Any] = dict(ticket.fields)
        fields["file"] = ("mask.png", body, content_type)
        response = _http.request("POST", ticket.url, fields=fields)
    else:
        headers = dict(ticket.headers)
        headers["Content-Type"] = content_type
        response = _http.request("PUT", ticket.url, body=body, headers=headers)
    return int(response.status)


async def _upload_all(tickets: list[mask_pb2.UploadTicket], images: list[bytes]) -> list[int]:
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(16) as pool:
        return list(
            await asyncio.gather(
                *(loop.run_in_executor(pool, _upload, t, images[t.slice_index]) for t in tickets)
            )
        )


def _completion(
    tickets: list[mask_pb2.UploadTicket], setup: Setup, group_id: int
) -> mask_pb2.CompleteUploadRequest:
    return mask_pb2.CompleteUploadRequest(
        annotation_id=setup.annotation_id,
        group_id=group_id,
        uploads=[
            mask_pb2.CompletedUpload(upload_id=t.upload_id, width=16, height=16) for t in tickets
        ],
    )


@pytest.mark.slow
# PUT tickets are opt-in (ALLOW_PUT_UPLOADS): test_mask_hardening.py uploads through them.
@pytest.mark.parametrize("method", [POST])
async def test_a_series_uploads_through_tickets_and_downloads_identical_bytes(
    masks: mask_pb2_grpc.MaskServiceAsyncStub, setup: Setup, method: int
) -> None:
    count = 100 if method == POST else 20
    images = [png(16, 16, seed) for seed in range(count)]
    group = await _group(masks, setup, count)
    tickets = (
        await masks.CreateUploadUrls(
            mask_pb2.CreateUploadUrlsRequest(
                annotation_id=setup.annotation_id, group_id=group.id, slices=_slices(images),
                method=method,  # type: ignore[arg-type]
            ),
            metadata=setup.writer.metadata(),
        )
    ).tickets  # fmt: skip
    assert [t.slice_index for t in tickets] == list(range(count))
    keys = [t.object_key for t in tickets]
    assert all(k.startswith(f"masks/p{setup.project_id}/a{setup.annotation_id}/") for k in keys)
    assert all("lung" not in k and "1.2.840" not in k for k in keys)
    assert await _upload_all(list(tickets), images) == [204 if method == POST else 200] * count
    done = await masks.CompleteUpload(
        _completion(list(tickets), setup, group.id), metadata=setup.writer.metadata()
    )
    assert done.mask_group.status == mask_pb2.MASK_GROUP_STATUS_COMPLETE
    assert done.mask_group.completed_slices == count
    assert sorted(m.slice_index for m in done.masks) == list(range(count))
    assert all(m.checksum == hashlib.md5(images[m.slice_index]).hexdigest() for m in done.masks)
    listed: list[mask_pb2.Mask] = []
    token = ""
    while True:
        page = await masks.ListMasks(
            mask_pb2.ListMasksRequest(
                annotation_id=setup.annotation_id, group_id=group.id, page_size=30, page_token=token
            ),
            metadata=setup.viewer.metadata(),
        )
        listed += page.masks
        token = page.next_page_token
        if not token:
            break
    assert [m.slice_index for m in listed] == list(range(count))
    links = await masks.CreateDownloadUrls(
        mask_pb2.CreateDownloadUrlsRequest(annotation_id=setup.annotation_id, group_id=group.id),
        metadata=setup.viewer.metadata(),
    )
    assert len(links.urls) == count
    for link in links.urls[:10]:
        response = _http.request("GET", link.url)
        assert response.status == 200
        assert response.headers["Content-Type"] == "image/png"
        assert response.data == images[link.slice_index]


async def test_duplicate_and_concurrent_completions_record_one_row_per_slice(
    live_stack: LocalStack, masks: mask_pb2_grpc.MaskServiceAsyncStub, setup: Setup
) -> None:
    images = [png(16, 16, seed) for seed in range(5)]
    group = await _group(masks, setup, 5)
    tickets = list(
        (
            await masks.CreateUploadUrls(
                mask_pb2.CreateUploadUrlsRequest(
                    annotation_id=setup.annotation_id, group_id=group.id, slices=_slices(images)
                ),
                metadata=setup.writer.metadata(),
            )
        ).tickets
    )
    await _upload_all(tickets, images)
    request = _completion(tickets, setup, group.id)
    replies = await asyncio.gather(
        *(masks.CompleteUpload(request, metadata=setup.writer.metadata()) for _ in range(100))
    )
    assert len({tuple(sorted(m.id for m in r.masks)) for r in replies}) == 1
    with psycopg.connect(live_stack.database_url) as conn:
        count = conn.execute(
            "select count(*) from annotation_mask where mask_group_id = %s", [group.id]
        ).fetchone()
    assert count == (5,)


async def test_what_was_recorded_survives_an_overwrite_through_the_same_ticket(
    masks: mask_pb2_grpc.MaskServiceAsyncStub, setup: Setup
) -> None:
    original, forged = png(16, 16, 1), png(16, 16, 2)
    assert len(original) == len(forged)
    group = await _group(masks, setup, 1)
    (ticket,) = (
        await masks.CreateUploadUrls(
            mask_pb2.CreateUploadUrlsRequest(
                annotation_id=setup.annotation_id, group_id=group.id, slices=_slices([original])
            ),
            metadata=setup.writer.metadata(),
        )
    ).tickets
    assert _upload(ticket, original) == 204
    done = await masks.CompleteUpload(
        _completion([ticket], setup, group.id), metadata=setup.writer.metadata()
    )
    assert _upload(ticket, forged) in (204, 403)  # the POST policy is still valid: same size
    (link,) = (
        await masks.CreateDownloadUrls(
            mask_pb2.CreateDownloadUrlsRequest(
                annotation_id=setup.annotation_id, group_id=group.id, mask_ids=[done.masks[0].id]
            ),
            metadata=setup.viewer.metadata(),
        )
    ).urls
    assert _http.request("GET", link.url).data == original


@pytest.mark.parametrize(
    ("slices", "extra", "field"),
    [
        ([mask_pb2.SliceUpload(slice_index=5, size_bytes=10)], {}, "slices[0].slice_index"),
        (
            [mask_pb2.SliceUpload(slice_index=0, size_bytes=10)] * 2,
            {},
            "slices[1].slice_index",
        ),
        ([mask_pb2.SliceUpload(slice_index=0, size_bytes=0)], {}, "slices[0].size_bytes"),
        (
            [mask_pb2.SliceUpload(slice_index=0, size_bytes=10, content_type="text/html")],
            {},
            "slices[0].content_type",
        ),
        (
            [mask_pb2.SliceUpload(slice_index=0, size_bytes=10, sop_instance_uid="1.2.abc")],
            {},
            "slices[0].sop_instance_uid",
        ),
        ([mask_pb2.SliceUpload(slice_index=0, size_bytes=10, md5="xyz")], {}, "slices[0].md5"),
        (
            [mask_pb2.SliceUpload(slice_index=0, size_bytes=10)],
            {"ttl_seconds": 3601},
            "ttl_seconds",
        ),
        ([mask_pb2.SliceUpload(slice_index=0, size_bytes=10)], {"ttl_seconds": -1}, "ttl_seconds"),
        ([mask_pb2.SliceUpload(slice_index=i, size_bytes=10) for i in range(1001)], {}, "slices"),
        ([], {}, "slices"),
    ],
)
async def test_bad_ticket_requests_name_the_field(
    masks: mask_pb2_grpc.MaskServiceAsyncStub,
    setup: Setup,
    slices: list[mask_pb2.SliceUpload],
    extra: dict[str, int],
    field: str,
) -> None:
    group = await _group(masks, setup, 2 if len(slices) < 1000 else 2000)
    with pytest.raises(aio.AioRpcError) as raised:
        await masks.CreateUploadUrls(
            mask_pb2.CreateUploadUrlsRequest(
                annotation_id=setup.annotation_id,
                group_id=group.id,
                slices=slices,
                **extra,  # type: ignore[arg-type]
            ),
            metadata=setup.writer.metadata(),
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (raised.value.details() or "").startswith(field + ":")


async def test_groups_are_bound_to_their_project(
    masks: mask_pb2_grpc.MaskServiceAsyncStub, setup: Setup
) -> None:
    group = await _group(masks, setup, 1)
    get = mask_pb2.GetMaskGroupRequest(annotation_id=setup.annotation_id, group_id=group.id)
    assert (
        await masks.GetMaskGroup(get, metadata=setup.viewer.metadata())
    ).mask_group.id == group.id
    for request, user, code in (
        (get, setup.outsider, grpc.StatusCode.NOT_FOUND),
        (
            mask_pb2.GetMaskGroupRequest(
                annotation_id=setup.annotation_id + 999_999, group_id=group.id
            ),
            setup.writer,
            grpc.StatusCode.NOT_FOUND,
        ),
    ):
        with pytest.raises(aio.AioRpcError) as raised:
            await masks.GetMaskGroup(request, metadata=user.metadata())
        assert raised.value.code() is code
    with pytest.raises(aio.AioRpcError) as denied:
        await masks.DeleteMaskGroup(
            mask_pb2.DeleteMaskGroupRequest(annotation_id=setup.annotation_id, group_id=group.id),
            metadata=setup.viewer.metadata(),
        )
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_purging_a_group_queues_its_objects(
    live_stack: LocalStack, masks: mask_pb2_grpc.MaskServiceAsyncStub, setup: Setup
) -> None:
    images = [png(16, 16, seed) for seed in range(2)]
    group = await _group(masks, setup, 3)
    tickets = list(
        (
            await masks.CreateUploadUrls(
                mask_pb2.CreateUploadUrlsRequest(
                    annotation_id=setup.annotation_id,
                    group_id=group.id,
                    slices=[*_slices(images), mask_pb2.SliceUpload(slice_index=2, size_bytes=99)],
                ),
                metadata=setup.writer.metadata(),
            )
        ).tickets
    )
    await _upload_all(tickets[:2], images)
    done = await masks.CompleteUpload(
        _completion(tickets[:2], setup, group.id), metadata=setup.writer.metadata()
    )
    await masks.DeleteMaskGroup(
        # A purge: the trash would keep everything until its retention ends.
        mask_pb2.DeleteMaskGroupRequest(
            annotation_id=setup.annotation_id, group_id=group.id, purge=True
        ),
        metadata=setup.admin.metadata(),
    )
    expected = {m.file_path for m in done.masks} | {tickets[2].object_key}
    expected |= {t.object_key for t in tickets[:2]}  # queued when frozen at completion
    with psycopg.connect(live_stack.database_url) as conn:
        queued = {
            row[0]
            for row in conn.execute(
                "select object_key from storage_deletion_outbox where object_key = any(%s)",
                [list(expected)],
            )
        }
    assert queued == expected


@pytest.mark.slow
async def test_deleted_objects_and_expired_tickets_leave_storage(
    live_stack: LocalStack, masks: mask_pb2_grpc.MaskServiceAsyncStub, setup: Setup
) -> None:
    """The server's own sweeper (every second in the test stack) empties the outbox."""
    assert live_stack.s3 is not None
    images = [png(16, 16, seed) for seed in range(2)]
    group = await _group(masks, setup, 2)
    tickets = list(
        (
            await masks.CreateUploadUrls(
                mask_pb2.CreateUploadUrlsRequest(
                    annotation_id=setup.annotation_id, group_id=group.id, slices=_slices(images)
                ),
                metadata=setup.writer.metadata(),
            )
        ).tickets
    )
    await _upload_all(tickets, images)
    await masks.CompleteUpload(
        _completion(tickets, setup, group.id), metadata=setup.writer.metadata()
    )
    prefix = f"masks/p{setup.project_id}/a{setup.annotation_id}/g{group.id}/"
    client = live_stack.s3.client()

    def stored() -> list[str]:
        return [o.object_name for o in client.list_objects("pacs-masks", prefix, recursive=True)]

    assert len(stored()) >= 2
    await masks.DeleteMaskGroup(
        # A purge: the trash would keep everything until its retention ends.
        mask_pb2.DeleteMaskGroupRequest(
            annotation_id=setup.annotation_id, group_id=group.id, purge=True
        ),
        metadata=setup.admin.metadata(),
    )
    for _ in range(100):
        if not stored():
            break
        await asyncio.sleep(0.1)
    assert stored() == []


async def test_create_mask_group_with_a_request_id_is_idempotent(
    masks: mask_pb2_grpc.MaskServiceAsyncStub, setup: Setup
) -> None:
    request = mask_pb2.CreateMaskGroupRequest(
        annotation_id=setup.annotation_id,
        mask_group=mask_pb2.MaskGroup(slice_count=4, model_name="retry-model"),
        request_id=f"group-{uuid.uuid4().hex}",
    )
    replies = await asyncio.gather(
        *(masks.CreateMaskGroup(request, metadata=setup.writer.metadata()) for _ in range(10))
    )
    assert len({r.mask_group.id for r in replies}) == 1
    request.mask_group.slice_count = 5
    with pytest.raises(aio.AioRpcError) as raised:
        await masks.CreateMaskGroup(request, metadata=setup.writer.metadata())
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (raised.value.details() or "").startswith("request_id:")
