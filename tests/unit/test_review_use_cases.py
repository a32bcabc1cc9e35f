"""The review step on in-memory fakes: transitions, who may take them, frozen approved content,
the review queue, and the export gate."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from pacs_grpc.domain.annotation import Annotation, EventType, RevisionAction
from pacs_grpc.domain.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from pacs_grpc.domain.identity import ProjectRole, User
from pacs_grpc.domain.masks import MaskGroup
from pacs_grpc.domain.review import ReviewState, ReviewStep, comment, exportable, next_state
from pacs_grpc.services.annotations import ListRequest
from tests.fakes import builders
from tests.fakes.mask_builders import MaskWorld

STUDY = "1.2.840.1"
SUBMIT, APPROVE, REJECT = ReviewStep.SUBMIT, ReviewStep.APPROVE, ReviewStep.REJECT
_METHOD = {
    SUBMIT: "SubmitAnnotationForReview",
    APPROVE: "ApproveAnnotation",
    REJECT: "RejectAnnotation",
}
_GROUP_METHOD = {
    SUBMIT: "SubmitMaskGroupForReview",
    APPROVE: "ApproveMaskGroup",
    REJECT: "RejectMaskGroup",
}


class World(MaskWorld):
    """MaskWorld with a reviewer and a second annotator in the project."""

    def __init__(self) -> None:
        super().__init__()
        self.reviewer = self.w.db.seed_user("rita")
        self.w.db.seed_member(self.project, self.reviewer, ProjectRole.REVIEWER)
        self.second = self.w.db.seed_user("sam")
        self.w.db.seed_member(self.project, self.second, ProjectRole.ANNOTATOR)
        self.notes = builders.annotation_use_cases(self.w)
        self.history = builders.annotation_history(self.w)

    async def create(self) -> Annotation:
        return await self.notes.create(
            self.call("CreateAnnotation"), builders.new_annotation(self.project.id, study_uid=STUDY)
        )

    async def step(
        self, annotation: Annotation, step: ReviewStep, user: User, note: str = "", etag: str = ""
    ) -> Annotation:
        """One step; an approval reads the annotation's current etag unless given one."""
        if step is APPROVE and not etag:
            etag = self.w.db.tables.annotations[annotation.id].etag
        return await self.reviews().review_annotation(
            self.call(_METHOD[step], user), annotation.id, step, etag, note
        )

    async def group_step(
        self, group: MaskGroup, step: ReviewStep, user: User, note: str = ""
    ) -> MaskGroup:
        call = self.call(_GROUP_METHOD[step], user)
        return await self.reviews().review_group(call, group.annotation_id, group.id, step, note)


@pytest.fixture
def m() -> World:
    return World()


def test_the_transitions_and_their_comments() -> None:
    draft, submitted = ReviewState.DRAFT, ReviewState.SUBMITTED
    assert next_state(draft, SUBMIT, "annotation") is submitted
    assert next_state(ReviewState.REJECTED, SUBMIT, "annotation") is submitted
    assert next_state(submitted, APPROVE, "annotation") is ReviewState.APPROVED
    assert next_state(submitted, REJECT, "annotation") is ReviewState.REJECTED
    for state, step in [(draft, APPROVE), (ReviewState.APPROVED, SUBMIT), (submitted, SUBMIT)]:
        with pytest.raises(FailedPrecondition, match=f"is {state.value}"):
            next_state(state, step, "annotation")
    assert comment(REJECT, "  needs a label ") == "needs a label"
    for step, text, problem in [
        (REJECT, " ", "required"),
        (REJECT, "x" * 2001, "at most 2000"),
        (APPROVE, "fine", "only a rejection"),
    ]:
        with pytest.raises(InvalidArgument, match=problem):
            comment(step, text)


