"""annotation_mask_group, mask_upload and annotation_mask."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime

from psycopg import errors as pg_errors
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from pacs_grpc.adapters.postgres.database import Connection
from pacs_grpc.adapters.postgres.mask_group_rows import GROUP_COLUMNS, GROUP_ROW, group_of_row
from pacs_grpc.adapters.postgres.mask_lifecycle import MaskGroupLifecycle
from pacs_grpc.domain.errors import AlreadyExists, FailedPrecondition
from pacs_grpc.domain.identity import ProjectRole
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
from pacs_grpc.domain.review import ReviewState

_MASK_COLUMNS = ", ".join(f"m.{f.name}" for f in fields(Mask))
_UPLOAD_COLUMNS = ", ".join(f"u.{f.name}" for f in fields(PendingUpload))

# The group, where it sits, and the caller's access, in one round trip.
GROUP_WITH_ACCESS = f"""
select {GROUP_COLUMNS}, a.project_id, a.study_uid, mem.role as caller_role,
       p.is_active as project_active, a.series_uid, p.export_unapproved
from annotation_mask_group g
-- A group in the trash with its annotation is as gone as the annotation.
join annotation_annotation a on a.id = g.annotation_id and a.deleted_at is null
join security_project p on p.id = a.project_id
left join security_project_member mem
       on mem.project_id = a.project_id and mem.user_id = %(user_id)s
where g.id = %(group_id)s and g.annotation_id = %(annotation_id)s
  and (g.deleted_at is null or %(include_deleted)s)
"""

# A first version is its own lineage (the trigger of migration 0015) and current at once; a
# later one joins its predecessor's lineage and becomes current when complete.
INSERT_GROUP = f"""
insert into annotation_mask_group as g (annotation_id, group_name, model_name, version, modality,
    slice_count, mask_type, description, segments, created_by, inference_parameters,
    input_series_uid, client_id, supersedes_group_id, lineage_id, version_number, is_current)
values (%(annotation_id)s, %(group_name)s, %(model_name)s, %(version)s, %(modality)s,
    %(slice_count)s, %(mask_type)s, %(description)s, %(segments)s, %(created_by)s,
    %(inference_parameters)s, %(input_series_uid)s, %(client_id)s, %(supersedes_group_id)s,
    %(lineage_id)s, %(version_number)s, %(supersedes_group_id)s::bigint is null)
returning {GROUP_COLUMNS}
"""

LIST_GROUPS = f"""
select {GROUP_COLUMNS} from annotation_mask_group g
where g.annotation_id = %(annotation_id)s and g.id > %(after_id)s
  and (%(review_state)s::text is null or g.review_state = %(review_state)s::text)
  and (%(all_versions)s or g.is_current) and g.deleted_at is null
order by g.id limit %(limit)s
"""

GET_GROUP = f"select {GROUP_COLUMNS} from annotation_mask_group g where g.id = %(group_id)s"

# One statement for a whole series of tickets, whatever its size.
INSERT_UPLOADS = """
insert into mask_upload (upload_id, mask_group_id, slice_index, sop_instance_uid, label_name,
    content_type, size_bytes, md5, method, object_key, created_by, expires_at)
select t.upload_id, %(group_id)s, t.slice_index, t.sop_instance_uid, t.label_name,
       t.content_type, t.size_bytes, t.md5, %(method)s, t.object_key, %(created_by)s,
       %(expires_at)s
from unnest(%(upload_ids)s::uuid[], %(slice_indexes)s::int[], %(sop_uids)s::text[],
            %(labels)s::text[], %(content_types)s::text[], %(sizes)s::bigint[],
            %(md5s)s::text[], %(object_keys)s::text[])
     as t(upload_id, slice_index, sop_instance_uid, label_name, content_type, size_bytes, md5,
          object_key)
"""

UPLOADS = f"""
select {_UPLOAD_COLUMNS} from mask_upload u
where u.mask_group_id = %(group_id)s and u.upload_id = any(%(upload_ids)s::uuid[])
order by u.upload_id
"""

MASKS_BY_UPLOAD = f"""
select {_MASK_COLUMNS} from annotation_mask m where m.upload_id = any(%(upload_ids)s::uuid[])
order by m.slice_index
"""

_INSERT_MASKS_INTO = """
insert into annotation_mask as m (mask_group_id, slice_index, sop_instance_uid, label_name,
    file_path, mime_type, file_size, checksum, width, height, upload_id, object_version,
    recorded_by)
select %(group_id)s, t.slice_index, t.sop_instance_uid, t.label_name, t.file_path, t.mime_type,
       t.file_size, t.checksum, t.width, t.height, t.upload_id, t.object_version,
       %(recorded_by)s
from unnest(%(slice_indexes)s::int[], %(sop_uids)s::text[], %(labels)s::text[],
            %(paths)s::text[], %(mime_types)s::text[], %(sizes)s::bigint[],
            %(checksums)s::text[], %(widths)s::int[], %(heights)s::int[],
            %(upload_ids)s::uuid[], %(versions)s::text[])
     as t(slice_index, sop_instance_uid, label_name, file_path, mime_type, file_size, checksum,
          width, height, upload_id, object_version)
