"""Annotations and their change events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any, Protocol

from pacs_grpc.domain.annotation import (
    Annotation,
    AnnotationAccess,
    AnnotationEvent,
    AnnotationRevision,
    EventType,
    ListFilter,
    RevisionAction,
    RevisionNote,
)
from pacs_grpc.domain.annotation_rules import AnnotationContent, Location
from pacs_grpc.domain.paging import BudgetedRows
from pacs_grpc.domain.review import Review
from pacs_grpc.services.ports.transactions import TxT_contra


class AnnotationAccessLookup(Protocol[TxT_contra]):
    """An annotation with the caller's role in its project and whether the project is active, read
    together, so the access check sees one snapshot.
    """

    async def get_with_access(
        self, conn: TxT_contra, annotation_id: int, user_id: int, *, for_update: bool = False,
        include_deleted: bool = False,
    ) -> AnnotationAccess | None:  # fmt: skip
        """The annotation with the user's role in its project, read in one query; one in the
        trash only with include_deleted."""
        ...


class TrashPurger(Protocol[TxT_contra]):
    """Hard deletes, the only ones, of one kind of resource (annotations, mask groups): those
    whose time in the trash is up, and purges."""

    async def expired_trash(self, conn: TxT_contra, retention: timedelta, limit: int) -> list[int]:
        """Up to `limit` annotations in the trash for longer than `retention`, locked."""
        ...

    async def purge(self, conn: TxT_contra, annotation_ids: Sequence[int]) -> int:
        """Deletes the annotations for good, with their history, groups and masks, and queues
        the groups' stored objects for deletion; how many objects were queued."""
        ...


class AnnotationStore(
    AnnotationAccessLookup[TxT_contra], TrashPurger[TxT_contra], Protocol[TxT_contra]
):
    """Annotations and their revisions, in the transaction the caller passes. Every write
    appends the revision it leaves in the same statement (insert: CREATED by its author).
    `purge` queues the stored objects of the annotations' groups in that transaction, so they
    are deleted only if it commits.
    """

    async def insert(
        self, conn: TxT_contra, *, project_id: int, user_id: int, where: Location,
        content: AnnotationContent,
    ) -> Annotation: ...  # fmt: skip
    async def update(
        self, conn: TxT_contra, annotation_id: int, changes: Mapping[str, Any], note: RevisionNote
    ) -> Annotation:
        """Sets the whitelisted columns named in `changes`, moves the etag on and appends the
        revision the write leaves, with `note`."""
        ...

    async def restore(
        self, conn: TxT_contra, annotation_id: int, revision: int, user_id: int
    ) -> Annotation | None:
        """Writes revision `revision`'s content back as a new RESTORED revision by `user_id`;
        None when the annotation has no such revision."""
        ...

    async def get_revision(
        self, conn: TxT_contra, annotation_id: int, revision: int
    ) -> Annotation | None:
        """The annotation as that revision left it: its etag and updated_at are the revision's."""
        ...

    async def list_revisions(
        self, conn: TxT_contra, annotation_id: int, *, before: int | None, limit: int
    ) -> list[AnnotationRevision]:
        """Up to `limit` revisions below `before` (None: from the newest), newest first."""
        ...

    async def move_to_trash(
        self, conn: TxT_contra, annotation_id: int, user_id: int, *, trash: bool
    ) -> Annotation:
        """Into the trash (trash=True) or back out, as a DELETED or UNDELETED revision by
        `user_id`; groups, history and objects stay."""
        ...

    async def review(
        self, conn: TxT_contra, annotation_id: int, review: Review, action: RevisionAction
    ) -> Annotation:
        """Records one review transition, by `review.user_id`, as a revision with `action`."""
        ...

    async def wrote_content(self, conn: TxT_contra, annotation_id: int, user_id: int) -> bool:
        """Whether the user created, changed or restored any of the annotation's content."""
        ...

    async def list_page(
        self, conn: TxT_contra, filters: ListFilter, *, after: tuple[datetime, int] | None,
        limit: int, budget_bytes: int,
    ) -> BudgetedRows[Annotation]:  # fmt: skip
        """Up to `limit` rows after the (created_at, id) position, newest first, stopping
        early once their annotation JSON passes `budget_bytes`."""
        ...


class EventRecorder(Protocol[TxT_contra]):
    """Appends a change event in the writer's transaction (the outbox of live updates)."""

    async def __call__(
        self, conn: TxT_contra, *, project_id: int, study_uid: str, annotation_id: int,
        event_type: EventType, mask_group_id: int | None = None,
    ) -> int: ...  # fmt: skip


class EventSource(Protocol):
    """Live change events of a project, from just after `after_event_id` on, with no gap."""

    def subscribe(
        self, project_id: int, *, study_uid: str | None, after_event_id: int
    ) -> AbstractAsyncContextManager[AsyncIterator[AnnotationEvent]]: ...


class LiveEvents(EventSource, Protocol):
    """An event source that runs while the server serves; stopping it ends every stream."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