async def test_submit_then_approve_by_another_freezes_the_annotation(m: World) -> None:
    created = await m.create()

    submitted = await m.step(created, SUBMIT, m.annotator, etag=created.etag)
    approved = await m.step(submitted, APPROVE, m.reviewer)

    assert (submitted.review_state, submitted.reviewed_by) == (
        ReviewState.SUBMITTED,
        m.annotator.id,
    )
    assert (approved.review_state, approved.reviewed_by, approved.row_version) == (
        ReviewState.APPROVED,
        m.reviewer.id,
        3,
    )
    history = [(r.action, r.review_state) for r, _ in m.w.db.tables.revisions[created.id]]
    assert history[1:] == [
        (RevisionAction.SUBMITTED, ReviewState.SUBMITTED),
        (RevisionAction.APPROVED, ReviewState.APPROVED),
    ]
    assert [e.event_type for e in m.w.db.tables.events][-2:] == [EventType.UPDATED] * 2
    with pytest.raises(FailedPrecondition, match="approved and frozen"):
        await m.notes.update(m.call("UpdateAnnotation"), created.id, "", ["viewer_software"], {})
    with pytest.raises(FailedPrecondition, match="approved and frozen"):
        await m.history.restore(m.call("RestoreAnnotationRevision"), created.id, 1, "")
    assert m.w.db.tables.annotations[created.id].row_version == 3


@pytest.mark.parametrize("who", ["creator", "submitter", "editor", "admin who created"])
async def test_nobody_approves_their_own_work(m: World, who: str) -> None:
    author = m.admin if who == "admin who created" else m.annotator
    created = await m.notes.create(
        m.call("CreateAnnotation", author), builders.new_annotation(m.project.id, study_uid=STUDY)
    )
    if who == "editor":
        # The reviewer is also an owner elsewhere; here an owner who changed the content.
        m.w.db.seed_member(m.project, m.reviewer, ProjectRole.OWNER)
        await m.notes.update(
            m.call("UpdateAnnotation", m.reviewer), created.id, "", ["viewer_software"],
            {"viewer_software": "Slicer"},
        )  # fmt: skip
    submitter = m.second if who == "submitter" else author
    await m.step(created, SUBMIT, submitter)
    approver = {"creator": m.annotator, "submitter": m.second}.get(who, m.reviewer)
    if who == "admin who created":
        approver = m.admin
    else:
        # An owner may review: the role is not what refuses here.
        m.w.db.seed_member(m.project, approver, ProjectRole.OWNER)

    with pytest.raises(PermissionDenied, match="own work"):
        await m.step(created, APPROVE, approver)

    assert m.w.db.tables.annotations[created.id].review_state is ReviewState.SUBMITTED


async def test_who_may_take_which_step(m: World) -> None:
    created = await m.create()
    for user, step in [(m.viewer, SUBMIT), (m.reviewer, SUBMIT)]:
        with pytest.raises(PermissionDenied):
            await m.step(created, step, user)
    await m.step(created, SUBMIT, m.second)
    for user in (m.viewer, m.second):
        with pytest.raises(PermissionDenied):
            await m.step(created, APPROVE, user)
    with pytest.raises(NotFound):
        await m.step(created, APPROVE, m.outsider)
    with pytest.raises(PermissionDenied):
        await m.notes.update(
            m.call("UpdateAnnotation", m.reviewer), created.id, "", ["viewer_software"], {}
        )
    rejected = await m.step(created, REJECT, m.reviewer, "outline the whole nodule")
    assert (rejected.review_state, rejected.review_comment) == (
        ReviewState.REJECTED,
        "outline the whole nodule",
    )


async def test_an_approval_names_the_revision_it_approves(m: World) -> None:
    created = await m.create()
    await m.step(created, SUBMIT, m.annotator)
    with pytest.raises(InvalidArgument, match="etag"):
        await m.reviews().review_annotation(
            m.call("ApproveAnnotation", m.reviewer), created.id, APPROVE, ""
        )
    assert m.w.db.tables.annotations[created.id].review_state is ReviewState.SUBMITTED


async def test_approved_content_is_deleted_by_owners_only(m: World) -> None:
    created = await m.create()
    await m.step(created, SUBMIT, m.annotator)
    approved = await m.step(created, APPROVE, m.reviewer)
    with pytest.raises(FailedPrecondition, match="only the project's owners"):
        await m.history.delete(m.call("DeleteAnnotation"), created.id, approved.etag)
    await m.history.delete(m.call("DeleteAnnotation", m.admin), created.id, approved.etag)
    assert m.w.db.tables.annotations[created.id].deleted_at is not None


