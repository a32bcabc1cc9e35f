"""In-memory mask groups, masks, upload tickets, SEG exports and the deletion outbox, with the
semantics of pacs_grpc/adapters/postgres/masks.py, exports.py and imports.py.

The rows live in MaskTables, a Tables (tests/fakes/database.py) with the mask tables added, so
FakeTransactions rolls them back with everything else; `install` puts it in place of a fresh
FakeDatabase's tables. What the SQL does and these copy: the group row joined with its
annotation, project and the caller's membership (group_with_access); completed_slices counted
from the masks; lists by id or slice_index after a position, with the `limit` asked for;
record_masks completing only tickets still pending, in slice order, and refusing a second mask
on one slice (FailedPrecondition, as the unique-violation mapping does), and a missing group
failing its foreign key only when a row is inserted; delete_group, and an annotation's delete
(tests/fakes/annotations.py) through drop_groups, queueing every mask, every pending ticket and
every export before the rows go (cascade); exports newest first. Not modelled: row locks
between concurrent transactions (locks are only recorded), CHECK constraints.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from pacs_grpc.domain.errors import AlreadyExists, FailedPrecondition
from pacs_grpc.domain.exports import MaskGroupExport, NewExport
from pacs_grpc.domain.masks import (
    GroupAccess,
    GroupFields,
    Mask,
    MaskGroup,
    NewMask,
    PendingUpload,
    SliceDeclaration,
    VersionOf,
)
from pacs_grpc.domain.review import Review, ReviewState
from tests.fakes.database import FakeDatabase, FakeIntegrityError, FakeTx, Tables


@dataclass
class OutboxRow:
    """storage_deletion_outbox: one object to delete, due at `next_attempt_at`."""

    id: int
    object_key: str
    next_attempt_at: datetime
    attempts: int = 0
    last_error: str | None = None


@dataclass
class MaskTables(Tables):
    groups: dict[int, MaskGroup] = field(default_factory=dict)
    uploads: dict[uuid.UUID, PendingUpload] = field(default_factory=dict)
    # (mask, the upload id it completed: None for pushed and imported masks)
    masks: dict[int, tuple[Mask, uuid.UUID | None]] = field(default_factory=dict)
    # annotation_mask.recorded_by (migration 0015): mask id -> who recorded it.
    mask_authors: dict[int, int] = field(default_factory=dict)
    exports: dict[int, MaskGroupExport] = field(default_factory=dict)
    outbox: list[OutboxRow] = field(default_factory=list)


def install(db: FakeDatabase) -> MaskTables:
    """Give a fresh database the mask tables (before anything is seeded)."""
    if not isinstance(db.tables, MaskTables):
        if db.tables != Tables():
            raise RuntimeError("install the mask tables before seeding the database")
        db.tables = MaskTables()
    return db.tables


def tables(db: FakeDatabase) -> MaskTables:
    found = db.tables
    if not isinstance(found, MaskTables):
        raise RuntimeError("the database has no mask tables: call tests.fakes.masks.install")
    return found


def queue(db: FakeDatabase, keys: Sequence[str], due_at: datetime) -> None:
    """Append outbox rows (ids from the outbox's own sequence, as the identity column)."""
    rows = tables(db).outbox
    rows.extend(OutboxRow(db.next_id("outbox"), key, due_at) for key in keys)


def queued_keys(db: FakeDatabase) -> list[str]:
    """Every object key in the outbox, due or not, in the order queued."""
    return [row.object_key for row in tables(db).outbox]


def drop_groups(db: FakeDatabase, tx: FakeTx, group_ids: Collection[int]) -> int:
    """What deleting groups does, alone (delete_group) or with their annotation: queue every
    mask, every ticket not completed and every export of the groups (in that order, as the
    adapters' `union all`), then the cascade removes the groups with those rows. Returns how
    many keys were queued."""
    t = tables(db)
    gone = set(group_ids)
    keys = [m.file_path for m, _ in t.masks.values() if m.mask_group_id in gone]
    keys += [
        u.object_key
        for u in t.uploads.values()
        if u.mask_group_id in gone and u.completed_at is None
    ]
    keys += [e.object_key for e in t.exports.values() if e.mask_group_id in gone]
    queue(db, keys, tx.started_at)
    t.masks = {i: row for i, row in t.masks.items() if row[0].mask_group_id not in gone}
    t.uploads = {i: u for i, u in t.uploads.items() if u.mask_group_id not in gone}
    t.exports = {i: e for i, e in t.exports.items() if e.mask_group_id not in gone}
    removed = [t.groups.pop(group_id, None) for group_id in gone]
    if any(group is not None for group in removed):
        db.wrote(tx, "mask_groups")
    if keys:
        db.wrote(tx, "outbox")
    return len(keys)


def seed_group(
    db: FakeDatabase, annotation_id: int, *, slice_count: int = 3, created_by: int | None = None,
    **fields: Any,
) -> MaskGroup:  # fmt: skip
    """A group written straight into the tables, outside any transaction."""
    now = db.clock.now()
    values = GroupFields(
        group_name=fields.get("group_name", "lungs"), model_name=fields.get("model_name"),
        version=None, modality=None, slice_count=slice_count, mask_type="segmentation",
        description=None, segments=fields.get("segments", ()),
    )  # fmt: skip
    group_id = db.next_id("mask_groups")
    group = MaskGroup(
        id=group_id, annotation_id=annotation_id, created_by=created_by, created_at=now,
        updated_at=now, completed_slices=0, lineage_id=group_id, **values.__dict__,
    )  # fmt: skip
    tables(db).groups[group.id] = group
    return group


def seed_mask(
    db: FakeDatabase, group_id: int, slice_index: int, key: str, *, size: int = 8,
    checksum: str | None = None, version: str | None = None, sop_uid: str | None = None,
) -> Mask:  # fmt: skip
    """A mask recorded straight into the tables (as pushed: no ticket), outside any transaction."""
    mask = Mask(
        id=db.next_id("masks"), mask_group_id=group_id, slice_index=slice_index,
        sop_instance_uid=sop_uid, label_name=None, file_path=key, mime_type="image/png",
        file_size=size, checksum=checksum, width=8, height=8, created_at=db.clock.now(),
        object_version=version,
    )  # fmt: skip
    tables(db).masks[mask.id] = (mask, None)
    return mask


class FakeMaskStore:
    """annotation_mask_group, mask_upload and annotation_mask (MaskRepository)."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db
        install(db)

    async def group_with_access(
        self, conn: FakeTx, annotation_id: int, group_id: int, user_id: int, *,
        for_update: bool = False, include_deleted: bool = False,
    ) -> GroupAccess | None:  # fmt: skip
        tx = self._db.enter("masks.group_with_access", conn)
        t = tables(self._db)
        group = t.groups.get(group_id)
        if group is None or group.annotation_id != annotation_id:
            return None
        if group.deleted_at is not None and not include_deleted:
            return None
        annotation = t.annotations.get(annotation_id)
        if annotation is not None and annotation.deleted_at is not None:
            return None  # the adapter joins live annotations only
        project = t.projects.get(annotation.project_id) if annotation else None
        if annotation is None or project is None:
            return None
        if for_update:
            tx.locks.append(("mask_group", group_id))
        member = t.members.get((project.id, user_id))
        return GroupAccess(
            self._counted(group),
            project.id,
            annotation.study_uid,
            member.role if member else None,
            project.is_active,
            annotation.series_uid,
            getattr(project, "export_unapproved", False),
        )

    async def insert_group(
        self, conn: FakeTx, annotation_id: int, values: GroupFields, created_by: int, *,
        version_of: VersionOf | None = None, client_id: str | None = None,
    ) -> MaskGroup:  # fmt: skip
        tx = self._db.enter("masks.insert_group", conn)
        t = tables(self._db)
        if annotation_id not in t.annotations:
            raise FakeIntegrityError("insert violates annotation_mask_group_annotation_id_fkey")
        if version_of is not None and any(
            g.supersedes_group_id == version_of.supersedes_group_id for g in t.groups.values()
        ):
            raise AlreadyExists(
                "mask_group.supersedes_group_id: that version already has a successor"
            )
        group_id = self._db.next_id("mask_groups")
        group = MaskGroup(
            id=group_id,
            annotation_id=annotation_id,
            group_name=values.group_name,
            model_name=values.model_name,
            version=values.version,
            modality=values.modality,
            slice_count=values.slice_count,
            mask_type=values.mask_type,
            description=values.description,
            created_by=created_by,
            created_at=tx.started_at,
            updated_at=tx.started_at,
            completed_slices=0,
            segments=values.segments,
            lineage_id=version_of.lineage_id if version_of else group_id,
            version_number=version_of.version_number if version_of else 1,
            supersedes_group_id=version_of.supersedes_group_id if version_of else None,
            is_current=version_of is None,
            inference_parameters=values.inference_parameters,
            input_series_uid=values.input_series_uid,
            client_id=client_id,
        )
        t.groups[group.id] = group
        self._db.wrote(tx, "mask_groups")
        return group

    async def list_versions(self, conn: FakeTx, group: MaskGroup) -> list[MaskGroup]:
        self._db.enter("masks.list_versions", conn)
        lineage = [
            g for g in tables(self._db).groups.values()
            if g.lineage_id == group.lineage_id and g.annotation_id == group.annotation_id
            and g.deleted_at is None
        ]  # fmt: skip
        return [self._counted(g) for g in sorted(lineage, key=lambda g: -g.version_number)]

    async def slice_authors(self, conn: FakeTx, group_id: int) -> set[int]:
        self._db.enter("masks.slice_authors", conn)
        t = tables(self._db)
        return {
            t.mask_authors[m.id]
            for m, _ in t.masks.values()
            if m.mask_group_id == group_id and m.id in t.mask_authors
        }

    async def get_group(self, conn: FakeTx, group_id: int) -> MaskGroup | None:
        self._db.enter("masks.get_group", conn)
        group = tables(self._db).groups.get(group_id)
        return self._counted(group) if group else None

    async def list_groups(
        self, conn: FakeTx, annotation_id: int, *, after_id: int, limit: int,
        review_state: ReviewState | None = None, all_versions: bool = False,
    ) -> list[MaskGroup]:  # fmt: skip
        self._db.enter("masks.list_groups", conn)
        found = sorted(
            (
                g
                for g in tables(self._db).groups.values()
                if g.annotation_id == annotation_id and g.id > after_id
                and review_state in (None, g.review.state)
                and (all_versions or g.is_current)
                and g.deleted_at is None
            ),
            key=lambda g: g.id,
        )  # fmt: skip
        return [self._counted(g) for g in found[:limit]]

    async def review_group(self, conn: FakeTx, group_id: int, review: Review) -> MaskGroup:
        tx = self._db.enter("masks.review_group", conn)
        t = tables(self._db)
        reviewed = replace(
            t.groups[group_id],
            review=replace(review, changed_at=tx.started_at),
            updated_at=tx.started_at,
        )
        t.groups[group_id] = reviewed
        self._db.wrote(tx, "mask_groups")
        return self._counted(reviewed)

    async def move_group_to_trash(self, conn: FakeTx, group_id: int, *, trash: bool) -> MaskGroup:
        """The adapter's TRASH_GROUP and UNTRASH_GROUP, with their passing of currency."""
        tx = self._db.enter("masks.move_group_to_trash", conn)
        t = tables(self._db)
        group = self._counted(t.groups[group_id])
        previous = t.groups.get(group.supersedes_group_id or 0)
        if trash:
            if group.is_current and previous is not None and previous.deleted_at is None:
                t.groups[previous.id] = replace(previous, is_current=True)
            current = False
        elif previous is not None:
            current = previous.is_current and group.complete
            if current:
                t.groups[previous.id] = replace(previous, is_current=False)
        else:
            current = not any(
                g.is_current and g.deleted_at is None
                for g in t.groups.values()
                if g.lineage_id == group.lineage_id and g.id != group.id
            )
        moved = replace(
            t.groups[group_id], deleted_at=tx.started_at if trash else None,
            is_current=current, updated_at=tx.started_at,
        )  # fmt: skip
        t.groups[group_id] = moved
        self._db.wrote(tx, "mask_groups")
        return self._counted(moved)

    async def expired_trash(self, conn: FakeTx, retention: timedelta, limit: int) -> list[int]:
        tx = self._db.enter("masks.expired_trash", conn)
        t = tables(self._db)
        cutoff = tx.started_at - retention
        expired = sorted(
            (g for g in t.groups.values()
             if g.deleted_at is not None and g.deleted_at < cutoff
             and (a := t.annotations.get(g.annotation_id)) is not None and a.deleted_at is None),
            key=lambda g: g.deleted_at or cutoff,
        )[:limit]  # fmt: skip
        tx.locks.extend(("mask_group", g.id) for g in expired)
        return [g.id for g in expired]

    async def purge(self, conn: FakeTx, group_ids: Sequence[int]) -> int:
        queued = 0
        for group_id in group_ids:
            queued += await self.delete_group(conn, group_id)
        return queued

    async def delete_group(self, conn: FakeTx, group_id: int) -> int:
        tx = self._db.enter("masks.delete_group", conn)
        t = tables(self._db)
        gone = t.groups.get(group_id)
        # Deleting a lineage's current version makes its predecessor current again.
        if gone is not None and gone.is_current and gone.supersedes_group_id in t.groups:
            previous = t.groups[gone.supersedes_group_id]
            t.groups[previous.id] = replace(previous, is_current=True)
        return drop_groups(self._db, tx, [group_id])

    async def insert_uploads(
        self, conn: FakeTx, group_id: int,
        declared: Sequence[tuple[uuid.UUID, str, SliceDeclaration]],
        *, method: str, created_by: int, expires_at: datetime,
    ) -> None:  # fmt: skip
        tx = self._db.enter("masks.insert_uploads", conn)
        t = tables(self._db)
        if group_id not in t.groups:
            raise FakeIntegrityError("insert violates mask_upload_mask_group_id_fkey")
        if method not in ("POST", "PUT"):
            raise FakeIntegrityError("violates mask_upload_method_check")
        keys = {u.object_key for u in t.uploads.values()}
        for upload_id, key, item in declared:
            if upload_id in t.uploads or key in keys:
                raise FakeIntegrityError("duplicate key value violates a key of mask_upload")
            keys.add(key)
            t.uploads[upload_id] = PendingUpload(
                upload_id=upload_id,
                mask_group_id=group_id,
                slice_index=item.slice_index,
                sop_instance_uid=item.sop_instance_uid,
                label_name=item.label_name,
                content_type=item.content_type,
                size_bytes=item.size_bytes,
                md5=item.md5,
                method=method,
                object_key=key,
                expires_at=expires_at,
                completed_at=None,
            )
        self._db.wrote(tx, "mask_uploads")

    async def uploads(
        self, conn: FakeTx, group_id: int, upload_ids: Sequence[uuid.UUID]
    ) -> list[PendingUpload]:
        self._db.enter("masks.uploads", conn)
        t = tables(self._db)
        wanted = set(upload_ids)
        found = [u for i, u in t.uploads.items() if i in wanted and u.mask_group_id == group_id]
        return sorted(found, key=lambda u: u.upload_id)

    async def masks_by_upload(self, conn: FakeTx, upload_ids: Sequence[uuid.UUID]) -> list[Mask]:
        self._db.enter("masks.masks_by_upload", conn)
        wanted = set(upload_ids)
        found = [m for m, u in tables(self._db).masks.values() if u is not None and u in wanted]
        return sorted(found, key=lambda m: m.slice_index)

    async def record_masks(
        self, conn: FakeTx, group_id: int, new: Sequence[NewMask], *, from_tickets: bool = True,
        recorded_by: int | None = None,
    ) -> list[Mask]:  # fmt: skip
        tx = self._db.enter("masks.record_masks", conn)
        t = tables(self._db)
        if from_tickets:
            # Only tickets of this group still pending complete (and get a mask).
            chosen = [
                n
                for n in new
                if (u := t.uploads.get(n.upload.upload_id)) is not None
                and u.mask_group_id == group_id
                and u.completed_at is None
            ]
        else:
            chosen = list(new)
        if group_id not in t.groups:
            # A group that is gone has no tickets left: the statement inserts nothing, and the
            # foreign key fails only a row that is inserted.
            if chosen:
                raise FakeIntegrityError("insert violates annotation_mask_mask_group_id_fkey")
            return []
        taken = {m.slice_index for m, _ in t.masks.values() if m.mask_group_id == group_id}
        paths = {m.file_path for m, _ in t.masks.values()}
        slices = [n.upload.slice_index for n in chosen]
        if taken & set(slices) or len(set(slices)) < len(slices):
            raise FailedPrecondition("a slice in this request already has a recorded mask")
        if paths & {n.file_path for n in chosen}:
            raise FakeIntegrityError("duplicate key value violates annotation_mask_file_path_key")
        recorded = []
        for n in chosen:
            upload_id = n.upload.upload_id if from_tickets else None
            if upload_id is not None:
                t.uploads[upload_id] = replace(t.uploads[upload_id], completed_at=tx.started_at)
            mask = Mask(
                id=self._db.next_id("masks"),
                mask_group_id=group_id,
                slice_index=n.upload.slice_index,
                sop_instance_uid=n.upload.sop_instance_uid,
                label_name=n.upload.label_name,
                file_path=n.file_path,
                mime_type=n.upload.content_type,
                file_size=n.file_size,
                checksum=n.checksum,
                width=n.width,
                height=n.height,
                created_at=tx.started_at,
                object_version=n.object_version,
            )
            t.masks[mask.id] = (mask, upload_id)
            if recorded_by is not None:
                t.mask_authors[mask.id] = recorded_by
            recorded.append(mask)
        t.groups[group_id] = replace(t.groups[group_id], updated_at=tx.started_at)
        self._promote(group_id)
        self._db.wrote(tx, "masks")
        return sorted(recorded, key=lambda m: m.slice_index)

    def _promote(self, group_id: int) -> None:
        """Migration 0015's trigger: a version becomes current once complete, and the version
        it superseded stops being current."""
        t = tables(self._db)
        group = self._counted(t.groups[group_id])
        if group.is_current or not group.complete:
            return
        t.groups[group_id] = replace(t.groups[group_id], is_current=True)
        previous = t.groups.get(group.supersedes_group_id or 0)
        if previous is not None:
            t.groups[previous.id] = replace(previous, is_current=False)

    async def list_masks(
        self, conn: FakeTx, group_id: int, *, after_slice: int, limit: int
    ) -> list[Mask]:
        self._db.enter("masks.list_masks", conn)
        return self._of_group(group_id, lambda m: m.slice_index > after_slice)[:limit]

    async def get_mask(self, conn: FakeTx, group_id: int, mask_id: int) -> Mask | None:
        self._db.enter("masks.get_mask", conn)
        row = tables(self._db).masks.get(mask_id)
        return row[0] if row is not None and row[0].mask_group_id == group_id else None

    async def masks_of_group(
        self, conn: FakeTx, group_id: int, mask_ids: Sequence[int] | None, *, limit: int
    ) -> list[Mask]:
        self._db.enter("masks.masks_of_group", conn)
        wanted = None if mask_ids is None else set(mask_ids)
        return self._of_group(group_id, lambda m: wanted is None or m.id in wanted)[:limit]

    async def enqueue_deletions(self, conn: FakeTx, keys: Sequence[str]) -> None:
        tx = self._db.enter("masks.enqueue_deletions", conn)
        queue(self._db, keys, tx.started_at)
        self._db.wrote(tx, "outbox")

    # -- reading the tables, for assertions ---------------------------------------------------

    def all_masks(self) -> list[Mask]:
        """Every recorded mask, by group and slice."""
        return sorted(
            (m for m, _ in tables(self._db).masks.values()),
            key=lambda m: (m.mask_group_id, m.slice_index),
        )

    def _of_group(self, group_id: int, keep: Callable[[Mask], bool]) -> list[Mask]:
        masks = tables(self._db).masks.values()
        return sorted(
            (m for m, _ in masks if m.mask_group_id == group_id and keep(m)),
            key=lambda m: m.slice_index,
        )

    def _counted(self, group: MaskGroup) -> MaskGroup:
        masks = tables(self._db).masks.values()
        count = sum(1 for m, _ in masks if m.mask_group_id == group.id)
        return replace(group, completed_slices=count)


class FakeExportStore:
    """mask_group_export (ExportRepository): newest first, ids growing with time."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db
        install(db)

    async def insert(
        self, conn: FakeTx, group_id: int, new: NewExport, created_by: int
    ) -> MaskGroupExport:
        tx = self._db.enter("exports.insert", conn)
        t = tables(self._db)
        if group_id not in t.groups:
            raise FakeIntegrityError("insert violates mask_group_export_mask_group_id_fkey")
        if any(
            e.object_key == new.object_key or e.seg_sop_instance_uid == new.seg_sop_instance_uid
            for e in t.exports.values()
        ):
            raise FakeIntegrityError("duplicate key value violates a key of mask_group_export")
        export = MaskGroupExport(
            id=self._db.next_id("exports"),
            mask_group_id=group_id,
            created_by=created_by,
            created_at=tx.started_at,
            **new.__dict__,
        )
        t.exports[export.id] = export
        self._db.wrote(tx, "exports")
        return export

    async def get(self, conn: FakeTx, group_id: int, export_id: int) -> MaskGroupExport | None:
        self._db.enter("exports.get", conn)
        export = tables(self._db).exports.get(export_id)
        return export if export is not None and export.mask_group_id == group_id else None

    async def list_exports(
        self, conn: FakeTx, group_id: int, *, before_id: int, limit: int
    ) -> list[MaskGroupExport]:
        self._db.enter("exports.list_exports", conn)
        found = [
            e
            for e in tables(self._db).exports.values()
            if e.mask_group_id == group_id and e.id < before_id
        ]
        return sorted(found, key=lambda e: e.id, reverse=True)[:limit]

    async def count(self, conn: FakeTx, group_id: int) -> int:
        self._db.enter("exports.count", conn)
        return sum(1 for e in tables(self._db).exports.values() if e.mask_group_id == group_id)


class FakeScheduledDeletions:
    """ScheduledDeletionRepository: outbox rows due later than now."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db
        install(db)

    async def enqueue_at(self, conn: FakeTx, keys: Sequence[str], due_at: datetime) -> None:
        tx = self._db.enter("deletions.enqueue_at", conn)
        queue(self._db, keys, due_at)
        self._db.wrote(tx, "outbox")