"""

INSERT_PUSHED_MASKS = f"{_INSERT_MASKS_INTO} returning {_MASK_COLUMNS}"

# Marks the tickets completed and records a mask for each one this statement completed. A
# concurrent completion holding the same rows makes the update wait; once it commits, those
# rows no longer match `completed_at is null`, so each ticket yields one mask however many
# completions race, without reading and locking the rows in a statement of their own.
COMPLETE_UPLOADS = f"""
with completed as (
    update mask_upload u set completed_at = now()
    where u.mask_group_id = %(group_id)s and u.upload_id = any(%(upload_ids)s::uuid[])
      and u.completed_at is null
    returning u.upload_id
)
{_INSERT_MASKS_INTO}
where t.upload_id in (select upload_id from completed)
returning {_MASK_COLUMNS}
"""

ENQUEUE_KEYS = """
insert into storage_deletion_outbox (object_key) select unnest(%(keys)s::text[])
"""

TOUCH_GROUP = "update annotation_mask_group set updated_at = now() where id = %(group_id)s"

LIST_MASKS = f"""
select {_MASK_COLUMNS} from annotation_mask m
where m.mask_group_id = %(group_id)s and m.slice_index > %(after_slice)s
order by m.slice_index limit %(limit)s
"""

GET_MASK = f"""
select {_MASK_COLUMNS} from annotation_mask m
where m.id = %(mask_id)s and m.mask_group_id = %(group_id)s
"""

MASKS_OF_GROUP = f"""
select {_MASK_COLUMNS} from annotation_mask m
where m.mask_group_id = %(group_id)s
  and (%(all)s or m.id = any(%(mask_ids)s::bigint[]))
