"""The trash on the real stack: delete hides an annotation with its mask groups, undelete brings
everything back, and after the retention the running server's sweeper purges rows, history and
stored objects. A purge by an owner is the only immediate hard delete."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
import psycopg
import pytest
from grpc import aio
from pacs.v1 import annotation_pb2, annotation_pb2_grpc, mask_pb2, mask_pb2_grpc

from pacs_devstack.stack import LocalStack
from tests.support.masks import one_slice_push
from tests.support.projects import ANNOTATOR, OWNER, VIEWER, create_annotation, new_team
from tests.support.users import ApiUser, unique_name

if TYPE_CHECKING:
    from pacs.v1.annotation_pb2_grpc import AnnotationServiceAsyncStub as Stub
    from pacs.v1.mask_pb2_grpc import MaskServiceAsyncStub as Masks

STUDY = "1.2.840.113619.2.55.3.604688119.969.1268071029.322"
BUCKET = "pacs-masks"


class Team:
    def __init__(self, project_id: int, owner: ApiUser, annotator: ApiUser, viewer: ApiUser):
        self.project_id = project_id
        self.owner = owner
        self.annotator = annotator
        self.viewer = viewer


@pytest.fixture(scope="module")
def stub(channel: aio.Channel) -> Stub:
    return annotation_pb2_grpc.AnnotationServiceStub(channel)


@pytest.fixture(scope="module")
def masks(channel: aio.Channel) -> Masks:
    return mask_pb2_grpc.MaskServiceStub(channel)


@pytest.fixture(scope="module")
async def team(live_stack: LocalStack, channel: aio.Channel) -> Team:
    assert live_stack.issuer is not None
    members = {"owner": OWNER, "annotator": ANNOTATOR, "viewer": VIEWER}
    ct = await new_team(channel, live_stack.issuer, unique_name("trash"), members)
    return Team(ct.project_id, ct["owner"], ct["annotator"], ct["viewer"])


async def _with_a_stored_mask(
    channel: aio.Channel, masks: Masks, team: Team
) -> tuple[int, int, str]:
    """An annotation with a complete one-slice group: (annotation id, group id, object key)."""
    annotation_id = await create_annotation(
        channel, team.annotator, team.project_id, STUDY, {"label": "liver"}
    )
    group = await masks.CreateMaskGroup(
        mask_pb2.CreateMaskGroupRequest(
            annotation_id=annotation_id, mask_group=mask_pb2.MaskGroup(slice_count=1)
        ),
        metadata=team.annotator.metadata(),
    )
    pushed = await masks.PushMasks(
        one_slice_push(annotation_id, group.mask_group.id),
        metadata=team.annotator.metadata(),
    )
    return annotation_id, group.mask_group.id, pushed.masks[0].file_path


def _stored(live_stack: LocalStack, key: str) -> bool:
    assert live_stack.s3 is not None
    found = live_stack.s3.client().list_objects(BUCKET, prefix=key)
    return any(o.object_name == key for o in found)


def _count(live_stack: LocalStack, query: str, annotation_id: int) -> int:
    with psycopg.connect(live_stack.database_url, autocommit=True) as conn:
        row = conn.execute(query, (annotation_id,)).fetchone()
    assert row is not None
    return int(row[0])


async def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(aio.AioRpcError) as refused:
        await call  # type: ignore[misc]
    return refused.value.code()


async def test_delete_then_undelete_gives_everything_back(
    live_stack: LocalStack, channel: aio.Channel, stub: Stub, masks: Masks, team: Team
) -> None:
    annotation_id, group_id, key = await _with_a_stored_mask(channel, masks, team)
    get = annotation_pb2.GetAnnotationRequest(annotation_id=annotation_id)
    before = (await stub.GetAnnotation(get, metadata=team.viewer.metadata())).annotation

    await stub.DeleteAnnotation(
        annotation_pb2.DeleteAnnotationRequest(annotation_id=annotation_id, etag=before.etag),
        metadata=team.annotator.metadata(),
    )

    assert await _code(stub.GetAnnotation(get, metadata=team.viewer.metadata())) is (
        grpc.StatusCode.NOT_FOUND
    )
    group_request = mask_pb2.GetMaskGroupRequest(annotation_id=annotation_id, group_id=group_id)
    assert await _code(masks.GetMaskGroup(group_request, metadata=team.viewer.metadata())) is (
        grpc.StatusCode.NOT_FOUND
    )
    listing = annotation_pb2.ListAnnotationsRequest(project_id=team.project_id, study_uid=STUDY)
    live = await stub.ListAnnotations(listing, metadata=team.viewer.metadata())
    assert annotation_id not in [a.id for a in live.annotations]
    listing.show_deleted = True
    trash = await stub.ListAnnotations(listing, metadata=team.owner.metadata())
    [trashed] = [a for a in trash.annotations if a.id == annotation_id]
    assert trashed.HasField("deleted_at")
    assert (trashed.revision, trashed.etag) == (2, "v2")
    assert await _code(stub.ListAnnotations(listing, metadata=team.annotator.metadata())) is (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert _stored(live_stack, key)

    back = await stub.UndeleteAnnotation(
        annotation_pb2.UndeleteAnnotationRequest(annotation_id=annotation_id, etag="v2"),
        metadata=team.annotator.metadata(),
    )

    assert back.annotation.revision == 3
    assert not back.annotation.HasField("deleted_at")
    assert back.annotation.annotation_data == before.annotation_data
    group = await masks.GetMaskGroup(group_request, metadata=team.viewer.metadata())
    assert group.mask_group.status == mask_pb2.MASK_GROUP_STATUS_COMPLETE
    history = await stub.ListAnnotationRevisions(
        annotation_pb2.ListAnnotationRevisionsRequest(annotation_id=annotation_id),
        metadata=team.viewer.metadata(),
    )
    action = annotation_pb2.AnnotationRevisionAction
    assert [r.action for r in history.revisions] == [
        action.ANNOTATION_REVISION_ACTION_UNDELETED,
        action.ANNOTATION_REVISION_ACTION_DELETED,
        action.ANNOTATION_REVISION_ACTION_CREATED,
    ]
    assert (
        await _code(
            stub.UndeleteAnnotation(
                annotation_pb2.UndeleteAnnotationRequest(annotation_id=annotation_id),
                metadata=team.annotator.metadata(),
            )
        )
        is grpc.StatusCode.FAILED_PRECONDITION
    )


async def test_after_the_retention_the_sweeper_purges_rows_history_and_objects(
    live_stack: LocalStack, channel: aio.Channel, stub: Stub, masks: Masks, team: Team
) -> None:
    annotation_id, _, key = await _with_a_stored_mask(channel, masks, team)
    await stub.DeleteAnnotation(
        annotation_pb2.DeleteAnnotationRequest(annotation_id=annotation_id),
        metadata=team.annotator.metadata(),
    )
    # The retention (30 days by default) passed: the clock cannot be moved, the row can.
    with psycopg.connect(live_stack.database_url, autocommit=True) as conn:
        conn.execute(
            "update annotation_annotation set deleted_at = now() - interval '30 days 1 second'"
            " where id = %s",
            (annotation_id,),
        )
    assert await _code(
        stub.UndeleteAnnotation(
            annotation_pb2.UndeleteAnnotationRequest(annotation_id=annotation_id),
            metadata=team.annotator.metadata(),
        )
    ) in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)

    # The live stack's server sweeps every second.
    for _ in range(100):
        if not _stored(live_stack, key):
            break
        await asyncio.sleep(0.1)

    assert not _stored(live_stack, key)
    for table in ("annotation_annotation where id", "annotation_revision where annotation_id"):
        assert _count(live_stack, f"select count(*) from {table} = %s", annotation_id) == 0
    assert (
        _count(
            live_stack,
            "select count(*) from annotation_mask_group where annotation_id = %s",
            annotation_id,
        )
        == 0
    )


async def test_an_owner_purges_at_once_and_nobody_else_may(
    live_stack: LocalStack, channel: aio.Channel, stub: Stub, masks: Masks, team: Team
) -> None:
    annotation_id, _, key = await _with_a_stored_mask(channel, masks, team)
    purge = annotation_pb2.DeleteAnnotationRequest(annotation_id=annotation_id, purge=True)

    assert await _code(stub.DeleteAnnotation(purge, metadata=team.annotator.metadata())) is (
        grpc.StatusCode.PERMISSION_DENIED
    )
    await stub.DeleteAnnotation(purge, metadata=team.owner.metadata())

    assert (
        _count(
            live_stack,
            "select count(*) from annotation_revision where annotation_id = %s",
            annotation_id,
        )
        == 0
    )
    for _ in range(100):
        if not _stored(live_stack, key):
            break
        await asyncio.sleep(0.1)
    assert not _stored(live_stack, key)
    with psycopg.connect(live_stack.database_url, autocommit=True) as conn:
        audited = conn.execute(
            "select resource_type, outcome from audit_log where action = 'DeleteAnnotation'"
            " and %s = any(resource_ids) order by id",
            (annotation_id,),
        ).fetchall()
    assert audited == [("annotation_purge", "denied"), ("annotation_purge", "ok")]


async def test_watch_says_deleted_and_restored(
    channel: aio.Channel, stub: Stub, team: Team
) -> None:
    annotation_id = await create_annotation(
        channel, team.annotator, team.project_id, STUDY, {"label": "watched"}
    )
    stream = stub.WatchAnnotations(
        annotation_pb2.WatchAnnotationsRequest(project_id=team.project_id, study_uid=STUDY),
        metadata=team.viewer.metadata(),
    )
    await asyncio.sleep(0.3)  # subscribed: the stream starts live
    await stub.DeleteAnnotation(
        annotation_pb2.DeleteAnnotationRequest(annotation_id=annotation_id),
        metadata=team.annotator.metadata(),
    )
    await stub.UndeleteAnnotation(
        annotation_pb2.UndeleteAnnotationRequest(annotation_id=annotation_id),
        metadata=team.annotator.metadata(),
    )

    seen: list[annotation_pb2.WatchAnnotationsResponse] = []
    while len(seen) < 2:
        event = await asyncio.wait_for(stream.read(), timeout=10)
        assert isinstance(event, annotation_pb2.WatchAnnotationsResponse)
        if event.annotation_id == annotation_id:
            seen.append(event)
    stream.cancel()

    kind = annotation_pb2.AnnotationEventType
    assert [e.event_type for e in seen] == [
        kind.ANNOTATION_EVENT_TYPE_DELETED,
        kind.ANNOTATION_EVENT_TYPE_RESTORED,
    ]
    assert seen[1].annotation.revision == 3


async def test_a_mask_group_goes_to_the_trash_and_back_then_the_sweeper_purges_it(
    live_stack: LocalStack, channel: aio.Channel, masks: Masks, team: Team
) -> None:
    annotation_id, group_id, key = await _with_a_stored_mask(channel, masks, team)
    ids = {"annotation_id": annotation_id, "group_id": group_id}
    await masks.DeleteMaskGroup(
        mask_pb2.DeleteMaskGroupRequest(annotation_id=annotation_id, group_id=group_id),
        metadata=team.annotator.metadata(),
    )
    get = mask_pb2.GetMaskGroupRequest(**ids)
    assert await _code(masks.GetMaskGroup(get, metadata=team.viewer.metadata())) is (
        grpc.StatusCode.NOT_FOUND
    )
    back = await masks.UndeleteMaskGroup(
        mask_pb2.UndeleteMaskGroupRequest(**ids), metadata=team.annotator.metadata()
    )
    assert (back.mask_group.current, back.mask_group.status) == (
        True,
        mask_pb2.MASK_GROUP_STATUS_COMPLETE,
    )
    # Only from the trash (migration 0016): a live group's row refuses a hard delete.
    with (
        psycopg.connect(live_stack.database_url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState),
    ):
        conn.execute("delete from annotation_mask_group where id = %s", (group_id,))

    await masks.DeleteMaskGroup(
        mask_pb2.DeleteMaskGroupRequest(annotation_id=annotation_id, group_id=group_id),
        metadata=team.annotator.metadata(),
    )
    with psycopg.connect(live_stack.database_url, autocommit=True) as conn:
        conn.execute(
            "update annotation_mask_group set deleted_at = now() - interval '30 days 1 second'"
            " where id = %s",
            (group_id,),
        )
    for _ in range(100):
        if not _stored(live_stack, key):
            break
        await asyncio.sleep(0.1)

    assert not _stored(live_stack, key)
    assert (
        _count(live_stack, "select count(*) from annotation_mask_group where id = %s", group_id)
        == 0
    )
    assert (
        _count(
            live_stack, "select count(*) from annotation_annotation where id = %s", annotation_id
        )
        == 1
    )
