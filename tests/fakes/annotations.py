"""In-memory annotations and their change events, with the semantics of
pacs_grpc/adapters/postgres/annotations.py, annotation_event_feed.py and annotation_events.py.

The rows live in the FakeDatabase's Tables (tests/fakes/database.py). What the adapters' SQL
does and these copy: annotations newest first by (created_at, id), keyset positions, the
`limit` the use case asks for (it asks limit + 1), `now()` as the transaction's start time,
foreign keys and annotation_annotation_instance_needs_series refused as server errors, the
member role joined into annotation reads, the byte budget of a list page, and a delete that
queues every object of the annotation's mask groups (masks, tickets not completed, exports)
and cascades the groups, as delete_group does (tests/fakes/masks.py, whose tables every
FakeAnnotationStore installs, as every database has them). Not modelled: concurrency (one
transaction at a time; locks are only recorded), savepoints, other CHECK constraints, jsonb's
exact text form (sizes are those of json.dumps with jsonb's separators), and the live feed:
FakeEventSource delivers only the events recorded before subscribing.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

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
from pacs_grpc.domain.annotation_rules import (
    AnnotationContent,
    Location,
    changed_fields,
    created_fields,
)
from pacs_grpc.domain.paging import BudgetedRows
from pacs_grpc.domain.review import Review, ReviewState
from tests.fakes.database import FakeDatabase, FakeIntegrityError, FakeTx, RecordedEvent
from tests.fakes.masks import drop_groups, install
from tests.fakes.masks import tables as mask_tables

_ANNOTATION_COLUMNS = frozenset(
    {
        "annotation_type", "annotation_data", "measurement_values", "viewer_software",
        "annotation_data_encoded", "measurement_values_encoded",
    }
)  # fmt: skip
# Migration 0010's trigger: a JSON column changed without its encoding drops the old one.
_ENCODED_COLUMN = {
    "annotation_data": "annotation_data_encoded",
    "measurement_values": "measurement_values_encoded",
}


# Changed content is a draft again (migration 0014).
_BACK_TO_DRAFT: dict[str, Any] = {
    "review_state": ReviewState.DRAFT,
    "review_comment": None,
    "reviewed_by": None,
    "reviewed_at": None,
}


class FakeAnnotationStore:
    """annotation_annotation (adapters/postgres/annotations.py)."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db
        install(db)

    async def insert(
        self,
        conn: FakeTx,
        *,
        project_id: int,
        user_id: int,
        where: Location,
        content: AnnotationContent,
    ) -> Annotation:
        tx = self._db.enter("annotations.insert", conn)
        tables = self._db.tables
        if project_id not in tables.projects or user_id not in tables.users:
            raise FakeIntegrityError("insert violates a foreign key of annotation_annotation")
        if where.instance_uid is not None and where.series_uid is None:
            raise FakeIntegrityError("violates annotation_annotation_instance_needs_series")
        annotation = Annotation(
            id=self._db.next_id("annotations"),
            project_id=project_id,
            user_id=user_id,
            study_uid=where.study_uid,
            series_uid=where.series_uid,
            instance_uid=where.instance_uid,
            annotation_type=content.annotation_type,
            annotation_data=copy.deepcopy(content.annotation_data),
            measurement_values=copy.deepcopy(content.measurement_values),
            viewer_software=content.viewer_software,
            row_version=1,
            created_at=tx.started_at,
            updated_at=tx.started_at,
            annotation_data_encoded=content.annotation_data_encoded,
            measurement_values_encoded=content.measurement_values_encoded,
        )
        tables.annotations[annotation.id] = annotation
        self._db.wrote(tx, "annotations")
        note = RevisionNote(RevisionAction.CREATED, user_id, created_fields(content))
        self._append_revision(annotation, note)
        return _as_answered(annotation)

    def _append_revision(
        self, annotation: Annotation, note: RevisionNote, restored_from: int | None = None
    ) -> None:
        revision = AnnotationRevision(
            annotation_id=annotation.id,
            revision=annotation.row_version,
            action=note.action,
            changed_fields=note.changed_fields,
            user_id=note.user_id,
            restored_from=restored_from,
            created_at=annotation.updated_at,
            review_state=annotation.review_state,
        )
        history = self._db.tables.revisions.setdefault(annotation.id, [])
        # The primary key (annotation_id, revision).
        if any(kept.revision == revision.revision for kept, _ in history):
            raise FakeIntegrityError("duplicate key value violates annotation_revision_pkey")
        history.append((revision, copy.deepcopy(annotation)))

    async def get_with_access(
        self,
        conn: FakeTx,
        annotation_id: int,
        user_id: int,
        *,
        for_update: bool = False,
        include_deleted: bool = False,
    ) -> AnnotationAccess | None:
        tx = self._db.enter("annotations.get_with_access", conn)
        tables = self._db.tables
        annotation = tables.annotations.get(annotation_id)
        if annotation is None or (annotation.deleted_at is not None and not include_deleted):
            return None
        if for_update:
            if tx.autocommit:
                raise AssertionError("FOR UPDATE outside a transaction locks nothing")
            tx.locks.append(("annotation", annotation_id))
        else:
            annotation = _as_answered(annotation)
        project = tables.projects.get(annotation.project_id)
        if project is None:
            return None
        member = tables.members.get((annotation.project_id, user_id))
        return AnnotationAccess(annotation, member.role if member else None, project.is_active)

    async def update(
        self, conn: FakeTx, annotation_id: int, changes: Mapping[str, Any], note: RevisionNote
    ) -> Annotation:
        tx = self._db.enter("annotations.update", conn)
        if not changes or not set(changes) <= _ANNOTATION_COLUMNS:
            raise ValueError(f"not updatable: {set(changes) - _ANNOTATION_COLUMNS}")
        current = self._db.tables.annotations.get(annotation_id)
        assert current is not None  # the adapter asserts that the row came back
        stale: dict[str, Any] = {
            encoded: None
            for column, encoded in _ENCODED_COLUMN.items()
            if column in changes and encoded not in changes
        }
        updated = replace(
            current,
            **stale,
            **copy.deepcopy(dict(changes)),
            **_BACK_TO_DRAFT,
            row_version=current.row_version + 1,
            updated_at=tx.started_at,
        )
        self._db.tables.annotations[annotation_id] = updated
        self._db.wrote(tx, "annotations")
        self._append_revision(updated, note)
        return _as_answered(updated)

    async def restore(
        self, conn: FakeTx, annotation_id: int, revision: int, user_id: int
    ) -> Annotation | None:
        self._db.enter("annotations.restore", conn)
        source = self._revision(annotation_id, revision)
        current = self._db.tables.annotations.get(annotation_id)
        if source is None or current is None:
            return None
        content = {name: getattr(source[1], name) for name in _ANNOTATION_COLUMNS}
        note = RevisionNote(RevisionAction.RESTORED, user_id, changed_fields(current, content))
        tx = self._db.enter("annotations.update", conn)
        restored = replace(
            current,
            **copy.deepcopy(content),
            **_BACK_TO_DRAFT,
            row_version=current.row_version + 1,
            updated_at=tx.started_at,
        )
        self._db.tables.annotations[annotation_id] = restored
        self._db.wrote(tx, "annotations")
        self._append_revision(restored, note, restored_from=revision)
        return _as_answered(restored)

    async def get_revision(
        self, conn: FakeTx, annotation_id: int, revision: int
    ) -> Annotation | None:
        self._db.enter("annotations.get_revision", conn)
        found = self._revision(annotation_id, revision)
        if found is None:
            return None
        kept, annotation = found
        return _as_answered(
            replace(annotation, row_version=kept.revision, updated_at=kept.created_at)
        )

    async def list_revisions(
        self, conn: FakeTx, annotation_id: int, *, before: int | None, limit: int
    ) -> list[AnnotationRevision]:
        self._db.enter("annotations.list_revisions", conn)
        history = self._db.tables.revisions.get(annotation_id, [])
        newest_first = sorted((kept for kept, _ in history), key=lambda r: -r.revision)
        return [r for r in newest_first if before is None or r.revision < before][:limit]

    def _revision(
        self, annotation_id: int, revision: int
    ) -> tuple[AnnotationRevision, Annotation] | None:
        history = self._db.tables.revisions.get(annotation_id, [])
        return next((kept for kept in history if kept[0].revision == revision), None)

    async def move_to_trash(
        self, conn: FakeTx, annotation_id: int, user_id: int, *, trash: bool
    ) -> Annotation:
        tx = self._db.enter("annotations.move_to_trash", conn)
        current = self._db.tables.annotations.get(annotation_id)
        assert current is not None  # the adapter asserts that the row came back
        moved = replace(
            current,
            deleted_at=tx.started_at if trash else None,
            row_version=current.row_version + 1,
            updated_at=tx.started_at,
        )
        self._db.tables.annotations[annotation_id] = moved
        self._db.wrote(tx, "annotations")
        action = RevisionAction.DELETED if trash else RevisionAction.UNDELETED
        self._append_revision(moved, RevisionNote(action, user_id, ()))
        return _as_answered(moved)

    async def purge(self, conn: FakeTx, annotation_ids: Sequence[int]) -> int:
        tx = self._db.enter("annotations.purge", conn)
        t = mask_tables(self._db)
        # The groups' objects go to the outbox first; the groups go with the annotation.
        groups = [g.id for g in t.groups.values() if g.annotation_id in annotation_ids]
        queued = drop_groups(self._db, tx, groups)
        for annotation_id in annotation_ids:
            if t.annotations.pop(annotation_id, None) is not None:
                self._db.wrote(tx, "annotations")
                # The revisions go by their foreign key's cascade.
                self._db.tables.revisions.pop(annotation_id, None)
        return queued

    async def expired_trash(self, conn: FakeTx, retention: timedelta, limit: int) -> list[int]:
        tx = self._db.enter("annotations.expired_trash", conn)
        cutoff = tx.started_at - retention
        expired = sorted(
            (a for a in self._db.tables.annotations.values()
             if a.deleted_at is not None and a.deleted_at < cutoff),
            key=lambda a: a.deleted_at or cutoff,
        )[:limit]  # fmt: skip
        tx.locks.extend(("annotation", a.id) for a in expired)
        return [a.id for a in expired]

    async def review(
        self, conn: FakeTx, annotation_id: int, review: Review, action: RevisionAction
    ) -> Annotation:
        tx = self._db.enter("annotations.review", conn)
        assert review.user_id is not None
        current = self._db.tables.annotations[annotation_id]
        reviewed = replace(
            current,
            review_state=review.state,
            reviewed_by=review.user_id,
            reviewed_at=tx.started_at,
            review_comment=review.comment,
            row_version=current.row_version + 1,
            updated_at=tx.started_at,
        )
        self._db.tables.annotations[annotation_id] = reviewed
        self._db.wrote(tx, "annotations")
        self._append_revision(reviewed, RevisionNote(action, review.user_id, ()))
        return _as_answered(reviewed)

    async def wrote_content(self, conn: FakeTx, annotation_id: int, user_id: int) -> bool:
        self._db.enter("annotations.wrote_content", conn)
        content = {RevisionAction.CREATED, RevisionAction.UPDATED, RevisionAction.RESTORED}
        return any(
            r.user_id == user_id and r.action in content
            for r, _ in self._db.tables.revisions.get(annotation_id, [])
        )

    async def list_page(
        self,
        conn: FakeTx,
        filters: ListFilter,
        *,
        after: tuple[datetime, int] | None,
        limit: int,
        budget_bytes: int,
    ) -> BudgetedRows[Annotation]:
        self._db.enter("annotations.list_page", conn)
        matching = sorted(
            (a for a in self._db.tables.annotations.values() if _matches(a, filters, after)),
            key=lambda a: (a.created_at, a.id),
            reverse=True,
        )[:limit]
        # A row's JSON is read while the rows before it stayed within the budget; the rows
        # past it only say that more follow.
        within: list[Annotation] = []
        before_bytes = 0
        for annotation in matching:
            if before_bytes >= budget_bytes:
                break
            within.append(_as_answered(annotation))
            before_bytes += json_bytes(annotation)
        return BudgetedRows(within, cut=len(within) < len(matching))


