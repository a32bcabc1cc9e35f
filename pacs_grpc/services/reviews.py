"""Use cases of the review step, for annotations and mask groups alike: submit, approve, reject.

Annotators submit a draft (or a rejected item, once changed); reviewers and owners approve or
reject what was submitted; nobody approves their own work. Each transition is audited (its RPC's
row), recorded (an annotation's as a revision; a group's on its row) and announced on Watch, in
one transaction.
"""

from __future__ import annotations

from typing import Generic

from pacs_grpc.domain import annotation_rules, validation
from pacs_grpc.domain.annotation import Annotation, EventType, RevisionAction
from pacs_grpc.domain.errors import FailedPrecondition, InvalidArgument
from pacs_grpc.domain.masks import MaskGroup
from pacs_grpc.domain.review import Review, ReviewStep, comment, next_state, not_own_work
from pacs_grpc.services.annotation_access import (
    accessible_annotation,
    check_version,
    record_change,
)
from pacs_grpc.services.context import AuditedTransactions, CallContext
from pacs_grpc.services.mask_access import authorized_group
from pacs_grpc.services.ports import (
    AnnotationStore,
    EventRecorder,
    GroupAccessLookup,
    MaskStore,
    TxT,
)

_ACTION = {
    ReviewStep.SUBMIT: RevisionAction.SUBMITTED,
    ReviewStep.APPROVE: RevisionAction.APPROVED,
    ReviewStep.REJECT: RevisionAction.REJECTED,
}


class ReviewUseCases(Generic[TxT]):
    """Review transitions of annotations and mask groups (see the module docstring)."""

    def __init__(
        self,
        transaction: AuditedTransactions[TxT],
        *,
        annotations: AnnotationStore[TxT],
        groups: GroupAccessLookup[TxT],
        masks: MaskStore[TxT],
        record_event: EventRecorder[TxT],
    ) -> None:
        self._transaction = transaction
        self._annotations = annotations
        self._groups = groups
        self._masks = masks
        self._record_event = record_event

    async def review_annotation(
        self, call: CallContext, annotation_id: int, step: ReviewStep, etag: str, note: str = ""
    ) -> Annotation:
        validation.positive_id("annotation_id", annotation_id)
        expected_version = annotation_rules.etag("etag", etag)
        if step is ReviewStep.APPROVE and expected_version is None:
            # Otherwise a change and a resubmission made after the reviewer read it would be
            # approved unseen.
            raise InvalidArgument("etag", "is required to approve: approve the revision you read")
        reason = comment(step, note)
        call.audit.touch(resource_ids=[annotation_id])
        async with self._transaction(call) as conn:
            current, _ = await accessible_annotation(
                self._annotations, conn, call, annotation_id, for_update=True
            )
            check_version(current, expected_version)
            state = next_state(current.review_state, step, "annotation")
            if step is ReviewStep.APPROVE:
                reviewer = call.caller.user_id
                authors = {current.user_id, current.reviewed_by or 0}
                if reviewer not in authors and await self._annotations.wrote_content(
                    conn, annotation_id, reviewer
                ):
                    authors.add(reviewer)
                not_own_work(step, reviewer, authors)
            review = Review(state, call.caller.user_id, None, reason)
            annotation = await self._annotations.review(conn, annotation_id, review, _ACTION[step])
            await record_change(
                self._transaction, self._record_event, conn, call,
                annotation=annotation, event_type=EventType.UPDATED,
            )  # fmt: skip
        return annotation

    async def review_group(
        self, call: CallContext, annotation_id: int, group_id: int, step: ReviewStep,
        note: str = "",
    ) -> MaskGroup:  # fmt: skip
        reason = comment(step, note)
        async with self._transaction(call) as conn:
            access = await authorized_group(
                self._groups, conn, call, annotation_id, group_id, for_update=True
            )
            group = access.group
            if step is ReviewStep.SUBMIT and not group.complete:
                raise FailedPrecondition(
                    "the mask group is not complete: every slice must be stored before review"
                )
            state = next_state(group.review.state, step, "mask group")
            if step is ReviewStep.APPROVE:
                # Its creator, whoever recorded any of its slices, and who submitted it.
                authors = {group.created_by or 0, group.review.user_id or 0}
                authors |= await self._masks.slice_authors(conn, group_id)
                not_own_work(step, call.caller.user_id, authors)
            reviewed = await self._masks.review_group(
                conn, group_id, Review(state, call.caller.user_id, None, reason)
            )
            await self._transaction.write_audit(conn, call)
            await self._record_event(
                conn,
                project_id=access.project_id,
                study_uid=access.study_uid,
                annotation_id=annotation_id,
                event_type=EventType.MASK_GROUP_REVIEWED,
                mask_group_id=group_id,
            )
        return reviewed
