"""Input a client can send that once cost the server: each is INVALID_ARGUMENT or ABORTED
naming the field, and nothing is written."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import field_mask_pb2, json_format, struct_pb2
from grpc import aio
from pacs.v1 import annotation_pb2, annotation_pb2_grpc, identity_pb2, identity_pb2_grpc

from pacs_devstack.stack import LocalStack
from tests.support.projects import ANNOTATOR, add_member, create_project
from tests.support.users import ApiUser, login, unique_name

STUDY = "1.2.826.0.1.3680043.8.498.7"
CREATE = "/pacs.v1.AnnotationService/CreateAnnotation"


@dataclass(frozen=True)
class Setup:
    writer: ApiUser
    project_id: int


@pytest.fixture(scope="module")
async def setup(live_stack: LocalStack, channel: aio.Channel) -> Setup:
    assert live_stack.issuer is not None
    admin = await login(channel, live_stack.issuer, unique_name("admin"), admin=True)
    writer = await login(channel, live_stack.issuer, unique_name("writer"))
    project_ids = []
    # Two, so that listing the writer's projects one per page issues a real page token.
    for name in ("hostile", "hostile-2"):
        project_id = await create_project(channel, admin, name)
        await add_member(channel, admin, project_id, writer, ANNOTATOR)
        project_ids.append(project_id)
    return Setup(writer, project_ids[0])


def _count(live_stack: LocalStack, project_id: int) -> int:
    with psycopg.connect(live_stack.database_url) as conn:
        row = conn.execute(
            "select count(*) from annotation_annotation where project_id = %s", [project_id]
        ).fetchone()
    assert row is not None
    return int(row[0])


def _create(setup: Setup, data: struct_pb2.Struct) -> annotation_pb2.CreateAnnotationRequest:
    return annotation_pb2.CreateAnnotationRequest(
        annotation=annotation_pb2.Annotation(
            project_id=setup.project_id,
            study_uid=STUDY,
            annotation_type="polygon",
            annotation_data=data,
        )
    )


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    details: str


async def _refused(call: Awaitable[object]) -> Refusal:
    with pytest.raises(aio.AioRpcError) as raised:
        await call
    return Refusal(raised.value.code(), raised.value.details() or "")


# -- wire format by hand: the client libraries refuse to build what these tests send ----


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _nested_request(project_id: int, lists: int) -> bytes:
    value = _varint(2 << 3 | 1) + struct.pack("<d", 1.0)  # Value.number_value
    for _ in range(lists):
        value = _field(6, _field(1, value))  # Value.list_value -> ListValue.values
    data = _field(1, _field(1, b"k") + _field(2, value))  # Struct.fields entry
    annotation = (
        _varint(2 << 3) + _varint(project_id)
        + _field(4, STUDY.encode()) + _field(7, b"polygon") + _field(8, data)
    )  # fmt: skip
    return _field(1, annotation)


async def test_a_request_nested_past_protobufs_limit_is_invalid_argument(
    live_stack: LocalStack, channel: aio.Channel, setup: Setup
) -> None:
    raw = channel.unary_unary(CREATE, request_serializer=None, response_deserializer=None)
    error = await _refused(
        raw(_nested_request(setup.project_id, 90), metadata=setup.writer.metadata())
    )
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith("request:")
    # The same bytes nested a little are a valid request: the refusal is about depth.
    created = annotation_pb2.CreateAnnotationResponse.FromString(
        await raw(_nested_request(setup.project_id, 3), metadata=setup.writer.metadata())
    )
    assert json_format.MessageToDict(created.annotation.annotation_data) == {"k": [[[1.0]]]}


async def test_json_deeper_than_the_limit_is_refused_naming_the_field(
    live_stack: LocalStack, channel: aio.Channel, setup: Setup
) -> None:
    stub = annotation_pb2_grpc.AnnotationServiceStub(channel)
    before = _count(live_stack, setup.project_id)
    value: Any = 1
    for _ in range(40):
        value = [value]
    data = struct_pb2.Struct()
    data.update({"k": value})
    error = await _refused(
        stub.CreateAnnotation(_create(setup, data), metadata=setup.writer.metadata())
    )
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith("annotation.annotation_data:")
    assert "levels deep" in error.details
    assert _count(live_stack, setup.project_id) == before


async def test_cheap_bytes_that_parse_into_many_objects_are_refused(
    live_stack: LocalStack, channel: aio.Channel, setup: Setup
) -> None:
    """The review's example: 330,000 empty lists in under a megabyte."""
    stub = annotation_pb2_grpc.AnnotationServiceStub(channel)
    before = _count(live_stack, setup.project_id)
    data = struct_pb2.Struct()
    data.update({"k": [[] for _ in range(330_000)]})
    error = await _refused(
        stub.CreateAnnotation(_create(setup, data), metadata=setup.writer.metadata())
    )
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith("annotation.annotation_data:")
    assert "JSON values" in error.details
    assert _count(live_stack, setup.project_id) == before


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
async def test_nan_and_infinity_are_refused_naming_the_field(
    live_stack: LocalStack, channel: aio.Channel, setup: Setup, number: float
) -> None:
    stub = annotation_pb2_grpc.AnnotationServiceStub(channel)
    before = _count(live_stack, setup.project_id)
    data = struct_pb2.Struct()
    data["x"] = number
    error = await _refused(
        stub.CreateAnnotation(_create(setup, data), metadata=setup.writer.metadata())
    )
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith("annotation.annotation_data:")
    request = _create(setup, struct_pb2.Struct(fields={"x": struct_pb2.Value(number_value=1)}))
    request.annotation.measurement_values.number_value = number
    error = await _refused(stub.CreateAnnotation(request, metadata=setup.writer.metadata()))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith("annotation.measurement_values:")
    assert _count(live_stack, setup.project_id) == before


