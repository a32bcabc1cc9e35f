"""Every configured limit plus one is refused cleanly, and identifying text never leaks.

One server of the module's own (on the session's PostgreSQL and storage) runs with small
limits, metrics on, and its log in a file the PHI check reads back. Per-user rate and
stream limits have their own tests in test_limits_and_metrics.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import urllib3
from google.protobuf import struct_pb2
from grpc import aio
from minio import Minio
from pacs.v1 import (
    annotation_pb2,
    annotation_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    mask_pb2,
    mask_pb2_grpc,
)

from pacs_devstack.ports import free_ports
from pacs_devstack.server import ServerProcess
from pacs_devstack.stack import LocalStack
from tests.support.png import png
from tests.support.projects import create_annotation, create_project
from tests.support.users import ApiUser, login, unique_name

LIMITS = {
    "GRPC_MAX_RECEIVE_BYTES": 256 * 1024,
    "MAX_PAGE_SIZE": 50,
    "MAX_SLICES_PER_REQUEST": 20,
    "MAX_MASK_BYTES": 4096,
    "MAX_ANNOTATION_DATA_BYTES": 2048,
}
# Recognisable text a hospital would never want copied around: in names, labels, free text
# and (digits only, as DICOM requires) in UIDs.
SENTINEL = "PHI-SENTINEL-JANE-DOE-1961"
UID_SENTINEL = "1.2.826.0.1.3680043.987654321.1961"
_http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(10))


@dataclass(frozen=True)
class Server:
    process: ServerProcess
    log_path: Path
    metrics_url: str


@pytest.fixture(scope="module")
def server(live_stack: LocalStack, artifacts_dir: Path) -> Iterator[Server]:
    grpc_port, metrics_port = free_ports(2)
    log_path = artifacts_dir / "limits-phi-server.log"
    env = {
        **live_stack.server_environment(grpc_port),
        **{name: str(value) for name, value in LIMITS.items()},
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(metrics_port),
        # Debug logging on purpose: the strictest place to look for leaks.
        "LOG_LEVEL": "DEBUG",
    }
    process = ServerProcess(env, grpc_port, log_path=log_path)
    process.start()
    try:
        yield Server(process, log_path, f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        process.terminate()


@pytest.fixture(scope="module")
async def channel(server: Server) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(server.process.address) as channel:
        yield channel


@dataclass(frozen=True)
class Target:
    user: ApiUser
    project_id: int
    annotation_id: int
    group_id: int


@pytest.fixture(scope="module")
async def target(live_stack: LocalStack, channel: aio.Channel) -> Target:
    assert live_stack.issuer is not None
    user = await login(channel, live_stack.issuer, unique_name("limits"), admin=True)
    project_id = await create_project(channel, user, f"{SENTINEL}-{uuid.uuid4().hex[:6]}")
    annotation_id = await create_annotation(
        channel, user, project_id, UID_SENTINEL, {"note": SENTINEL},
        series_uid=UID_SENTINEL + ".2",
    )  # fmt: skip
    group = await mask_pb2_grpc.MaskServiceStub(channel).CreateMaskGroup(
        mask_pb2.CreateMaskGroupRequest(
            annotation_id=annotation_id,
            mask_group=mask_pb2.MaskGroup(
                group_name=SENTINEL, model_name=SENTINEL, description=SENTINEL, slice_count=40
            ),
        ),
        metadata=user.metadata(),
    )
    return Target(user, project_id, annotation_id, group.mask_group.id)


def _slices(count: int, size: int = 100) -> list[mask_pb2.SliceUpload]:
    return [
        mask_pb2.SliceUpload(
            slice_index=i, size_bytes=size, label_name=SENTINEL,
            sop_instance_uid=f"{UID_SENTINEL}.{i + 1}",
        )
        for i in range(count)
    ]  # fmt: skip


async def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


async def test_each_limit_is_accepted_at_its_value_and_refused_one_above(
    channel: aio.Channel, target: Target
) -> None:
    annotations = annotation_pb2_grpc.AnnotationServiceStub(channel)
    masks = mask_pb2_grpc.MaskServiceStub(channel)
    meta = target.user.metadata()

    def page(size: int) -> Any:
        return annotations.ListAnnotations(
            annotation_pb2.ListAnnotationsRequest(project_id=target.project_id, page_size=size),
            metadata=meta,
        )

    def tickets(slices: list[mask_pb2.SliceUpload]) -> Any:
        return masks.CreateUploadUrls(
            mask_pb2.CreateUploadUrlsRequest(
                annotation_id=target.annotation_id, group_id=target.group_id, slices=slices
            ),
            metadata=meta,
        )

    def annotation_with(data_bytes: int) -> Any:
        data = struct_pb2.Struct()
        # The limit covers the compact JSON of the data and of the measurements: '{"pad":""}'
        # is 10 bytes around the padding, and the absent measurements are 'null', 4 more.
        data.update({"pad": "x" * (data_bytes - 14)})
        return annotations.CreateAnnotation(
            annotation_pb2.CreateAnnotationRequest(
                annotation=annotation_pb2.Annotation(
                    project_id=target.project_id, study_uid="1.2.3",
                    annotation_type="measurement", annotation_data=data,
                )
            ),
            metadata=meta,
        )  # fmt: skip

    def message_of(size: int) -> Any:
        # A field the server never reads, padded so the whole message is `size` bytes.
        request = annotation_pb2.GetAnnotationRequest(annotation_id=1).SerializeToString()
        padded = request + _unknown_bytes_field(size - len(request))
        call = channel.unary_unary(
            "/pacs.v1.AnnotationService/GetAnnotation",
            request_serializer=lambda _: padded,
            response_deserializer=lambda data: data,
        )
        return call(b"", metadata=meta)

    slices_limit = LIMITS["MAX_SLICES_PER_REQUEST"]
    cases = {
        "page_size": (page(LIMITS["MAX_PAGE_SIZE"]), page(LIMITS["MAX_PAGE_SIZE"] + 1)),
        "slices per call": (
            tickets(_slices(slices_limit)),
            tickets(_slices(slices_limit + 1)),
        ),
        "mask size": (
            tickets(_slices(1, LIMITS["MAX_MASK_BYTES"])),
            tickets(_slices(1, LIMITS["MAX_MASK_BYTES"] + 1)),
        ),
        "annotation_data size": (
            annotation_with(LIMITS["MAX_ANNOTATION_DATA_BYTES"]),
            annotation_with(LIMITS["MAX_ANNOTATION_DATA_BYTES"] + 1),
        ),
    }
    for name, (at_limit, over_limit) in cases.items():
        code, details = await _code(at_limit)
        assert code is grpc.StatusCode.OK, (name, details)
        code, details = await _code(over_limit)
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (name, code, details)
    size_limit = LIMITS["GRPC_MAX_RECEIVE_BYTES"]
    code, _ = await _code(message_of(size_limit - 64))
    assert code in {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND}
    code, _ = await _code(message_of(size_limit + 1))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED


def _unknown_bytes_field(total: int) -> bytes:
    """A length-delimited field number 1000 (unknown to the message) of `total` bytes."""
    tag = bytes([0xC2, 0x3E])  # field 1000, wire type 2
    for length_size in range(1, 6):
        payload = total - len(tag) - length_size
        length = _varint(payload)
        if len(length) == length_size:
            return tag + length + b"\0" * payload
    raise ValueError(total)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


async def test_sentinels_in_names_labels_and_uids_appear_in_no_log_key_url_label_or_error(
    live_stack: LocalStack, server: Server, channel: aio.Channel, target: Target
) -> None:
    masks = mask_pb2_grpc.MaskServiceStub(channel)
    meta = target.user.metadata()
    errors: list[str] = []
    # Calls that succeed, with the sentinels in every free-text and UID field.
    reply = await masks.CreateUploadUrls(
        mask_pb2.CreateUploadUrlsRequest(
            annotation_id=target.annotation_id, group_id=target.group_id,
            slices=_slices(3, len(png(4, 4, 0))),
        ),
        metadata=meta,
    )  # fmt: skip
    urls = [t.url + json.dumps(dict(t.fields)) for t in reply.tickets]
    keys = [t.object_key for t in reply.tickets]
    for ticket in reply.tickets:
        fields: dict[str, Any] = dict(ticket.fields)
        fields["file"] = ("m.png", png(4, 4, 0), "image/png")
        assert _http.request("POST", ticket.url, fields=fields).status == 204
    done = await masks.CompleteUpload(
        mask_pb2.CompleteUploadRequest(
            annotation_id=target.annotation_id, group_id=target.group_id,
            uploads=[mask_pb2.CompletedUpload(upload_id=t.upload_id, width=4, height=4)
                     for t in reply.tickets],
        ),
        metadata=meta,
    )  # fmt: skip
    links = await masks.CreateDownloadUrls(
        mask_pb2.CreateDownloadUrlsRequest(
            annotation_id=target.annotation_id, group_id=target.group_id
        ),
        metadata=meta,
    )
    assert len(links.urls) == len(done.masks) == 3
    urls += [link.url for link in links.urls]
    # Calls that fail, each carrying the sentinels in the offending field.
    for call in (
        masks.CreateUploadUrls(
            mask_pb2.CreateUploadUrlsRequest(
                annotation_id=target.annotation_id, group_id=target.group_id,
                slices=[mask_pb2.SliceUpload(slice_index=0, size_bytes=10,
                                             sop_instance_uid=f"{UID_SENTINEL}.x{SENTINEL}",
                                             label_name=SENTINEL)],
            ),
            metadata=meta,
        ),
        masks.CreateUploadUrls(
            mask_pb2.CreateUploadUrlsRequest(
                annotation_id=target.annotation_id, group_id=target.group_id,
                slices=[mask_pb2.SliceUpload(slice_index=0, size_bytes=10,
                                             content_type=f"image/{SENTINEL}")],
            ),
            metadata=meta,
        ),
        annotation_pb2_grpc.AnnotationServiceStub(channel).ListAnnotations(
            annotation_pb2.ListAnnotationsRequest(
                project_id=target.project_id, study_uid=f"{UID_SENTINEL}.{SENTINEL}"
            ),
            metadata=meta,
        ),
        identity_pb2_grpc.IdentityServiceStub(channel).CreateProject(
            identity_pb2.CreateProjectRequest(project=identity_pb2.Project(name=SENTINEL * 20)),
            metadata=meta,
        ),
    ):  # fmt: skip
        code, details = await _code(call)
        assert code is not grpc.StatusCode.OK
        errors.append(details)

    await asyncio.sleep(0.5)  # the last log lines reach the file
    log_text = server.log_path.read_text()
    metrics_text = _http.request("GET", server.metrics_url).data.decode()
    labels = "\n".join(line for line in metrics_text.splitlines() if "{" in line)
    bucket_keys = "\n".join(_all_keys(live_stack))
    places = {
        "server log": log_text,
        "object keys (issued)": "\n".join(keys),
        "object keys (stored)": bucket_keys,
        "URLs and form fields": "\n".join(urls),
        "metric labels": labels,
        "error messages": "\n".join(errors),
    }
    assert log_text.count("\n") > 10, "the log must have been written to be checked"
    assert labels, "the metrics must have been scraped to be checked"
    for place, text in places.items():
        for sentinel in (SENTINEL, UID_SENTINEL, "987654321"):
            assert sentinel not in text, f"{sentinel!r} found in {place}"


def _all_keys(stack: LocalStack) -> list[str]:
    client = Minio(
        stack.s3_endpoint.split("://", 1)[1], access_key=stack.s3_access_key,
        secret_key=stack.s3_secret_key, secure=False,
    )  # fmt: skip
    bucket = stack.config.bucket
    return [o.object_name or "" for o in client.list_objects(bucket, recursive=True)]
