"""Issue 12 on the real stack: upload tickets that can only upload, paged download URLs, the
PushMasks memory budget and the PNG check of pushed slices.

One server of this module's own runs beside the shared live stack's (same PostgreSQL and
SeaweedFS) with PUT tickets opted in, the PNG check on, small pages and small budgets; the live
stack's server runs the defaults, so it is the one that refuses PUT tickets.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import urllib3
from grpc import aio
from minio import Minio
from minio.commonconfig import REPLACE, CopySource
from pacs.v1 import (
    mask_pb2,
    mask_pb2_grpc,
)

from pacs_devstack.ports import free_port
from pacs_devstack.server import ServerProcess
from pacs_devstack.stack import LocalStack
from pacs_grpc.adapters.storage.objects import ObjectStore
from pacs_grpc.config import StorageSettings
from tests.support.png import png
from tests.support.projects import ANNOTATOR, create_annotation, new_team
from tests.support.users import ApiUser, unique_name

POST = mask_pb2.UPLOAD_METHOD_POST
PUT = mask_pb2.UPLOAD_METHOD_PUT
PAGE = 4  # MAX_SLICES_PER_REQUEST of this module's server
DOWNLOADS_PER_MINUTE = 30
MIB = 1024 * 1024
USER_BUDGET = 16 * MIB
PROCESS_BUDGET = 32 * MIB
# A declared size at which a slice charges the most a slice can hold in memory (12 MiB).
BIG_SLICE = 12 * MIB
_http = urllib3.PoolManager(maxsize=8, retries=False, timeout=urllib3.Timeout(10))


@dataclass(frozen=True)
class Project:
    writer: ApiUser
    project_id: int
    annotation_id: int


@pytest.fixture(scope="module")
def server(live_stack: LocalStack, artifacts_dir: Path) -> Iterator[ServerProcess]:
    port = free_port()
    env = {
        **live_stack.server_environment(port),
        "ALLOW_PUT_UPLOADS": "true",
        "CHECK_PNG_SIGNATURE": "true",
        "MAX_SLICES_PER_REQUEST": str(PAGE),
        "RATE_LIMIT_DOWNLOADS_PER_MINUTE": str(DOWNLOADS_PER_MINUTE),
        "PUSH_MEMORY_BUDGET_BYTES": str(PROCESS_BUDGET),
        "PUSH_MEMORY_BUDGET_PER_USER_BYTES": str(USER_BUDGET),
    }
    process = ServerProcess(env, port, log_path=artifacts_dir / "mask-hardening-server.log")
    process.start()
    try:
        yield process
    finally:
        process.terminate()


@pytest.fixture(scope="module")
async def opted(server: ServerProcess) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(server.address) as channel:
        yield channel


@pytest.fixture(scope="module")
def storage(live_stack: LocalStack) -> Minio:
    """The server's own storage key: stands in for storage that honoured a forged request."""
    assert live_stack.s3 is not None
    return live_stack.s3.client()


async def _project(live_stack: LocalStack, channel: aio.Channel, name: str) -> Project:
    assert live_stack.issuer is not None
    team = await new_team(channel, live_stack.issuer, unique_name(name), {name: ANNOTATOR})
    annotation_id = await create_annotation(channel, team[name], team.project_id, "1.2.3", {"k": 1})
    return Project(team[name], team.project_id, annotation_id)


@pytest.fixture(scope="module")
async def ours(live_stack: LocalStack, opted: aio.Channel) -> Project:
    return await _project(live_stack, opted, "attacker")


@pytest.fixture(scope="module")
async def theirs(live_stack: LocalStack, opted: aio.Channel) -> Project:
    return await _project(live_stack, opted, "victim")


async def _group(channel: aio.Channel, project: Project, count: int) -> int:
    reply = await mask_pb2_grpc.MaskServiceStub(channel).CreateMaskGroup(
        mask_pb2.CreateMaskGroupRequest(
            annotation_id=project.annotation_id, mask_group=mask_pb2.MaskGroup(slice_count=count)
        ),
        metadata=project.writer.metadata(),
    )
    return reply.mask_group.id