@pytest.mark.parametrize("position", [["seven"], [7.5], [None], [2**64]])
async def test_a_hand_made_page_token_is_invalid_argument(
    channel: aio.Channel, setup: Setup, position: list[object]
) -> None:
    identity = identity_pb2_grpc.IdentityServiceStub(channel)
    first = await identity.ListProjects(
        identity_pb2.ListProjectsRequest(page_size=1), metadata=setup.writer.metadata()
    )
    assert first.next_page_token
    # The issued token with only its position changed, as a client could make it.
    issued = json.loads(base64.urlsafe_b64decode(_padded(first.next_page_token)))
    issued["p"] = position
    forged = base64.urlsafe_b64encode(json.dumps(issued).encode()).decode().rstrip("=")
    error = await _refused(
        identity.ListProjects(
            identity_pb2.ListProjectsRequest(page_size=1, page_token=forged),
            metadata=setup.writer.metadata(),
        )
    )
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details == "page_token: is not a token this service issued"


def _padded(token: str) -> str:
    return token + "=" * (-len(token) % 4)


async def test_an_etag_on_the_resource_guards_the_write_like_the_requests(
    channel: aio.Channel, setup: Setup
) -> None:
    """AIP-154: clients put the etag on the resource; a stale one must not win silently."""
    stub = annotation_pb2_grpc.AnnotationServiceStub(channel)
    data = struct_pb2.Struct(fields={"x": struct_pb2.Value(number_value=1)})
    created = await stub.CreateAnnotation(_create(setup, data), metadata=setup.writer.metadata())
    stale = created.annotation.etag
    mask = field_mask_pb2.FieldMask(paths=["viewer_software"])

    def update(
        software: str, *, resource_etag: str = "", etag: str = ""
    ) -> Awaitable[annotation_pb2.UpdateAnnotationResponse]:
        return stub.UpdateAnnotation(
            annotation_pb2.UpdateAnnotationRequest(
                annotation_id=created.annotation.id,
                annotation=annotation_pb2.Annotation(viewer_software=software, etag=resource_etag),
                update_mask=mask,
                etag=etag,
            ),
            metadata=setup.writer.metadata(),
        )

    fresh = await update("OHIF 3.9", resource_etag=stale)
    assert fresh.annotation.etag != stale
    error = await _refused(update("Slicer 5", resource_etag=stale))
    assert error.code is grpc.StatusCode.ABORTED
    error = await _refused(update("Slicer 5", resource_etag=stale, etag=fresh.annotation.etag))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith("annotation.etag:")
    got = await stub.GetAnnotation(
        annotation_pb2.GetAnnotationRequest(annotation_id=created.annotation.id),
        metadata=setup.writer.metadata(),
    )
    assert got.annotation.viewer_software == "OHIF 3.9"


async def test_a_page_of_large_annotations_ends_at_the_byte_budget(
    live_stack: LocalStack, channel: aio.Channel, setup: Setup
) -> None:
    """Six annotations of 900 kB: a page of 50 would hold 5.4 MB of JSON, more than a
    client's default 4 MiB receive limit. The 512 KiB default budget ends each page after
    its first annotation (a page always holds one), so every page reaches a client with
    default settings, and paging still returns every annotation once."""
    stub = annotation_pb2_grpc.AnnotationServiceStub(channel)
    study = STUDY + ".9"
    created = []
    for index in range(6):
        request = _create(setup, struct_pb2.Struct(fields={
            "blob": struct_pb2.Value(string_value=str(index) * 900_000),
        }))  # fmt: skip
        request.annotation.study_uid = study
        made = await stub.CreateAnnotation(request, metadata=setup.writer.metadata())
        created.append(made.annotation.id)
    pages = []
    token = ""
    while True:
        reply = await stub.ListAnnotations(
            annotation_pb2.ListAnnotationsRequest(
                project_id=setup.project_id, study_uid=study, page_size=50, page_token=token
            ),
            metadata=setup.writer.metadata(),
        )
        pages.append([a.id for a in reply.annotations])
        assert all(
            len(a.annotation_data.fields["blob"].string_value) == 900_000 for a in reply.annotations
        )
        token = reply.next_page_token
        if not token:
            break
    assert [len(page) for page in pages] == [1] * 6
    assert sorted(i for page in pages for i in page) == sorted(created)