async def test_a_change_makes_a_draft_again_and_a_stale_etag_is_refused(m: World) -> None:
    created = await m.create()
    submitted = await m.step(created, SUBMIT, m.annotator)
    with pytest.raises(Conflict):
        await m.step(created, APPROVE, m.reviewer, etag=created.etag)

    changed = await m.notes.update(
        m.call("UpdateAnnotation"), created.id, submitted.etag, ["viewer_software"],
        {"viewer_software": "OHIF 3"},
    )  # fmt: skip

    assert (changed.review_state, changed.reviewed_by) == (ReviewState.DRAFT, None)
    with pytest.raises(FailedPrecondition, match="is draft"):
        await m.step(created, APPROVE, m.reviewer)


async def test_the_review_queue_lists_what_was_submitted(m: World) -> None:
    waiting = await m.create()
    await m.create()
    await m.step(waiting, SUBMIT, m.annotator)
    request = ListRequest(
        project_id=m.project.id, study_uid="", series_uid="", instance_uid="",
        annotation_type="", user_id=0, created_after=None, created_before=None, page_size=0,
        page_token="", review_state=ReviewState.SUBMITTED,
    )  # fmt: skip

    page = await m.notes.list_annotations(m.call("ListAnnotations", m.reviewer), request)

    assert [a.id for a in page.items] == [waiting.id]


async def test_a_group_is_submitted_when_complete_and_approved_by_another(m: World) -> None:
    group = m.seed_group(2)
    m.seed_masks(group, [0])
    with pytest.raises(FailedPrecondition, match="not complete"):
        await m.group_step(group, SUBMIT, m.annotator)
    m.seed_masks(group, [1])

    submitted = await m.group_step(group, SUBMIT, m.second)
    for own in (m.annotator, m.second):  # its creator, its submitter
        m.w.db.seed_member(m.project, own, ProjectRole.OWNER)
        with pytest.raises(PermissionDenied, match="own work"):
            await m.group_step(group, APPROVE, own)
    approved = await m.group_step(group, APPROVE, m.reviewer)

    assert submitted.review.state is ReviewState.SUBMITTED
    assert (approved.review.state, approved.review.user_id) == (
        ReviewState.APPROVED,
        m.reviewer.id,
    )
    events = [(e.event_type, e.mask_group_id) for e in m.w.db.tables.events]
    assert events == [(EventType.MASK_GROUP_REVIEWED, group.id)] * 2
    listed = await m.groups().list_groups(
        m.call("ListMaskGroups"), m.annotation.id, 0, "", ReviewState.APPROVED
    )
    assert [g.id for g in listed.items] == [group.id]


async def test_only_approved_groups_are_exported_unless_the_project_allows_drafts(
    m: World,
) -> None:
    series = m.pacs.add_series(m.annotation.study_uid, m.annotation.series_uid or "", images=1)
    group = m.seed_group(1)
    m.seed_masks(group, [0], sop_uids=[series.instances[0].sop_instance_uid])

    def export(**options: Any) -> Any:
        return m.export_use_cases(**options).export(
            m.call("ExportMaskGroup"), m.annotation.id, group.id, store_in_pacs=False,
            request_id="",
        )  # fmt: skip

    with pytest.raises(FailedPrecondition, match="only approved groups"):
        await export()
    assert m.tables.exports == {}
    project = m.w.db.tables.projects[m.project.id]
    m.w.db.tables.projects[m.project.id] = replace(project, export_unapproved=True)

    link = await export()

    assert link.export.mask_group_id == group.id


def test_a_rejected_group_never_goes_to_the_pacs() -> None:
    exportable(ReviewState.APPROVED, drafts_allowed=False)
    exportable(ReviewState.DRAFT, drafts_allowed=True)
    exportable(ReviewState.SUBMITTED, drafts_allowed=True)
    with pytest.raises(FailedPrecondition, match="only approved groups"):
        exportable(ReviewState.DRAFT, drafts_allowed=False)
    with pytest.raises(FailedPrecondition, match="was rejected"):
        exportable(ReviewState.REJECTED, drafts_allowed=True)


def test_a_comment_may_hold_lines_but_no_other_control_characters() -> None:
    assert comment(REJECT, "line one\nline two") == "line one\nline two"
    with pytest.raises(InvalidArgument, match="control characters"):
        comment(REJECT, "nul\x00byte")