async def _tickets(
    channel: aio.Channel, project: Project, group_id: int, images: list[bytes], method: Any,
    *, md5: bool = True,
) -> list[mask_pb2.UploadTicket]:  # fmt: skip
    reply = await mask_pb2_grpc.MaskServiceStub(channel).CreateUploadUrls(
        mask_pb2.CreateUploadUrlsRequest(
            annotation_id=project.annotation_id, group_id=group_id, method=method,
            slices=[
                mask_pb2.SliceUpload(
                    slice_index=i, content_type="image/png", size_bytes=len(image),
                    md5=hashlib.md5(image).hexdigest() if md5 else "",
                )
                for i, image in enumerate(images)
            ],
        ),
        metadata=project.writer.metadata(),
    )  # fmt: skip
    return list(reply.tickets)


def _upload(ticket: mask_pb2.UploadTicket, body: bytes) -> int:
    if ticket.method == POST:
        fields: dict[str, Any] = {**ticket.fields, "file": ("mask.png", body, "image/png")}
        return int(_http.request("POST", ticket.url, fields=fields).status)
    headers = {**ticket.headers, "Content-Type": "image/png"}
    return int(_http.request("PUT", ticket.url, body=body, headers=headers).status)


async def _complete(
    channel: aio.Channel, project: Project, group_id: int, tickets: list[mask_pb2.UploadTicket],
    request_id: str | None = None,
) -> mask_pb2.CompleteUploadResponse:  # fmt: skip
    return await mask_pb2_grpc.MaskServiceStub(channel).CompleteUpload(
        mask_pb2.CompleteUploadRequest(
            annotation_id=project.annotation_id, group_id=group_id,
            uploads=[mask_pb2.CompletedUpload(upload_id=t.upload_id, width=8, height=8)
                     for t in tickets],
        ),
        metadata=project.writer.metadata(request_id),
    )  # fmt: skip


def _retry_after(error: aio.AioRpcError) -> float:
    trailers: dict[str, Any] = dict(error.trailing_metadata() or ())  # type: ignore[arg-type]
    return float(trailers["retry-after"])


def _recorded(live_stack: LocalStack, group_id: int) -> int:
    with psycopg.connect(live_stack.database_url) as conn:
        row = conn.execute(
            "select count(*) from annotation_mask where mask_group_id = %s", [group_id]
        ).fetchone()
    assert row is not None
    return int(row[0])


async def _their_recorded_mask(opted: aio.Channel, theirs: Project) -> mask_pb2.Mask:
    """A mask of the victim's project, uploaded the normal way (a POST ticket)."""
    secret = png(8, 8, 77)
    group_id = await _group(opted, theirs, 1)
    (ticket,) = await _tickets(opted, theirs, group_id, [secret], POST)
    assert _upload(ticket, secret) == 204
    (mask,) = (await _complete(opted, theirs, group_id, [ticket])).masks
    return mask


# -- upload tickets can only upload ------------------------------------------------------------


async def test_put_tickets_are_refused_unless_the_operator_opts_in(
    live_stack: LocalStack, channel: aio.Channel
) -> None:
    project = await _project(live_stack, channel, "defaults")
    group_id = await _group(channel, project, 1)
    with pytest.raises(aio.AioRpcError) as raised:
        await _tickets(channel, project, group_id, [png(8, 8, 1)], PUT)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (raised.value.details() or "").startswith("method: ")
    # The default (unspecified) and POST still issue tickets, which carry the ticket's id.
    (ticket,) = await _tickets(channel, project, group_id, [png(8, 8, 1)], 0)
    assert ticket.method == POST
    assert ticket.fields["x-amz-meta-upload-id"] == ticket.upload_id


