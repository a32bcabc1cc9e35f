"""The review step on the real stack: the reviewer role, transitions with their revisions and
Watch events, self-approval refused, approved content frozen, and the review queue."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from grpc import aio
from pacs.v1 import annotation_pb2, annotation_pb2_grpc, mask_pb2, mask_pb2_grpc, review_pb2

from pacs_devstack.stack import LocalStack
from tests.support.masks import one_slice_push
from tests.support.projects import ANNOTATOR, OWNER, REVIEWER, VIEWER, create_annotation, new_team
from tests.support.users import ApiUser, unique_name

if TYPE_CHECKING:
    from pacs.v1.annotation_pb2_grpc import AnnotationServiceAsyncStub as Stub
    from pacs.v1.mask_pb2_grpc import MaskServiceAsyncStub as Masks

STUDY = "1.2.840.113619.2.55.3.604688119.969.1268071029.323"
State = review_pb2.ReviewState


class Team:
    def __init__(self, project_id: int, **members: ApiUser) -> None:
        self.project_id = project_id
        self.owner = members["owner"]
        self.annotator = members["annotator"]
        self.reviewer = members["reviewer"]
        self.viewer = members["viewer"]


@pytest.fixture(scope="module")
def stub(channel: aio.Channel) -> Stub:
    return annotation_pb2_grpc.AnnotationServiceStub(channel)


@pytest.fixture(scope="module")
def masks(channel: aio.Channel) -> Masks:
    return mask_pb2_grpc.MaskServiceStub(channel)


@pytest.fixture(scope="module")
async def team(live_stack: LocalStack, channel: aio.Channel) -> Team:
    assert live_stack.issuer is not None
    roles = {"owner": OWNER, "annotator": ANNOTATOR, "reviewer": REVIEWER, "viewer": VIEWER}
    ct = await new_team(channel, live_stack.issuer, unique_name("review"), roles)
    return Team(ct.project_id, **{name: ct[name] for name in roles})


async def _code(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(aio.AioRpcError) as refused:
        await call  # type: ignore[misc]
    return refused.value.code(), refused.value.details() or ""


async def _annotation(channel: aio.Channel, team: Team, author: ApiUser | None = None) -> int:
    user = author or team.annotator
    return await create_annotation(channel, user, team.project_id, STUDY, {"label": "nodule"})


async def test_a_reviewer_approves_what_an_annotator_submitted_and_it_is_frozen(
    channel: aio.Channel, stub: Stub, team: Team
) -> None:
    annotation_id = await _annotation(channel, team)
    submitted = await stub.SubmitAnnotationForReview(
        annotation_pb2.SubmitAnnotationForReviewRequest(annotation_id=annotation_id, etag="v1"),
        metadata=team.annotator.metadata(),
    )
    assert submitted.annotation.review.state == State.REVIEW_STATE_SUBMITTED
    assert submitted.annotation.review.user_id == team.annotator.user_id

    approved = await stub.ApproveAnnotation(
        annotation_pb2.ApproveAnnotationRequest(
            annotation_id=annotation_id, etag=submitted.annotation.etag
        ),
        metadata=team.reviewer.metadata(),
    )

    review = approved.annotation.review
    assert (review.state, review.user_id, approved.annotation.revision) == (
        State.REVIEW_STATE_APPROVED,
        team.reviewer.user_id,
        3,
    )
    assert review.HasField("changed_at")
    code, message = await _code(
        stub.UpdateAnnotation(
            annotation_pb2.UpdateAnnotationRequest(
                annotation_id=annotation_id,
                annotation=annotation_pb2.Annotation(viewer_software="Slicer"),
                update_mask=field_mask_pb2.FieldMask(paths=["viewer_software"]),
            ),
            metadata=team.annotator.metadata(),
        )
    )
    assert (code, "approved and frozen" in message) == (grpc.StatusCode.FAILED_PRECONDITION, True)
    history = await stub.ListAnnotationRevisions(
        annotation_pb2.ListAnnotationRevisionsRequest(annotation_id=annotation_id),
        metadata=team.viewer.metadata(),
    )
    Action = annotation_pb2.AnnotationRevisionAction  # noqa: N806 - an enum, read as one
    assert [(r.action, r.review_state, r.user_id) for r in history.revisions] == [
        (
            Action.ANNOTATION_REVISION_ACTION_APPROVED,
            State.REVIEW_STATE_APPROVED,
            team.reviewer.user_id,
        ),
        (
            Action.ANNOTATION_REVISION_ACTION_SUBMITTED,
            State.REVIEW_STATE_SUBMITTED,
            team.annotator.user_id,
        ),
        (
            Action.ANNOTATION_REVISION_ACTION_CREATED,
            State.REVIEW_STATE_DRAFT,
            team.annotator.user_id,
        ),
    ]


async def test_the_reviewer_role_reads_and_reviews_but_never_writes(
    channel: aio.Channel, stub: Stub, team: Team
) -> None:
    annotation_id = await _annotation(channel, team)
    reviewer = team.reviewer.metadata()
    got = await stub.GetAnnotation(
        annotation_pb2.GetAnnotationRequest(annotation_id=annotation_id), metadata=reviewer
    )
    assert got.annotation.review.state == State.REVIEW_STATE_DRAFT
    refusals = [
        stub.CreateAnnotation(
            annotation_pb2.CreateAnnotationRequest(
                annotation=annotation_pb2.Annotation(
                    project_id=team.project_id,
                    study_uid=STUDY,
                    annotation_type="point",
                    annotation_data=struct_pb2.Struct(),
                )
            ),
            metadata=reviewer,
        ),
        stub.SubmitAnnotationForReview(
            annotation_pb2.SubmitAnnotationForReviewRequest(annotation_id=annotation_id),
            metadata=reviewer,
        ),
        stub.DeleteAnnotation(
            annotation_pb2.DeleteAnnotationRequest(annotation_id=annotation_id),
            metadata=reviewer,
        ),
        # And annotators and viewers do not review.
        stub.RejectAnnotation(
            annotation_pb2.RejectAnnotationRequest(annotation_id=annotation_id, comment="no"),
            metadata=team.annotator.metadata(),
        ),
        stub.ApproveAnnotation(
            annotation_pb2.ApproveAnnotationRequest(annotation_id=annotation_id, etag="v1"),
            metadata=team.viewer.metadata(),
        ),
    ]
    for call in refusals:
        code, _ = await _code(call)
        assert code is grpc.StatusCode.PERMISSION_DENIED


async def test_nobody_approves_their_own_work_not_even_an_owner(
    channel: aio.Channel, stub: Stub, team: Team
) -> None:
    annotation_id = await _annotation(channel, team, author=team.owner)
    submitted = await stub.SubmitAnnotationForReview(
        annotation_pb2.SubmitAnnotationForReviewRequest(annotation_id=annotation_id),
        metadata=team.owner.metadata(),
    )
    code, message = await _code(
        stub.ApproveAnnotation(
            annotation_pb2.ApproveAnnotationRequest(
                annotation_id=annotation_id, etag=submitted.annotation.etag
            ),
            metadata=team.owner.metadata(),
        )
    )
    assert (code, "own work" in message) == (grpc.StatusCode.PERMISSION_DENIED, True)
    rejected = await stub.RejectAnnotation(
        annotation_pb2.RejectAnnotationRequest(annotation_id=annotation_id, comment="label it"),
        metadata=team.reviewer.metadata(),
    )
    assert (rejected.annotation.review.state, rejected.annotation.review.comment) == (
        State.REVIEW_STATE_REJECTED,
        "label it",
    )
    code, message = await _code(
        stub.RejectAnnotation(
            annotation_pb2.RejectAnnotationRequest(annotation_id=annotation_id),
            metadata=team.reviewer.metadata(),
        )
    )
    assert (code, message.startswith("comment:")) == (grpc.StatusCode.INVALID_ARGUMENT, True)


async def test_the_review_queue_lists_what_waits_for_review(
    channel: aio.Channel, stub: Stub, team: Team
) -> None:
    waiting = await _annotation(channel, team)
    draft = await _annotation(channel, team)
    await stub.SubmitAnnotationForReview(
        annotation_pb2.SubmitAnnotationForReviewRequest(annotation_id=waiting),
        metadata=team.annotator.metadata(),
    )

    queue = await stub.ListAnnotations(
        annotation_pb2.ListAnnotationsRequest(
            project_id=team.project_id, review_state=State.REVIEW_STATE_SUBMITTED
        ),
        metadata=team.reviewer.metadata(),
    )

    listed = [a.id for a in queue.annotations]
    assert waiting in listed
    assert draft not in listed
    assert {a.review.state for a in queue.annotations} == {State.REVIEW_STATE_SUBMITTED}


async def test_a_mask_group_review_is_announced_on_watch(
    channel: aio.Channel, stub: Stub, masks: Masks, team: Team
) -> None:
    annotation_id = await _annotation(channel, team)
    created = await masks.CreateMaskGroup(
        mask_pb2.CreateMaskGroupRequest(
            annotation_id=annotation_id, mask_group=mask_pb2.MaskGroup(slice_count=1)
        ),
        metadata=team.annotator.metadata(),
    )
    group_id = created.mask_group.id
    ids = {"annotation_id": annotation_id, "group_id": group_id}
    code, message = await _code(
        masks.SubmitMaskGroupForReview(
            mask_pb2.SubmitMaskGroupForReviewRequest(**ids), metadata=team.annotator.metadata()
        )
    )
    assert (code, "not complete" in message) == (grpc.StatusCode.FAILED_PRECONDITION, True)
    await masks.PushMasks(
        one_slice_push(annotation_id, group_id), metadata=team.annotator.metadata()
    )
    stream = stub.WatchAnnotations(
        annotation_pb2.WatchAnnotationsRequest(project_id=team.project_id, study_uid=STUDY),
        metadata=team.viewer.metadata(),
    )
    await asyncio.sleep(0.3)  # subscribed: the stream starts live

    await masks.SubmitMaskGroupForReview(
        mask_pb2.SubmitMaskGroupForReviewRequest(**ids), metadata=team.annotator.metadata()
    )
    approved = await masks.ApproveMaskGroup(
        mask_pb2.ApproveMaskGroupRequest(**ids), metadata=team.reviewer.metadata()
    )

    event = annotation_pb2.WatchAnnotationsResponse()
    while event.mask_group_review.state != State.REVIEW_STATE_APPROVED:
        read = await asyncio.wait_for(stream.read(), timeout=10)
        assert isinstance(read, annotation_pb2.WatchAnnotationsResponse)
        event = read
    stream.cancel()
    kind = annotation_pb2.AnnotationEventType.ANNOTATION_EVENT_TYPE_MASK_GROUP_REVIEWED
    assert (event.event_type, event.annotation_id, event.mask_group_id) == (
        kind,
        annotation_id,
        group_id,
    )
    assert event.mask_group_review.user_id == team.reviewer.user_id
    assert approved.mask_group.review.state == State.REVIEW_STATE_APPROVED
    listed = await masks.ListMaskGroups(
        mask_pb2.ListMaskGroupsRequest(
            annotation_id=annotation_id, review_state=State.REVIEW_STATE_DRAFT
        ),
        metadata=team.viewer.metadata(),
    )
    assert list(listed.mask_groups) == []
