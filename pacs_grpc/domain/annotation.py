"""Annotations on DICOM studies, series and instances, and their change events."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pacs_grpc.domain.identity import ProjectRole
from pacs_grpc.domain.review import Review, ReviewState


@dataclass(frozen=True)
class Annotation:
    """One annotation; field names are the columns of annotation_annotation."""

    id: int
    project_id: int
    user_id: int
    study_uid: str
    series_uid: str | None
    instance_uid: str | None
    annotation_type: str
    # None only where a read that merely answers skipped it for its encoding (below).
    annotation_data: dict[str, Any] | None
    measurement_values: Any
    viewer_software: str | None
    row_version: int
    created_at: datetime
    updated_at: datetime
    # The JSON fields as the API encoded them when they were written, opaque to everything
    # but the edge, which answers reads with them instead of encoding the JSON again. None:
    # none was kept (written by other means); the JSON fields above are the truth. Reads
    # that only answer leave out the JSON where its encoding is here.
    annotation_data_encoded: bytes | None = None
    measurement_values_encoded: bytes | None = None
    # When it went to the trash; None while it is live.
    deleted_at: datetime | None = None
    # The review state and its last transition (see `review`).
    review_state: ReviewState = ReviewState.DRAFT
    review_comment: str | None = None
    reviewed_by: int | None = None
    reviewed_at: datetime | None = None

    def __post_init__(self) -> None:
        # Rows arrive with the column's text.
        if not isinstance(self.review_state, ReviewState):
            object.__setattr__(self, "review_state", ReviewState(self.review_state))

    @property
    def etag(self) -> str:
        """Opaque to clients: pass it back unchanged on update or delete."""
        return f"v{self.row_version}"

    @property
    def review(self) -> Review:
        return Review(self.review_state, self.reviewed_by, self.reviewed_at, self.review_comment)


class RevisionAction(enum.Enum):
    """The write that made a revision; the value is annotation_revision.action."""

    CREATED = "created"
    UPDATED = "updated"
    RESTORED = "restored"
    DELETED = "deleted"
    UNDELETED = "undeleted"
    SUBMITTED = "submitted"
    APPROVED = "approved"
    REJECTED = "rejected"


@dataclass(frozen=True)
class AnnotationRevision:
    """What one write of an annotation left, from annotation_revision; never changed after.
    `revision` is the annotation's row_version after the write, so the etag's number."""

    annotation_id: int
    revision: int
    action: RevisionAction
    # The content fields (MUTABLE_FIELDS) the write changed; for a creation, those it set.
    changed_fields: tuple[str, ...]
    # None: unknown (changes made before the server kept history).
    user_id: int | None
    # For RESTORED: the revision whose content was written back.
    restored_from: int | None
    created_at: datetime
    # The review state the write left.
    review_state: ReviewState = ReviewState.DRAFT


@dataclass(frozen=True)
class RevisionNote:
    """Who made a write and how, recorded with the revision the write appends."""

    action: RevisionAction
    user_id: int
    changed_fields: tuple[str, ...]


@dataclass(frozen=True)
class AnnotationAccess:
    """An annotation with what the caller may do to it, read in one query."""

    annotation: Annotation
    caller_role: ProjectRole | None
    project_active: bool


class EventType(enum.Enum):
    """What an event says happened to its annotation; the value is annotation_event.event_type."""

    CREATED = "created"
    UPDATED = "updated"
    # Moved to the trash, or purged.
    DELETED = "deleted"
    # Brought back from the trash.
    RESTORED = "restored"
    # One of its mask groups was submitted, approved or rejected.
    MASK_GROUP_REVIEWED = "mask_group_reviewed"


@dataclass(frozen=True)
class AnnotationEvent:
    """One change of an annotation, from annotation_event. Within a project, event_id order is
    commit order, so a watcher resumes after the last event_id it received and misses nothing.
    `study_uid` is the annotation's, kept after it is deleted.
    """

    event_id: int
    project_id: int
    study_uid: str
    annotation_id: int
    event_type: EventType
    occurred_at: datetime
    # The annotation as it is when the event is read; None once it is deleted.
    annotation: Annotation | None
    # For MASK_GROUP_REVIEWED: the group, and its review as it is when the event is read (None
    # once the group is gone).
    mask_group_id: int | None = None
    mask_group_review: Review | None = None


@dataclass(frozen=True)
class ListFilter:
    """Equality and range filters of ListAnnotations; None means "any"."""

    project_ids: tuple[int, ...] | None  # None: every project (platform administrators)
    study_uid: str | None = None
    series_uid: str | None = None
    instance_uid: str | None = None
    annotation_type: str | None = None
    user_id: int | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    # Also annotations in the trash (ListAnnotations' show_deleted).
    include_deleted: bool = False
    review_state: ReviewState | None = None