def _matches(a: Annotation, f: ListFilter, after: tuple[datetime, int] | None) -> bool:
    equal = {
        "study_uid": a.study_uid,
        "series_uid": a.series_uid,
        "instance_uid": a.instance_uid,
        "annotation_type": a.annotation_type,
        "user_id": a.user_id,
    }
    return (
        (f.project_ids is None or a.project_id in f.project_ids)
        and all(getattr(f, name) in (None, value) for name, value in equal.items())
        and (f.created_after is None or a.created_at >= f.created_after)
        and (f.created_before is None or a.created_at < f.created_before)
        and (after is None or (a.created_at, a.id) < after)
        and (f.include_deleted or a.deleted_at is None)
        and f.review_state in (None, a.review_state)
    )


def json_bytes(annotation: Annotation) -> int:
    """The generated column json_bytes (migration 0006), with jsonb's separators."""

    def size(value: Any) -> int:
        return len(json.dumps(value, ensure_ascii=False, separators=(", ", ": ")).encode())

    measurements = annotation.measurement_values
    return size(annotation.annotation_data) + (0 if measurements is None else size(measurements))


class FakeEventRecorder:
    """record_event: appends to annotation_event; must be the transaction's last write."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    async def __call__(
        self,
        conn: FakeTx,
        *,
        project_id: int,
        study_uid: str,
        annotation_id: int,
        event_type: EventType,
        mask_group_id: int | None = None,
    ) -> int:
        tx = self._db.enter("events.record", conn)
        event = RecordedEvent(
            self._db.next_id("events"),
            project_id,
            study_uid,
            annotation_id,
            event_type,
            tx.started_at,
            mask_group_id,
        )
        self._db.tables.events.append(event)
        tx.locks.append(("project_feed", project_id))
        self._db.wrote(tx, "events")
        return event.event_id


@dataclass(frozen=True)
class Subscription:
    project_id: int
    study_uid: str | None
    after_event_id: int


class FakeEventSource:
    """subscribe(): the project's recorded events after the resume point, each with its
    annotation as it is now (None once deleted), then the end of the stream. Events recorded
    after subscribing are not delivered: the live feed is not modelled."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db
        self.subscriptions: list[Subscription] = []
        self.open_subscriptions = 0

    def _group_review(self, group_id: int | None) -> Review | None:
        group = mask_tables(self._db).groups.get(group_id) if group_id is not None else None
        return group.review if group is not None else None

    @asynccontextmanager
    async def subscribe(
        self, project_id: int, *, study_uid: str | None, after_event_id: int
    ) -> AsyncIterator[AsyncIterator[AnnotationEvent]]:
        self.subscriptions.append(Subscription(project_id, study_uid, after_event_id))
        annotations = self._db.tables.annotations
        events = [
            AnnotationEvent(
                event_id=e.event_id,
                project_id=e.project_id,
                study_uid=e.study_uid,
                annotation_id=e.annotation_id,
                event_type=e.event_type,
                occurred_at=e.occurred_at,
                annotation=_same_project(annotations.get(e.annotation_id), e.project_id),
                mask_group_id=e.mask_group_id,
                mask_group_review=self._group_review(e.mask_group_id),
            )
            for e in self._db.tables.events
            if e.project_id == project_id
            and e.event_id > after_event_id
            and study_uid in (None, e.study_uid)
        ]
        self.open_subscriptions += 1
        try:
            yield _iterate(events)
        finally:
            self.open_subscriptions -= 1


def _same_project(annotation: Annotation | None, project_id: int) -> Annotation | None:
    """The feed's join: the annotation while it is live and in the event's project."""
    if annotation is None or annotation.deleted_at is not None:
        return None
    return annotation if annotation.project_id == project_id else None


async def _iterate(events: list[AnnotationEvent]) -> AsyncIterator[AnnotationEvent]:
    for event in events:
        yield event


def _as_answered(annotation: Annotation) -> Annotation:
    """What the adapter's ANSWER_COLUMNS read: no JSON where its encoding was kept."""
    return replace(
        annotation,
        annotation_data=None
        if annotation.annotation_data_encoded is not None
        else annotation.annotation_data,
        measurement_values=None
        if annotation.measurement_values_encoded is not None
        else annotation.measurement_values,
    )