async def test_a_post_form_without_the_tickets_upload_id_is_refused_by_storage(
    opted: aio.Channel, ours: Project
) -> None:
    image = png(8, 8, 2)
    group_id = await _group(opted, ours, 1)
    (ticket,) = await _tickets(opted, ours, group_id, [image], POST)
    fields: dict[str, Any] = {k: v for k, v in ticket.fields.items() if "upload-id" not in k}
    fields["file"] = ("mask.png", image, "image/png")
    assert _http.request("POST", ticket.url, fields=fields).status == 403
    fields["x-amz-meta-upload-id"] = str(uuid.uuid4())
    assert _http.request("POST", ticket.url, fields=fields).status == 403


async def test_opted_in_put_tickets_need_a_declared_md5_and_still_upload(
    live_stack: LocalStack, opted: aio.Channel, ours: Project
) -> None:
    images = [png(8, 8, seed) for seed in range(3)]
    group_id = await _group(opted, ours, 3)
    with pytest.raises(aio.AioRpcError) as raised:
        await _tickets(opted, ours, group_id, images, PUT, md5=False)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (raised.value.details() or "").startswith("slices[0].md5: ")
    tickets = await _tickets(opted, ours, group_id, images, PUT)
    assert [_upload(t, images[t.slice_index]) for t in tickets] == [200] * 3
    done = await _complete(opted, ours, group_id, tickets)
    assert done.mask_group.status == mask_pb2.MASK_GROUP_STATUS_COMPLETE
    assert _recorded(live_stack, group_id) == 3


async def test_completion_refuses_short_and_missing_put_uploads_and_records_nothing(
    live_stack: LocalStack, opted: aio.Channel, ours: Project
) -> None:
    images = [png(16, 16, seed) for seed in range(3)]
    group_id = await _group(opted, ours, 3)
    tickets = await _tickets(opted, ours, group_id, images, PUT)
    assert _upload(tickets[0], images[0]) == 200
    assert _upload(tickets[1], images[1][:-10]) == 200  # a PUT ticket cannot stop a short body
    request_id = str(uuid.uuid4())
    with pytest.raises(aio.AioRpcError) as raised:
        await _complete(opted, ours, group_id, tickets, request_id)
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    details = raised.value.details() or ""
    assert "slice 1: size is" in details
    assert "slice 2: no object was uploaded" in details
    assert _recorded(live_stack, group_id) == 0
    with psycopg.connect(live_stack.database_url) as conn:
        audited = conn.execute(
            "select outcome, error_code from audit_log where request_id = %s", [request_id]
        ).fetchall()
    assert audited == [("error", "FAILED_PRECONDITION")]


async def test_a_forged_copy_through_a_put_ticket_is_never_recorded(
    live_stack: LocalStack, opted: aio.Channel, ours: Project, theirs: Project, storage: Minio
) -> None:
    victim = await _their_recorded_mask(opted, theirs)
    bucket = live_stack.config.bucket
    # What the attacker declares: the victim's size (easy to learn or guess) and the MD5 of
    # some bytes; the copy is what they want recorded.
    placeholder = b"\x89PNG\r\n\x1a\n" + bytes(victim.file_size - 8)
    group_id = await _group(opted, ours, 1)
    (ticket,) = await _tickets(opted, ours, group_id, [placeholder], PUT)

    # The request the MinIO class of bugs turns into a server-side copy. SeaweedFS checks
    # every x-amz-* header against the signature, which covers only host: refused.
    forged = _http.request(
        "PUT", ticket.url, body=b"",
        headers={"x-amz-copy-source": f"/{bucket}/{victim.file_path}"},
    )  # fmt: skip
    assert forged.status == 403
    with pytest.raises(aio.AioRpcError) as raised:
        await _complete(opted, ours, group_id, [ticket])
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION

    # Storage that did honour it: the copy keeps the source's metadata, its upload id.
    storage.copy_object(bucket, ticket.object_key, CopySource(bucket, victim.file_path))
    with pytest.raises(aio.AioRpcError) as raised:
        await _complete(opted, ours, group_id, [ticket])
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "not uploaded through this ticket" in (raised.value.details() or "")

    # A copy that replaces the metadata with this ticket's id still carries the source's
    # checksum, which differs from the MD5 declared before the upload.
    storage.copy_object(
        bucket, ticket.object_key, CopySource(bucket, victim.file_path),
        metadata={"x-amz-meta-upload-id": ticket.upload_id, "Content-Type": "image/png"},
        metadata_directive=REPLACE,
    )  # fmt: skip
    copied = storage.stat_object(bucket, ticket.object_key)
    assert (copied.etag or "").strip('"') == victim.checksum  # the copy really is the victim's mask
    with pytest.raises(aio.AioRpcError) as raised:
        await _complete(opted, ours, group_id, [ticket])
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "checksum differs" in (raised.value.details() or "")
    assert _recorded(live_stack, group_id) == 0


