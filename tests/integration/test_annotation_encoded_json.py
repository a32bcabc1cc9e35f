"""The JSON fields' encoding kept from the write (migration 0010) never disagrees with the JSON.

Reads answer with the Struct and Value bytes stored at the write; these tests check that what
comes back is what was written, through every path that changes the JSON: the API's create
and update, and a writer that changes the JSON columns without knowing about the encoding.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from grpc import aio
from pacs.v1 import annotation_pb2, annotation_pb2_grpc
from psycopg.types.json import Jsonb

from pacs_devstack.stack import LocalStack
from tests.support.projects import ANNOTATOR, new_team
from tests.support.users import ApiUser, unique_name

STUDY = "1.2.826.0.1.3680043.10.999.77"


@pytest.fixture(scope="module")
def stub(channel: aio.Channel) -> annotation_pb2_grpc.AnnotationServiceAsyncStub:
    return annotation_pb2_grpc.AnnotationServiceStub(channel)


@pytest.fixture(scope="module")
async def team(live_stack: LocalStack, channel: aio.Channel) -> tuple[int, ApiUser]:
    assert live_stack.issuer is not None
    made = await new_team(channel, live_stack.issuer, unique_name("enc"), {"annotator": ANNOTATOR})
    return made.project_id, made["annotator"]


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def _stored(database_url: str, annotation_id: int) -> tuple[bytes | None, bytes | None]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "select annotation_data_encoded, measurement_values_encoded"
            " from annotation_annotation where id = %s",
            [annotation_id],
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def _point(project_id: int) -> annotation_pb2.Annotation:
    """A point whose data and measurements both come with the bytes kept."""
    sent = annotation_pb2.Annotation(
        project_id=project_id, study_uid=STUDY, annotation_type="point",
        annotation_data=_struct({"x": 1}),
    )  # fmt: skip
    sent.measurement_values.number_value = 3
    return sent


async def _create(
    stub: annotation_pb2_grpc.AnnotationServiceAsyncStub,
    user: ApiUser,
    sent: annotation_pb2.Annotation,
) -> annotation_pb2.Annotation:
    reply = await stub.CreateAnnotation(
        annotation_pb2.CreateAnnotationRequest(annotation=sent), metadata=user.metadata()
    )
    return reply.annotation


async def _get(
    stub: annotation_pb2_grpc.AnnotationServiceAsyncStub, user: ApiUser, annotation_id: int
) -> annotation_pb2.Annotation:
    reply = await stub.GetAnnotation(
        annotation_pb2.GetAnnotationRequest(annotation_id=annotation_id), metadata=user.metadata()
    )
    return reply.annotation


async def test_a_create_keeps_the_bytes_it_received_and_reads_answer_with_them(
    stub: annotation_pb2_grpc.AnnotationServiceAsyncStub,
    team: tuple[int, ApiUser],
    live_stack: LocalStack,
) -> None:
    project_id, user = team
    data = _struct({"points": [[1.5, 2.25], [3, 4]], "label": "lesion", "meta": {"n": None}})
    sent = annotation_pb2.Annotation(
        project_id=project_id, study_uid=STUDY, annotation_type="polygon", annotation_data=data
    )
    sent.measurement_values.list_value.values.add().number_value = 7.5
    created = await _create(stub, user, sent)

    data_bytes, measurement_bytes = _stored(live_stack.database_url, created.id)
    assert data_bytes is not None
    assert struct_pb2.Struct.FromString(data_bytes) == data
    assert measurement_bytes is not None
    assert struct_pb2.Value.FromString(measurement_bytes) == sent.measurement_values
    got = await _get(stub, user, created.id)
    assert got.annotation_data == data
    assert got.measurement_values == sent.measurement_values

    listed = await stub.ListAnnotations(
        annotation_pb2.ListAnnotationsRequest(project_id=project_id, study_uid=STUDY),
        metadata=user.metadata(),
    )
    assert got in list(listed.annotations)


async def test_updates_replace_or_keep_the_bytes_with_their_json(
    stub: annotation_pb2_grpc.AnnotationServiceAsyncStub,
    team: tuple[int, ApiUser],
    live_stack: LocalStack,
) -> None:
    project_id, user = team
    created = await _create(stub, user, _point(project_id))
    kept_data, kept_measurements = _stored(live_stack.database_url, created.id)

    async def update(paths: list[str], annotation: annotation_pb2.Annotation) -> None:
        await stub.UpdateAnnotation(
            annotation_pb2.UpdateAnnotationRequest(
                annotation_id=created.id,
                annotation=annotation,
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            ),
            metadata=user.metadata(),
        )

    # Another field changes: the JSON and its bytes stay as they were.
    await update(["viewer_software"], annotation_pb2.Annotation(viewer_software="OHIF 3.9"))
    assert _stored(live_stack.database_url, created.id) == (kept_data, kept_measurements)

    # New JSON: new bytes, and reads answer with the new content.
    replacement = _struct({"x": 2, "label": "moved"})
    await update(["annotation_data"], annotation_pb2.Annotation(annotation_data=replacement))
    data_bytes, measurement_bytes = _stored(live_stack.database_url, created.id)
    assert data_bytes is not None
    assert struct_pb2.Struct.FromString(data_bytes) == replacement
    assert measurement_bytes == kept_measurements
    assert (await _get(stub, user, created.id)).annotation_data == replacement

    # Measurements cleared (in the mask, absent from the message): no bytes, no value.
    await update(["measurement_values"], annotation_pb2.Annotation())
    assert _stored(live_stack.database_url, created.id)[1] is None
    assert not (await _get(stub, user, created.id)).HasField("measurement_values")


async def test_json_changed_by_another_writer_drops_the_stale_bytes(
    stub: annotation_pb2_grpc.AnnotationServiceAsyncStub,
    team: tuple[int, ApiUser],
    live_stack: LocalStack,
) -> None:
    project_id, user = team
    created = await _create(stub, user, _point(project_id))

    # A data fix in SQL, say, that knows nothing of the encoded columns.
    with psycopg.connect(live_stack.database_url) as conn:
        conn.execute(
            "update annotation_annotation set annotation_data = %s, measurement_values = %s"
            " where id = %s",
            [Jsonb({"x": 5, "fixed": True}), Jsonb([1, 2]), created.id],
        )
    assert _stored(live_stack.database_url, created.id) == (None, None)
    got = await _get(stub, user, created.id)
    assert got.annotation_data == _struct({"x": 5, "fixed": True})
    assert [v.number_value for v in got.measurement_values.list_value.values] == [1, 2]
