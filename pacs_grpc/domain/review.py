"""The review step: what counts is what a reviewer other than its authors approved."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from pacs_grpc.domain.errors import FailedPrecondition, InvalidArgument, PermissionDenied

MAX_COMMENT = 2000


class ReviewState(enum.Enum):
    """The value is the review_state column's."""

    DRAFT = "draft"
    SUBMITTED = "submitted"
    APPROVED = "approved"
    REJECTED = "rejected"


class ReviewStep(enum.Enum):
    """A transition someone asks for; the value is the revision action it records."""

    SUBMIT = "submitted"
    APPROVE = "approved"
    REJECT = "rejected"


@dataclass(frozen=True)
class Review:
    """A state and its last transition: who, when and, for a rejection, why. A draft never
    submitted has no transition (user_id and changed_at None)."""

    state: ReviewState
    user_id: int | None = None
    changed_at: datetime | None = None
    comment: str | None = None


# From which states each step may start, and where it leads.
_FROM = {
    ReviewStep.SUBMIT: frozenset({ReviewState.DRAFT, ReviewState.REJECTED}),
    ReviewStep.APPROVE: frozenset({ReviewState.SUBMITTED}),
    ReviewStep.REJECT: frozenset({ReviewState.SUBMITTED}),
}
_TO = {
    ReviewStep.SUBMIT: ReviewState.SUBMITTED,
    ReviewStep.APPROVE: ReviewState.APPROVED,
    ReviewStep.REJECT: ReviewState.REJECTED,
}


def next_state(current: ReviewState, step: ReviewStep, what: str) -> ReviewState:
    """Where `step` leads from `current`, or FAILED_PRECONDITION saying why it cannot."""
    if current not in _FROM[step]:
        allowed = " or ".join(sorted(s.value for s in _FROM[step]))
        raise FailedPrecondition(
            f"the {what} is {current.value}; only one that is {allowed} can be {step.value}"
        )
    return _TO[step]


def comment(step: ReviewStep, value: str) -> str | None:
    """The comment a step carries: a rejection needs one, the other steps take none."""
    text = value.strip()
    if step is not ReviewStep.REJECT:
        if text:
            raise InvalidArgument("comment", "only a rejection takes a comment")
        return None
    if not text:
        raise InvalidArgument("comment", "is required to reject: say what to change")
    if len(text) > MAX_COMMENT:
        raise InvalidArgument("comment", f"must be at most {MAX_COMMENT} characters")
    # Lines are fine in a reviewer's note; other control characters (NUL above all, which
    # PostgreSQL text cannot hold) are not.
    if any(ord(c) < 32 and c not in "\n\r\t" for c in text):
        raise InvalidArgument("comment", "must not contain control characters")
    return text


def exportable(state: ReviewState, *, drafts_allowed: bool) -> None:
    """Only approved groups go to the PACS. A project may allow drafts and submitted groups
    (export_unapproved), never rejected ones."""
    if state is ReviewState.REJECTED:
        raise FailedPrecondition(
            "the mask group was rejected: only approved groups go to the PACS; correct it as a "
            "new version"
        )
    if state is not ReviewState.APPROVED and not drafts_allowed:
        raise FailedPrecondition(
            f"the mask group is {state.value}: only approved groups go to the PACS, unless the "
            "project's owners allow it (export_unapproved)"
        )


def not_own_work(step: ReviewStep, reviewer: int, authors: set[int]) -> None:
    """Nobody approves their own work, whatever their role, platform administrators too."""
    if step is ReviewStep.APPROVE and reviewer in authors:
        raise PermissionDenied("approval: nobody approves their own work; ask another reviewer")


def editable(state: ReviewState, what: str, correction: str) -> None:
    """Approved content is frozen: a correction is made as `correction` (a new annotation, a
    new version of a mask group), which starts as a draft."""
    if state is ReviewState.APPROVED:
        raise FailedPrecondition(
            f"the {what} is approved and frozen; make the correction as {correction}, which "
            "starts as a draft"
        )