# -- download URLs, a page at a time ----------------------------------------------------------


async def _push(
    channel: aio.Channel, project: Project, group_id: int, images: list[bytes],
    *, content_type: str = "image/png", start: int = 0,
) -> mask_pb2.PushMasksResponse:  # fmt: skip
    """Push `images` as slices start, start + 1, ..."""

    async def messages() -> AsyncIterator[mask_pb2.PushMasksRequest]:
        yield mask_pb2.PushMasksRequest(
            target=mask_pb2.PushTarget(annotation_id=project.annotation_id, group_id=group_id)
        )
        for index, image in enumerate(images):
            yield mask_pb2.PushMasksRequest(
                slice=mask_pb2.PushSliceHeader(
                    slice_index=start + index, content_type=content_type, size_bytes=len(image),
                    width=8, height=8, md5=hashlib.md5(image).hexdigest(),
                )
            )  # fmt: skip
            yield mask_pb2.PushMasksRequest(chunk=image)

    return await mask_pb2_grpc.MaskServiceStub(channel).PushMasks(
        messages(), metadata=project.writer.metadata(), timeout=60
    )


async def _push_all(
    channel: aio.Channel, project: Project, group_id: int, images: list[bytes]
) -> None:
    """A push carries at most PAGE slices here (MAX_SLICES_PER_REQUEST)."""
    for start in range(0, len(images), PAGE):
        await _push(channel, project, group_id, images[start : start + PAGE], start=start)


def _download_request(project: Project, group_id: int, **kwargs: Any) -> Any:
    return mask_pb2.CreateDownloadUrlsRequest(
        annotation_id=project.annotation_id, group_id=group_id, **kwargs
    )


