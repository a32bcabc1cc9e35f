"""WatchAnnotations across two server processes, as replicas behind a load balancer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from grpc import aio
from pacs.v1 import annotation_pb2, annotation_pb2_grpc

from pacs_devstack.ports import free_port
from pacs_devstack.server import ServerProcess
from pacs_devstack.stack import LocalStack
from tests.support.projects import ANNOTATOR, VIEWER, new_team
from tests.support.users import ApiUser, login, unique_name

pytestmark = pytest.mark.slow

CREATED = annotation_pb2.ANNOTATION_EVENT_TYPE_CREATED
UPDATED = annotation_pb2.ANNOTATION_EVENT_TYPE_UPDATED
DELETED = annotation_pb2.ANNOTATION_EVENT_TYPE_DELETED


@pytest.fixture(scope="module")
def second_server(live_stack: LocalStack, artifacts_dir: Path) -> Iterator[ServerProcess]:
    port = free_port()
    server = ServerProcess(
        live_stack.server_environment(port), port, log_path=artifacts_dir / "second-server.log"
    )
    server.start()
    yield server
    server.terminate()


@pytest.fixture(scope="module")
async def stubs(
    live_stack: LocalStack, second_server: ServerProcess
) -> AsyncIterator[tuple[annotation_pb2_grpc.AnnotationServiceAsyncStub, ...]]:
    assert live_stack.server is not None
    async with (
        aio.insecure_channel(live_stack.server.address) as first,
        aio.insecure_channel(second_server.address) as second,
    ):
        yield (
            annotation_pb2_grpc.AnnotationServiceStub(first),
            annotation_pb2_grpc.AnnotationServiceStub(second),
        )


@pytest.fixture(scope="module")
async def people(live_stack: LocalStack) -> tuple[ApiUser, ApiUser, ApiUser, int]:
    assert live_stack.server is not None
    assert live_stack.issuer is not None
    async with aio.insecure_channel(live_stack.server.address) as channel:
        team = await new_team(
            channel, live_stack.issuer, unique_name("watch"),
            {"writer": ANNOTATOR, "viewer": VIEWER},
        )  # fmt: skip
        outsider = await login(channel, live_stack.issuer, unique_name("out"))
    return team["writer"], team["viewer"], outsider, team.project_id


def _annotation(project_id: int, study: str) -> annotation_pb2.Annotation:
    data = struct_pb2.Struct()
    data.update({"x": 1})
    return annotation_pb2.Annotation(
        project_id=project_id, study_uid=study, annotation_type="point", annotation_data=data
    )


async def _next(call: object, seconds: float) -> annotation_pb2.WatchAnnotationsResponse:
    async with asyncio.timeout(seconds):
        reply = await call.read()  # type: ignore[attr-defined]
    assert isinstance(reply, annotation_pb2.WatchAnnotationsResponse)
    return reply


async def test_a_viewer_sees_changes_written_through_another_replica_and_resumes(
    stubs: tuple[annotation_pb2_grpc.AnnotationServiceAsyncStub, ...],
    people: tuple[ApiUser, ApiUser, ApiUser, int],
) -> None:
    first, second = stubs
    writer, viewer, _, project_id = people
    study = f"1.2.5.{uuid.uuid4().int % 10**10}"
    other_study = study + ".9"
    watch = first.WatchAnnotations(
        annotation_pb2.WatchAnnotationsRequest(project_id=project_id, study_uid=study),
        metadata=viewer.metadata(),
    )
    # The subscription becomes live a moment after the call starts: write
    # anchors until one arrives, then everything later must arrive too.
    anchor_ids = []
    replayed = None
    for _ in range(20):
        anchor = await second.CreateAnnotation(
            annotation_pb2.CreateAnnotationRequest(annotation=_annotation(project_id, study)),
            metadata=writer.metadata(),
        )
        anchor_ids.append(anchor.annotation.id)
        try:
            replayed = await _next(watch, 0.5)
            break
        except TimeoutError:
            continue
    assert replayed is not None
    assert replayed.event_type == CREATED
    assert replayed.annotation_id in anchor_ids
    assert replayed.annotation.study_uid == study
    anchor = annotation_pb2.CreateAnnotationResponse(
        annotation=annotation_pb2.Annotation(id=replayed.annotation_id)
    )
    for later_anchor in anchor_ids[anchor_ids.index(replayed.annotation_id) + 1 :]:
        caught_up = await _next(watch, 2.0)
        assert caught_up.annotation_id == later_anchor

    await second.CreateAnnotation(
        annotation_pb2.CreateAnnotationRequest(annotation=_annotation(project_id, other_study)),
        metadata=writer.metadata(),
    )
    live = await second.CreateAnnotation(
        annotation_pb2.CreateAnnotationRequest(annotation=_annotation(project_id, study)),
        metadata=writer.metadata(),
    )
    started = asyncio.get_running_loop().time()
    event = await _next(watch, 1.0)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert (event.annotation_id, event.event_type) == (live.annotation.id, CREATED)
    assert event.event_id > replayed.event_id
    assert event.annotation.annotation_data["x"] == 1
    watch.cancel()

    # While the viewer is away: an update, a delete and a new annotation.
    updated = await second.UpdateAnnotation(
        annotation_pb2.UpdateAnnotationRequest(
            annotation_id=live.annotation.id,
            annotation=annotation_pb2.Annotation(viewer_software="Weasis"),
            update_mask=field_mask_pb2.FieldMask(paths=["viewer_software"]),
        ),
        metadata=writer.metadata(),
    )
    await second.DeleteAnnotation(
        annotation_pb2.DeleteAnnotationRequest(annotation_id=anchor.annotation.id),
        metadata=writer.metadata(),
    )
    later = await second.CreateAnnotation(
        annotation_pb2.CreateAnnotationRequest(annotation=_annotation(project_id, study)),
        metadata=writer.metadata(),
    )
    resumed = first.WatchAnnotations(
        annotation_pb2.WatchAnnotationsRequest(
            project_id=project_id, study_uid=study, after_event_id=event.event_id
        ),
        metadata=viewer.metadata(),
    )
    missed = [await _next(resumed, 5.0) for _ in range(3)]
    assert [(e.annotation_id, e.event_type) for e in missed] == [
        (live.annotation.id, UPDATED),
        (anchor.annotation.id, DELETED),
        (later.annotation.id, CREATED),
    ]
    assert [e.event_id for e in missed] == sorted(e.event_id for e in missed)
    assert missed[0].annotation.etag == updated.annotation.etag or missed[0].annotation.etag
    assert missed[1].annotation.id == anchor.annotation.id
    assert missed[1].annotation.study_uid == study
    resumed.cancel()


async def test_watch_needs_read_access_to_the_project(
    stubs: tuple[annotation_pb2_grpc.AnnotationServiceAsyncStub, ...],
    people: tuple[ApiUser, ApiUser, ApiUser, int],
) -> None:
    first, _ = stubs
    _, _, outsider, project_id = people
    call = first.WatchAnnotations(
        annotation_pb2.WatchAnnotationsRequest(project_id=project_id),
        metadata=outsider.metadata(),
    )
    with pytest.raises(aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    bad = first.WatchAnnotations(
        annotation_pb2.WatchAnnotationsRequest(project_id=project_id, study_uid="1.02"),
        metadata=outsider.metadata(),
    )
    with pytest.raises(aio.AioRpcError) as invalid:
        await bad.read()
    assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (invalid.value.details() or "").startswith("study_uid:")