order by m.slice_index limit %(limit)s
"""


class MaskRepository(MaskGroupLifecycle):
    """MaskStore (pacs_grpc.services.ports) on groups, upload tickets and masks, in the caller's
    transaction.

    `record_masks` maps a second mask for one slice (unique violation) to FailedPrecondition.
    Deleting a group queues its objects (masks, pending uploads, exports) for the sweeper in the
    same transaction, so they go only if the delete commits.
    """

    async def group_with_access(
        self,
        conn: Connection,
        annotation_id: int,
        group_id: int,
        user_id: int,
        *,
        for_update: bool = False,
        include_deleted: bool = False,
    ) -> GroupAccess | None:
        """The group and the caller's access; one in the trash only with include_deleted."""
        query = GROUP_WITH_ACCESS + (" for update of g" if for_update else "")
        params = {
            "annotation_id": annotation_id, "group_id": group_id, "user_id": user_id,
            "include_deleted": include_deleted,
        }  # fmt: skip
        async with conn.cursor() as cur:
            await cur.execute(query, params)
            row = await cur.fetchone()
        if row is None:
            return None
        project_id, study_uid, role, active, series_uid, export_unapproved = row[-6:]
        return GroupAccess(
            group_of_row(row[:-6]),
            project_id,
            study_uid,
            ProjectRole.from_db(role) if role else None,
            active,
            series_uid,
            export_unapproved,
        )

    async def insert_group(
        self, conn: Connection, annotation_id: int, values: GroupFields, created_by: int, *,
        version_of: VersionOf | None = None, client_id: str | None = None,
    ) -> MaskGroup:  # fmt: skip
        """A new group; with `version_of`, the next version of that group's lineage. A second
        successor of one version is refused (a fork): AlreadyExists."""
        params = {
            **values.__dict__,
            "segments": Jsonb([segment.to_json() for segment in values.segments]),
            "inference_parameters": (
                Jsonb(values.inference_parameters) if values.inference_parameters else None
            ),
            "annotation_id": annotation_id,
            "created_by": created_by,
            "client_id": client_id,
            "supersedes_group_id": version_of.supersedes_group_id if version_of else None,
            "lineage_id": version_of.lineage_id if version_of else None,
            "version_number": version_of.version_number if version_of else 1,
        }
        try:
            async with conn.cursor(row_factory=GROUP_ROW) as cur:
                await cur.execute(INSERT_GROUP, params)
                row = await cur.fetchone()
        except pg_errors.UniqueViolation as error:
            if error.diag.constraint_name != "annotation_mask_group_supersedes_key":
                raise
            raise AlreadyExists(
                "mask_group.supersedes_group_id",
                "that version already has a successor; supersede the lineage's current version",
            ) from None
        assert row is not None
        return row

    async def get_group(self, conn: Connection, group_id: int) -> MaskGroup | None:
        async with conn.cursor(row_factory=GROUP_ROW) as cur:
            await cur.execute(GET_GROUP, {"group_id": group_id})
            return await cur.fetchone()

    async def list_groups(
        self, conn: Connection, annotation_id: int, *, after_id: int, limit: int,
        review_state: ReviewState | None = None, all_versions: bool = False,
    ) -> list[MaskGroup]:  # fmt: skip
        params = {
            "annotation_id": annotation_id, "after_id": after_id, "limit": limit,
            "review_state": review_state.value if review_state else None,
            "all_versions": all_versions,
        }  # fmt: skip
        async with conn.cursor(row_factory=GROUP_ROW) as cur:
            await cur.execute(LIST_GROUPS, params)
            return await cur.fetchall()

    async def insert_uploads(
        self,
        conn: Connection,
        group_id: int,
        declared: Sequence[tuple[uuid.UUID, str, SliceDeclaration]],
        *,
        method: str,
        created_by: int,
        expires_at: datetime,
    ) -> None:
        """Record tickets: (upload_id, object_key, slice) each."""
        params = {
            "group_id": group_id,
            "method": method,
            "created_by": created_by,
            "expires_at": expires_at,
            "upload_ids": [u for u, _, _ in declared],
            "object_keys": [k for _, k, _ in declared],
            "slice_indexes": [s.slice_index for _, _, s in declared],
            "sop_uids": [s.sop_instance_uid for _, _, s in declared],
            "labels": [s.label_name for _, _, s in declared],
            "content_types": [s.content_type for _, _, s in declared],
            "sizes": [s.size_bytes for _, _, s in declared],
            "md5s": [s.md5 for _, _, s in declared],
        }
        async with conn.cursor() as cur:
            await cur.execute(INSERT_UPLOADS, params)

    async def uploads(
        self,
        conn: Connection,
        group_id: int,
        upload_ids: Sequence[uuid.UUID],
    ) -> list[PendingUpload]:
        """The group's tickets among upload_ids."""
        async with conn.cursor(row_factory=class_row(PendingUpload)) as cur:
            await cur.execute(UPLOADS, {"group_id": group_id, "upload_ids": list(upload_ids)})
            return await cur.fetchall()

    async def masks_by_upload(
        self, conn: Connection, upload_ids: Sequence[uuid.UUID]
    ) -> list[Mask]:
        async with conn.cursor(row_factory=class_row(Mask)) as cur:
            await cur.execute(MASKS_BY_UPLOAD, {"upload_ids": list(upload_ids)})
            return await cur.fetchall()

    async def record_masks(
        self, conn: Connection, group_id: int, new: Sequence[NewMask], *, from_tickets: bool = True,
        recorded_by: int | None = None,
    ) -> list[Mask]:  # fmt: skip
        """Record masks, in slice order. Ticket uploads are marked completed in the same
        statement, and only those still pending get a mask (see COMPLETE_UPLOADS); pushed
        masks have no ticket behind them."""
        params = {
            "group_id": group_id,
            "slice_indexes": [n.upload.slice_index for n in new],
            "sop_uids": [n.upload.sop_instance_uid for n in new],
            "labels": [n.upload.label_name for n in new],
            "paths": [n.file_path for n in new],
            "mime_types": [n.upload.content_type for n in new],
            "sizes": [n.file_size for n in new],
            "checksums": [n.checksum for n in new],
            "widths": [n.width for n in new],
            "heights": [n.height for n in new],
            "upload_ids": [n.upload.upload_id if from_tickets else None for n in new],
            "versions": [n.object_version for n in new],
            "recorded_by": recorded_by,
        }
        async with conn.cursor(row_factory=class_row(Mask)) as cur:
            try:
                await cur.execute(COMPLETE_UPLOADS if from_tickets else INSERT_PUSHED_MASKS, params)
            except pg_errors.UniqueViolation as error:
                if error.diag.constraint_name == "annotation_mask_group_slice_key":
                    raise FailedPrecondition(
                        "a slice in this request already has a recorded mask"
                    ) from None
                raise
            masks = await cur.fetchall()
            await cur.execute(TOUCH_GROUP, {"group_id": group_id})
        return sorted(masks, key=lambda m: m.slice_index)

    async def list_masks(
        self, conn: Connection, group_id: int, *, after_slice: int, limit: int
    ) -> list[Mask]:
        params = {"group_id": group_id, "after_slice": after_slice, "limit": limit}
        async with conn.cursor(row_factory=class_row(Mask)) as cur:
            await cur.execute(LIST_MASKS, params)
            return await cur.fetchall()

    async def get_mask(self, conn: Connection, group_id: int, mask_id: int) -> Mask | None:
        async with conn.cursor(row_factory=class_row(Mask)) as cur:
            await cur.execute(GET_MASK, {"group_id": group_id, "mask_id": mask_id})
            return await cur.fetchone()

    async def masks_of_group(
        self, conn: Connection, group_id: int, mask_ids: Sequence[int] | None, *, limit: int
    ) -> list[Mask]:
        params = {
            "group_id": group_id,
            "all": mask_ids is None,
            "mask_ids": list(mask_ids or []),
            "limit": limit,
        }
        async with conn.cursor(row_factory=class_row(Mask)) as cur:
            await cur.execute(MASKS_OF_GROUP, params)
            return await cur.fetchall()

    async def enqueue_deletions(self, conn: Connection, keys: Sequence[str]) -> None:
        async with conn.cursor() as cur:
            await cur.execute(ENQUEUE_KEYS, {"keys": list(keys)})