async def test_download_urls_of_a_whole_group_come_a_page_at_a_time(
    opted: aio.Channel, ours: Project
) -> None:
    images = [png(8, 8, seed) for seed in range(2 * PAGE + 1)]
    group_id = await _group(opted, ours, len(images))
    await _push_all(opted, ours, group_id, images)
    stub = mask_pb2_grpc.MaskServiceStub(opted)
    pages: list[list[int]] = []
    token = ""
    while True:
        reply = await stub.CreateDownloadUrls(
            _download_request(ours, group_id, page_token=token), metadata=ours.writer.metadata()
        )
        pages.append([u.slice_index for u in reply.urls])
        token = reply.next_page_token
        if not token:
            break
    assert pages == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    last = reply.urls[-1]
    assert _http.request("GET", last.url).data == images[8]
    smaller = await stub.CreateDownloadUrls(
        _download_request(ours, group_id, page_size=3), metadata=ours.writer.metadata()
    )
    assert [u.slice_index for u in smaller.urls] == [0, 1, 2]
    assert smaller.next_page_token


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"page_size": PAGE + 1}, "page_size"),
        ({"page_size": -1}, "page_size"),
        ({"page_token": "not-a-token"}, "page_token"),
        # A well-formed token whose position is not a slice index.
        ({"page_token": "eyJmIjoiMCIsInAiOlsieCJdfQ"}, "page_token"),
        ({"mask_ids": [1], "page_token": "x"}, "page_token"),
        ({"mask_ids": list(range(1, PAGE + 2))}, "mask_ids"),
    ],
)
async def test_bad_download_paging_names_the_field(
    opted: aio.Channel, ours: Project, kwargs: dict[str, Any], field: str
) -> None:
    group_id = await _group(opted, ours, 1)
    with pytest.raises(aio.AioRpcError) as raised:
        await mask_pb2_grpc.MaskServiceStub(opted).CreateDownloadUrls(
            _download_request(ours, group_id, **kwargs), metadata=ours.writer.metadata()
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (raised.value.details() or "").startswith(f"{field}: ")


async def test_a_page_token_of_another_group_is_refused(opted: aio.Channel, ours: Project) -> None:
    images = [png(8, 8, seed) for seed in range(PAGE + 1)]
    first, second = await _group(opted, ours, len(images)), await _group(opted, ours, 1)
    await _push_all(opted, ours, first, images)
    stub = mask_pb2_grpc.MaskServiceStub(opted)
    token = (
        await stub.CreateDownloadUrls(
            _download_request(ours, first), metadata=ours.writer.metadata()
        )
    ).next_page_token
    assert token
    with pytest.raises(aio.AioRpcError) as raised:
        await stub.CreateDownloadUrls(
            _download_request(ours, second, page_token=token), metadata=ours.writer.metadata()
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_download_urls_are_rate_limited_per_user(
    live_stack: LocalStack, opted: aio.Channel
) -> None:
    flooder = await _project(live_stack, opted, "flooder")
    other = await _project(live_stack, opted, "patient")
    groups = {p.writer.username: await _group(opted, p, 1) for p in (flooder, other)}
    stub = mask_pb2_grpc.MaskServiceStub(opted)

    async def ask(project: Project) -> Any:
        request = _download_request(project, groups[project.writer.username])
        return await stub.CreateDownloadUrls(request, metadata=project.writer.metadata())

    granted = 0
    refusal: aio.AioRpcError | None = None
    for _ in range(DOWNLOADS_PER_MINUTE + 10):
        try:
            await ask(flooder)
        except aio.AioRpcError as error:
            refusal = error
            break
        granted += 1
    assert refusal is not None
    assert refusal.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    # A minute's worth at once, plus what refilled (one every 2 s) while the calls ran.
    assert DOWNLOADS_PER_MINUTE <= granted <= DOWNLOADS_PER_MINUTE + 5
    assert _retry_after(refusal) >= 1
    await ask(other)  # other users are not counted


# -- PNG check of pushed slices ---------------------------------------------------------------


async def test_a_pushed_slice_that_is_not_a_png_is_refused_with_the_check_on(
    live_stack: LocalStack, opted: aio.Channel, ours: Project
) -> None:
    group_id = await _group(opted, ours, 2)
    not_png = b"GIF89a" + bytes(200)
    with pytest.raises(aio.AioRpcError) as raised:
        await _push(opted, ours, group_id, [png(8, 8, 1), not_png])
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "slice[1]: content is not a PNG image"
    with pytest.raises(aio.AioRpcError) as raised:
        await _push(opted, ours, group_id, [b"\x89PN"])  # shorter than the signature
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _recorded(live_stack, group_id) == 0
    assert (await _push(opted, ours, group_id, [png(8, 8, 1), png(8, 8, 2)])).masks


async def test_a_pushed_object_carries_its_upload_id(
    live_stack: LocalStack, opted: aio.Channel, ours: Project, storage: Minio
) -> None:
    group_id = await _group(opted, ours, 1)
    (mask,) = (await _push(opted, ours, group_id, [png(8, 8, 5)])).masks
    stat = storage.stat_object(live_stack.config.bucket, mask.file_path)
    assert stat.metadata is not None
    assert {k.lower(): v for k, v in stat.metadata.items()}["x-amz-meta-upload-id"]


# -- PushMasks memory budget ------------------------------------------------------------------


async def _hold_a_big_slice(
    channel: aio.Channel, project: Project, group_id: int
) -> tuple[Any, asyncio.Event]:
    """A push whose first slice (declared BIG_SLICE bytes) has begun and then stalls."""
    stop = asyncio.Event()

    async def messages() -> AsyncIterator[mask_pb2.PushMasksRequest]:
        yield mask_pb2.PushMasksRequest(
            target=mask_pb2.PushTarget(annotation_id=project.annotation_id, group_id=group_id)
        )
        yield mask_pb2.PushMasksRequest(
            slice=mask_pb2.PushSliceHeader(
                slice_index=0, content_type="image/png", size_bytes=BIG_SLICE, width=8,
                height=8, md5="0" * 32,
            )
        )  # fmt: skip
        yield mask_pb2.PushMasksRequest(chunk=png(8, 8, 1))
        await stop.wait()

    call = mask_pb2_grpc.MaskServiceStub(channel).PushMasks(
        messages(), metadata=project.writer.metadata(), timeout=60
    )
    return call, stop


async def _refused_for_memory(
    channel: aio.Channel, project: Project, group_id: int
) -> aio.AioRpcError:
    call, stop = await _hold_a_big_slice(channel, project, group_id)
    try:
        with pytest.raises(aio.AioRpcError) as raised:
            await asyncio.wait_for(call, 10)
    finally:
        stop.set()
        call.cancel()
    return raised.value


async def test_pushed_slices_in_flight_are_bounded_per_user_and_per_process(
    live_stack: LocalStack, opted: aio.Channel
) -> None:
    first_user = await _project(live_stack, opted, "budget-a")
    second_user = await _project(live_stack, opted, "budget-b")
    third_user = await _project(live_stack, opted, "budget-c")
    held = []
    try:
        held.append(await _hold_a_big_slice(opted, first_user, await _group(opted, first_user, 1)))
        await asyncio.sleep(1.0)  # its header read: 12 MiB of the process's 32 reserved
        # The same user again: 24 MiB would fit the process, not the user's 16.
        refused = await _refused_for_memory(opted, first_user, await _group(opted, first_user, 1))
        assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _retry_after(refused) >= 1
        held.append(
            await _hold_a_big_slice(opted, second_user, await _group(opted, second_user, 1))
        )
        await asyncio.sleep(1.0)  # 24 MiB reserved
        # A user with nothing in flight: within its own 16 MiB, over the process's 32.
        refused = await _refused_for_memory(opted, third_user, await _group(opted, third_user, 1))
        assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for call, stop in held:
            stop.set()
            call.cancel()
    # Ended streams give their share back: a small push goes through again.
    group_id = await _group(opted, third_user, 1)
    codes = []
    for _ in range(50):
        try:
            reply = await _push(opted, third_user, group_id, [png(8, 8, 9)])
        except aio.AioRpcError as error:
            codes.append(error.code())
            await asyncio.sleep(0.2)
            continue
        assert len(reply.masks) == 1
        break
    else:
        pytest.fail("the memory of ended pushes was never given back")
    assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED}


async def test_read_head_reads_the_version_asked_for_not_the_latest(
    live_stack: LocalStack, storage: Minio
) -> None:
    """What completion's PNG check relies on: it reads the version it checked and records."""
    bucket = live_stack.config.bucket
    key = f"masks/test-versions/{uuid.uuid4()}"
    first = storage.put_object(bucket, key, io.BytesIO(png(8, 8, 1)), len(png(8, 8, 1)))
    storage.put_object(bucket, key, io.BytesIO(b"GIF89a-overwritten"), 18)
    store = ObjectStore(
        StorageSettings(
            endpoint=live_stack.s3_endpoint, access_key=live_stack.s3_access_key,
            secret_key=live_stack.s3_secret_key, bucket=bucket,
        )
    )  # fmt: skip
    try:
        assert await store.read_head(key, 8, version_id=first.version_id) == png(8, 8, 1)[:8]
        assert await store.read_head(key, 8) == b"GIF89a-o"
    finally:
        assert await store.delete([key]) == []
        store.close()
