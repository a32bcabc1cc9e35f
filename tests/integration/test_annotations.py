"""AnnotationService on the real stack."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from grpc import aio
from pacs.v1 import annotation_pb2, annotation_pb2_grpc

from pacs_devstack.stack import LocalStack
from tests.support.projects import ANNOTATOR, VIEWER, create_project, new_team
from tests.support.users import ApiUser, login, unique_name

STUDY = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
SERIES = STUDY + ".1"
INSTANCE = SERIES + ".7"


@dataclass
class Team:
    project_id: int
    other_project_id: int
    annotator: ApiUser
    viewer: ApiUser
    outsider: ApiUser
    # A platform administrator: an owner of every project.
    admin: ApiUser


@pytest.fixture(scope="module")
def stub(channel: aio.Channel) -> annotation_pb2_grpc.AnnotationServiceAsyncStub:
    return annotation_pb2_grpc.AnnotationServiceStub(channel)


@pytest.fixture(scope="module")
async def team(live_stack: LocalStack, channel: aio.Channel) -> Team:
    assert live_stack.issuer is not None
    ct = await new_team(
        channel, live_stack.issuer, unique_name("ct"), {"annotator": ANNOTATOR, "viewer": VIEWER}
    )
    other_project_id = await create_project(channel, ct.admin, unique_name("other"))
    outsider = await login(channel, live_stack.issuer, unique_name("outsider"))
    return Team(ct.project_id, other_project_id, ct["annotator"], ct["viewer"], outsider, ct.admin)


def _annotation(project_id: int, **overrides: object) -> annotation_pb2.Annotation:
    data = struct_pb2.Struct()
    data.update({"points": [[10, 20], [30, 40]], "label": "nodule"})
    fields: dict[str, object] = {
        "project_id": project_id,
        "study_uid": STUDY,
        "series_uid": SERIES,
        "instance_uid": INSTANCE,
        "annotation_type": "polyline",
        "annotation_data": data,
        "viewer_software": "OHIF 3.9",
    }
    fields.update(overrides)
    message = annotation_pb2.Annotation(**fields)  # type: ignore[arg-type]
    message.measurement_values.number_value = 12.5
    return message


async def _create(
    stub: annotation_pb2_grpc.AnnotationServiceAsyncStub,
    user: ApiUser,
    annotation: annotation_pb2.Annotation,
) -> annotation_pb2.Annotation:
    reply = await stub.CreateAnnotation(
        annotation_pb2.CreateAnnotationRequest(annotation=annotation), metadata=user.metadata()
    )
    return reply.annotation


def _count(database_url: str, query: str, *params: object) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(query, list(params)).fetchone()
    assert row is not None
    return int(row[0])


async def test_create_then_get_round_trips_every_field(
    stub: annotation_pb2_grpc.AnnotationServiceAsyncStub, team: Team
) -> None:
    created = await _create(stub, team.annotator, _annotation(team.project_id))
    assert created.id > 0
    assert created.user_id == team.annotator.user_id
    assert created.etag == "v1"
    got = await stub.GetAnnotation(
        annotation_pb2.GetAnnotationRequest(annotation_id=created.id),
        metadata=team.viewer.metadata(),
    )
    assert got.annotation == created
    assert got.annotation.annotation_data["label"] == "nodule"
    assert got.annotation.measurement_values.number_value == 12.5
    assert (got.annotation.study_uid, got.annotation.series_uid, got.annotation.instance_uid) == (
        STUDY,
        SERIES,
        INSTANCE,
    )


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"study_uid": ""}, "annotation.study_uid"),
        ({"study_uid": "1.02.3"}, "annotation.study_uid"),
        ({"series_uid": "1.2." + "3" * 70}, "annotation.series_uid"),
        ({"series_uid": "", "instance_uid": INSTANCE}, "annotation.series_uid"),
        ({"instance_uid": "1.2.abc"}, "annotation.instance_uid"),
        ({"annotation_type": "scribble"}, "annotation.annotation_type"),
        ({"viewer_software": "v" * 129}, "annotation.viewer_software"),
        ({"project_id": 0}, "annotation.project_id"),
    ],
)
async def test_bad_input_names_the_field_and_writes_nothing(
    live_stack: LocalStack,
    stub: annotation_pb2_grpc.AnnotationServiceAsyncStub,
    team: Team,
    overrides: dict[str, object],
    field: str,
) -> None:
    before = _count(live_stack.database_url, "select count(*) from annotation_annotation")
    fields = dict(overrides)
    project_id = int(fields.pop("project_id", team.project_id))  # type: ignore[call-overload]
    with pytest.raises(aio.AioRpcError) as raised:
        await _create(stub, team.annotator, _annotation(project_id, **fields))
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (raised.value.details() or "").startswith(field + ":")
    for value in overrides.values():
        if isinstance(value, str) and value:
            assert value not in (raised.value.details() or "")
    assert _count(live_stack.database_url, "select count(*) from annotation_annotation") == before


async def test_missing_or_oversized_annotation_data_is_refused(
    stub: annotation_pb2_grpc.AnnotationServiceAsyncStub, team: Team
) -> None:
    without = _annotation(team.project_id)
    without.ClearField("annotation_data")
    huge = _annotation(team.project_id)
    huge.annotation_data.update({"blob": "x" * (1024 * 1024)})
    for message in (without, huge):
        with pytest.raises(aio.AioRpcError) as raised:
            await _create(stub, team.annotator, message)
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert (raised.value.details() or "").startswith("annotation.annotation_data:")


async def test_twenty_concurrent_retries_create_one_row(
    live_stack: LocalStack, stub: annotation_pb2_grpc.AnnotationServiceAsyncStub, team: Team
) -> None:
    request = annotation_pb2.CreateAnnotationRequest(
        annotation=_annotation(team.project_id, viewer_software=unique_name("retry")),
        request_id=unique_name("req"),
    )
    replies = await asyncio.gather(
        *(stub.CreateAnnotation(request, metadata=team.annotator.metadata()) for _ in range(20))
    )
    assert len({r.annotation.id for r in replies}) == 1
    assert (
        _count(
            live_stack.database_url,
            "select count(*) from annotation_annotation where viewer_software = %s",
            request.annotation.viewer_software,
        )
        == 1
    )


async def test_stale_etag_is_aborted_and_changes_nothing(
    stub: annotation_pb2_grpc.AnnotationServiceAsyncStub, team: Team
) -> None:
    created = await _create(stub, team.annotator, _annotation(team.project_id))
    update = annotation_pb2.UpdateAnnotationRequest(
        annotation_id=created.id,
        annotation=annotation_pb2.Annotation(viewer_software="Horos 4"),
        update_mask=field_mask_pb2.FieldMask(paths=["viewer_software"]),
        etag=created.etag,
    )
    first = await stub.UpdateAnnotation(update, metadata=team.annotator.metadata())
    assert first.annotation.etag == "v2"
    assert first.annotation.viewer_software == "Horos 4"
    assert first.annotation.annotation_data == created.annotation_data
    update.annotation.viewer_software = "Weasis"
    with pytest.raises(aio.AioRpcError) as raised:
        await stub.UpdateAnnotation(update, metadata=team.annotator.metadata())
    assert raised.value.code() is grpc.StatusCode.ABORTED
    assert (raised.value.details() or "").startswith("etag:")
    with pytest.raises(aio.AioRpcError) as deleted:
        await stub.DeleteAnnotation(
            annotation_pb2.DeleteAnnotationRequest(annotation_id=created.id, etag="v1"),
            metadata=team.annotator.metadata(),
        )
    assert deleted.value.code() is grpc.StatusCode.ABORTED
    current = await stub.GetAnnotation(
        annotation_pb2.GetAnnotationRequest(annotation_id=created.id),
        metadata=team.annotator.metadata(),
    )
    assert current.annotation.viewer_software == "Horos 4"
    assert current.annotation.etag == "v2"
    update.etag = ""  # last writer wins
    forced = await stub.UpdateAnnotation(update, metadata=team.annotator.metadata())
    assert (forced.annotation.viewer_software, forced.annotation.etag) == ("Weasis", "v3")


async def test_update_masks_are_checked(
    stub: annotation_pb2_grpc.AnnotationServiceAsyncStub, team: Team
) -> None:
    created = await _create(stub, team.annotator, _annotation(team.project_id))
    for paths, field in (([], "update_mask"), (["study_uid"], "update_mask")):
        with pytest.raises(aio.AioRpcError) as raised:
            await stub.UpdateAnnotation(
                annotation_pb2.UpdateAnnotationRequest(
                    annotation_id=created.id, update_mask=field_mask_pb2.FieldMask(paths=paths)
                ),
                metadata=team.annotator.metadata(),
            )
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert (raised.value.details() or "").startswith(field + ":")


async def test_a_purge_cascades_and_queues_every_stored_object(
    live_stack: LocalStack, stub: annotation_pb2_grpc.AnnotationServiceAsyncStub, team: Team
) -> None:
    created = await _create(stub, team.annotator, _annotation(team.project_id))
    keys = [f"test/{uuid.uuid4().hex}" for _ in range(3)]
    with psycopg.connect(live_stack.database_url) as conn:
        group_id = conn.execute(
            "insert into annotation_mask_group (annotation_id, slice_count) values (%s, 3)"
            " returning id",
            [created.id],
        ).fetchone()[0]  # type: ignore[index]
        for index, key in enumerate(keys[:2]):
            conn.execute(
                "insert into annotation_mask (mask_group_id, slice_index, file_path, file_size)"
                " values (%s, %s, %s, 10)",
                [group_id, index, key],
            )
        conn.execute(
            "insert into mask_upload (upload_id, mask_group_id, slice_index, content_type,"
            " size_bytes, method, object_key, expires_at)"
            " values (gen_random_uuid(), %s, 2, 'image/png', 10, 'POST', %s, now())",
            [group_id, keys[2]],
        )
    await stub.DeleteAnnotation(
        annotation_pb2.DeleteAnnotationRequest(
            annotation_id=created.id, etag=created.etag, purge=True
        ),
        metadata=team.admin.metadata(),
    )
    with psycopg.connect(live_stack.database_url) as conn:
        queued = {
            row[0]
            for row in conn.execute(
                "select object_key from storage_deletion_outbox where object_key = any(%s)",
                [keys],
            )
        }
        groups = conn.execute(
            "select count(*) from annotation_mask_group where id = %s", [group_id]
        ).fetchone()
    assert queued == set(keys)
    assert groups == (0,)
    with pytest.raises(aio.AioRpcError) as raised:
        await stub.GetAnnotation(
            annotation_pb2.GetAnnotationRequest(annotation_id=created.id),
            metadata=team.annotator.metadata(),
        )
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND


async def test_roles_and_projects_bound_every_rpc(
    stub: annotation_pb2_grpc.AnnotationServiceAsyncStub, team: Team
) -> None:
    created = await _create(stub, team.annotator, _annotation(team.project_id))

    async def code_of(call: object) -> grpc.StatusCode:
        try:
            await call  # type: ignore[misc]
        except aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    get = annotation_pb2.GetAnnotationRequest(annotation_id=created.id)
    missing = annotation_pb2.GetAnnotationRequest(annotation_id=created.id + 10_000_000)
    update = annotation_pb2.UpdateAnnotationRequest(
        annotation_id=created.id,
        annotation=annotation_pb2.Annotation(viewer_software="x"),
        update_mask=field_mask_pb2.FieldMask(paths=["viewer_software"]),
    )
    delete = annotation_pb2.DeleteAnnotationRequest(annotation_id=created.id)
    viewer, outsider = team.viewer.metadata(), team.outsider.metadata()
    assert await code_of(stub.GetAnnotation(get, metadata=viewer)) is grpc.StatusCode.OK
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert await code_of(stub.UpdateAnnotation(update, metadata=viewer)) is denied
    assert await code_of(stub.DeleteAnnotation(delete, metadata=viewer)) is denied
    assert (
        await code_of(
            stub.CreateAnnotation(
                annotation_pb2.CreateAnnotationRequest(annotation=_annotation(team.project_id)),
                metadata=viewer,
            )
        )
        is denied
    )
    hidden = grpc.StatusCode.NOT_FOUND
    for call in (
        stub.GetAnnotation(get, metadata=outsider),
        stub.GetAnnotation(missing, metadata=outsider),
        stub.UpdateAnnotation(update, metadata=outsider),
        stub.DeleteAnnotation(delete, metadata=outsider),
        stub.CreateAnnotation(
            annotation_pb2.CreateAnnotationRequest(annotation=_annotation(team.other_project_id)),
            metadata=team.annotator.metadata(),
        ),
        stub.ListAnnotations(
            annotation_pb2.ListAnnotationsRequest(project_id=team.project_id), metadata=outsider
        ),
    ):
        assert await code_of(call) is hidden
    everything = await stub.ListAnnotations(
        annotation_pb2.ListAnnotationsRequest(study_uid=STUDY), metadata=outsider
    )
    assert list(everything.annotations) == []


async def test_pages_have_no_gaps_or_duplicates_while_rows_are_inserted(
    stub: annotation_pb2_grpc.AnnotationServiceAsyncStub, team: Team
) -> None:
    study = f"1.2.3.{uuid.uuid4().int % 10**12}"
    existing = {
        (await _create(stub, team.annotator, _annotation(team.project_id, study_uid=study))).id
        for _ in range(23)
    }
    seen: list[int] = []
    token = ""
    inserted = 0
    while True:
        page = await stub.ListAnnotations(
            annotation_pb2.ListAnnotationsRequest(
                project_id=team.project_id, study_uid=study, page_size=5, page_token=token
            ),
            metadata=team.viewer.metadata(),
        )
        seen += [a.id for a in page.annotations]
        # Writers keep adding to the study between pages.
        await _create(stub, team.annotator, _annotation(team.project_id, study_uid=study))
        inserted += 1
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)), "no duplicates"
    assert existing <= set(seen), "no gaps among the rows that existed at the start"
    assert inserted >= 5


async def test_filters_narrow_the_list_and_tokens_are_bound_to_them(
    stub: annotation_pb2_grpc.AnnotationServiceAsyncStub, team: Team
) -> None:
    study = f"1.2.4.{uuid.uuid4().int % 10**12}"
    series_a, series_b = study + ".1", study + ".2"
    made = {
        "a-line": await _create(
            stub,
            team.annotator,
            _annotation(
                team.project_id,
                study_uid=study,
                series_uid=series_a,
                instance_uid="",
                annotation_type="line",
            ),
        ),
        "b-point": await _create(
            stub,
            team.annotator,
            _annotation(
                team.project_id,
                study_uid=study,
                series_uid=series_b,
                instance_uid="",
                annotation_type="point",
            ),
        ),
        "b-inst": await _create(
            stub,
            team.annotator,
            _annotation(
                team.project_id,
                study_uid=study,
                series_uid=series_b,
                instance_uid=series_b + ".9",
                annotation_type="point",
            ),
        ),
    }

    async def ids(**filters: Any) -> list[int]:
        reply = await stub.ListAnnotations(
            annotation_pb2.ListAnnotationsRequest(
                project_id=team.project_id, study_uid=study, **filters
            ),
            metadata=team.viewer.metadata(),
        )
        return [a.id for a in reply.annotations]

    assert await ids() == [made["b-inst"].id, made["b-point"].id, made["a-line"].id]
    assert await ids(series_uid=series_b) == [made["b-inst"].id, made["b-point"].id]
    assert await ids(instance_uid=series_b + ".9") == [made["b-inst"].id]
    assert await ids(annotation_type="line") == [made["a-line"].id]
    assert await ids(user_id=team.viewer.user_id) == []
    first = await stub.ListAnnotations(
        annotation_pb2.ListAnnotationsRequest(
            project_id=team.project_id, study_uid=study, page_size=1
        ),
        metadata=team.viewer.metadata(),
    )
    with pytest.raises(aio.AioRpcError) as raised:
        await stub.ListAnnotations(
            annotation_pb2.ListAnnotationsRequest(
                project_id=team.project_id,
                study_uid=study,
                annotation_type="point",
                page_size=1,
                page_token=first.next_page_token,
            ),
            metadata=team.viewer.metadata(),
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (raised.value.details() or "").startswith("page_token:")
    for size in (-1, 501):
        with pytest.raises(aio.AioRpcError) as raised:
            await stub.ListAnnotations(
                annotation_pb2.ListAnnotationsRequest(project_id=team.project_id, page_size=size),
                metadata=team.viewer.metadata(),
            )
        assert (raised.value.details() or "").startswith("page_size:")
