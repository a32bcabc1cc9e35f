"""Use cases of an annotation's history and trash: its revisions, restoring one, deleting to
the trash or for good, and bringing it back.

Every write appends its revision in the statement that changes the annotation (the store's
promise), records its change event last, and is audited in the same transaction.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Generic

from pacs_grpc.domain import annotation_rules, paging, review, validation
from pacs_grpc.domain.annotation import Annotation, AnnotationRevision, EventType
from pacs_grpc.domain.errors import FailedPrecondition, NotFound, PermissionDenied
from pacs_grpc.domain.identity import ProjectRole
from pacs_grpc.domain.paging import Page
from pacs_grpc.domain.review import ReviewState
from pacs_grpc.services.annotation_access import accessible_annotation, check_version, record_change
from pacs_grpc.services.context import AuditedTransactions, CallContext
from pacs_grpc.services.ports import AnnotationStore, Clock, EventRecorder, TxT

# What a correction of approved content is made as.
CORRECTION = "a new annotation"


class AnnotationHistory(Generic[TxT]):
    """ListAnnotationRevisions, RestoreAnnotationRevision, DeleteAnnotation (to the trash, or a
    purge by an owner) and UndeleteAnnotation (within `trash_retention`)."""

    def __init__(
        self,
        transaction: AuditedTransactions[TxT],
        *,
        annotations: AnnotationStore[TxT],
        record_event: EventRecorder[TxT],
        max_page_size: int,
        clock: Clock,
        trash_retention: timedelta,
    ) -> None:
        self._transaction = transaction
        self._annotations = annotations
        self._record_event = record_event
        self._max_page_size = max_page_size
        self._clock = clock
        self._trash_retention = trash_retention

    async def list_revisions(
        self, call: CallContext, annotation_id: int, page_size: int, page_token: str
    ) -> Page[AnnotationRevision]:
        """The annotation's history, newest first."""
        validation.positive_id("annotation_id", annotation_id)
        limit = validation.page_size("page_size", page_size, self._max_page_size)
        fingerprint = paging.filters_fingerprint("revisions", annotation_id)
        position = paging.decode(page_token, fingerprint, arity=1)
        call.audit.touch(resource_ids=[annotation_id])
        async with self._transaction.read(call) as conn:
            await accessible_annotation(self._annotations, conn, call, annotation_id)
            rows = await self._annotations.list_revisions(
                conn, annotation_id, before=position[0] if position else None, limit=limit + 1
            )
        return Page.of(rows, limit, fingerprint, lambda r: [r.revision])

    async def restore(
        self, call: CallContext, annotation_id: int, revision: int, etag: str
    ) -> Annotation:
        """Write an earlier revision's content back as a new revision; history stays as it is."""
        validation.positive_id("annotation_id", annotation_id)
        validation.positive_id("revision", revision)
        expected_version = annotation_rules.etag("etag", etag)
        call.audit.touch(resource_ids=[annotation_id])
        async with self._transaction(call) as conn:
            current, _ = await accessible_annotation(
                self._annotations, conn, call, annotation_id, for_update=True
            )
            check_version(current, expected_version)
            review.editable(current.review_state, "annotation", CORRECTION)
            annotation = await self._annotations.restore(
                conn, annotation_id, revision, call.caller.user_id
            )
            if annotation is None:
                raise NotFound("revision not found")
            await self._change(conn, call, annotation, EventType.UPDATED)
        return annotation

    async def delete(
        self, call: CallContext, annotation_id: int, etag: str, *, purge: bool = False
    ) -> int:
        """Move to the trash or, with `purge` (owners only), delete for good; returns how many
        stored objects were queued for deletion (none for the trash, which keeps them)."""
        validation.positive_id("annotation_id", annotation_id)
        expected_version = annotation_rules.etag("etag", etag)
        call.audit.touch(resource_ids=[annotation_id])
        if purge:
            # The audit row says this was the one hard delete, not a move to the trash.
            call.audit.touch(resource_type="annotation_purge")
        async with self._transaction(call) as conn:
            current, role = await accessible_annotation(
                self._annotations, conn, call, annotation_id, for_update=True, include_deleted=purge
            )
            check_version(current, expected_version)
            if current.review_state is ReviewState.APPROVED and role is not ProjectRole.OWNER:
                raise FailedPrecondition(
                    "the annotation is approved and frozen; only the project's owners may delete it"
                )
            if not purge:
                trashed = await self._annotations.move_to_trash(
                    conn, annotation_id, call.caller.user_id, trash=True
                )
                await self._change(conn, call, trashed, EventType.DELETED)
                return 0
            if role is not ProjectRole.OWNER:
                raise PermissionDenied("purge: only the project's owners may purge")
            queued = await self._annotations.purge(conn, [annotation_id])
            if current.deleted_at is None:
                await self._change(conn, call, current, EventType.DELETED)
        return queued

    async def undelete(self, call: CallContext, annotation_id: int, etag: str) -> Annotation:
        """Bring an annotation back from the trash while its retention lasts."""
        validation.positive_id("annotation_id", annotation_id)
        expected_version = annotation_rules.etag("etag", etag)
        call.audit.touch(resource_ids=[annotation_id])
        async with self._transaction(call) as conn:
            current, _ = await accessible_annotation(
                self._annotations, conn, call, annotation_id, for_update=True, include_deleted=True
            )
            if current.deleted_at is None:
                raise FailedPrecondition("annotation_id: the annotation is not in the trash")
            check_version(current, expected_version)
            if current.deleted_at <= self._clock.now() - self._trash_retention:
                raise FailedPrecondition(
                    "annotation_id: the annotation's time in the trash is up; it is being purged"
                )
            annotation = await self._annotations.move_to_trash(
                conn, annotation_id, call.caller.user_id, trash=False
            )
            await self._change(conn, call, annotation, EventType.RESTORED)
        return annotation

    async def _change(
        self, conn: TxT, call: CallContext, annotation: Annotation, event_type: EventType
    ) -> None:
        await record_change(
            self._transaction, self._record_event, conn, call,
            annotation=annotation, event_type=event_type,
        )  # fmt: skip
