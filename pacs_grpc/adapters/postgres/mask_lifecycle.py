"""A mask group's life after creation: its versions, its review, the trash and its purge, for
MaskRepository (masks.py), which inherits them. Hand-written SQL (migrations 0014 to 0016)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from pacs_grpc.adapters.postgres.database import Connection
from pacs_grpc.adapters.postgres.mask_group_rows import GROUP_COLUMNS, GROUP_ROW
from pacs_grpc.domain.masks import MaskGroup
from pacs_grpc.domain.review import Review

LIST_VERSIONS = f"""
select {GROUP_COLUMNS} from annotation_mask_group g
where g.lineage_id = %(lineage_id)s and g.annotation_id = %(annotation_id)s
  and g.deleted_at is null
order by g.version_number desc
"""

# Into the trash: a current version hands currency back to the version it superseded, as a
# purge does, so deleting a bad correction shows the previous one again.
TRASH_GROUP = f"""
with reinstated as (
    update annotation_mask_group previous set is_current = true, updated_at = now()
    from annotation_mask_group trashed
    where trashed.id = %(group_id)s and trashed.is_current
      and previous.id = trashed.supersedes_group_id and previous.deleted_at is null
)
update annotation_mask_group g
set deleted_at = now(), is_current = false, updated_at = now()
where g.id = %(group_id)s
returning {GROUP_COLUMNS}
"""

# Back from the trash: a complete version takes currency back from the version it superseded
# if that one is still current; a first version is current again unless a later one is.
UNTRASH_GROUP = f"""
with back as (
    select g.id, g.lineage_id, g.supersedes_group_id,
           g.slice_count <= (select count(*) from annotation_mask m where m.mask_group_id = g.id)
               as complete
    from annotation_mask_group g where g.id = %(group_id)s
), displaced as (
    update annotation_mask_group previous set is_current = false, updated_at = now()
    from back b
    where previous.id = b.supersedes_group_id and previous.is_current and b.complete
    returning previous.id
)
update annotation_mask_group g
set deleted_at = null, updated_at = now(),
    is_current = case
        when b.supersedes_group_id is null then not exists (
            select from annotation_mask_group other
            where other.lineage_id = b.lineage_id and other.is_current and other.id <> b.id
              and other.deleted_at is null)
        else exists (select from displaced)
    end
from back b
where g.id = b.id
returning {GROUP_COLUMNS}
"""

# A purge marks the group first: only a group in the trash may be deleted (0016).
MARK_GROUP_FOR_PURGE = """
update annotation_mask_group set deleted_at = coalesce(deleted_at, now())
where id = %(group_id)s
"""

# Groups trashed for longer than the retention whose annotation is live (an annotation in the
# trash takes its groups with it when it is purged), locked as EXPIRED_TRASH locks annotations.
EXPIRED_GROUP_TRASH = """
select g.id from annotation_mask_group g
join annotation_annotation a on a.id = g.annotation_id and a.deleted_at is null
where g.deleted_at < now() - %(retention)s
order by g.deleted_at
limit %(limit)s
for update of g skip locked
"""

# Deleting a lineage's current version makes the version it superseded current again.
REINSTATE_PREDECESSOR = """
update annotation_mask_group set is_current = true, updated_at = now()
where id = (select supersedes_group_id from annotation_mask_group
            where id = %(group_id)s and is_current)
"""

# Who recorded the group's slices (migration 0015).
SLICE_AUTHORS = """
select distinct recorded_by from annotation_mask
where mask_group_id = %(group_id)s and recorded_by is not null
"""

# One review transition: the state, who made it, when and (a rejection's) comment.
REVIEW_GROUP = f"""
update annotation_mask_group g
set review_state = %(state)s, reviewed_by = %(user_id)s, reviewed_at = now(),
    review_comment = %(comment)s, updated_at = now()
where g.id = %(group_id)s
returning {GROUP_COLUMNS}
"""

# Recorded masks, every upload not completed (its object may exist) and the group's exported
# SEGs go to the outbox; a completed upload's object is its mask's.
ENQUEUE_GROUP_OBJECTS = """
insert into storage_deletion_outbox (object_key)
select file_path from annotation_mask where mask_group_id = %(group_id)s
union all
select object_key from mask_upload where mask_group_id = %(group_id)s and completed_at is null
union all
select object_key from mask_group_export where mask_group_id = %(group_id)s
"""

DELETE_GROUP = "delete from annotation_mask_group where id = %(group_id)s"


class MaskGroupLifecycle:
    """The version, review and trash half of MaskStore, in the caller's transaction."""

    async def list_versions(self, conn: Connection, group: MaskGroup) -> list[MaskGroup]:
        """Every version of the group's lineage, newest first."""
        params = {"lineage_id": group.lineage_id, "annotation_id": group.annotation_id}
        async with conn.cursor(row_factory=GROUP_ROW) as cur:
            await cur.execute(LIST_VERSIONS, params)
            return await cur.fetchall()

    async def slice_authors(self, conn: Connection, group_id: int) -> set[int]:
        """Who recorded the group's slices."""
        async with conn.cursor() as cur:
            await cur.execute(SLICE_AUTHORS, {"group_id": group_id})
            return {int(user) for (user,) in await cur.fetchall()}

    async def review_group(self, conn: Connection, group_id: int, review: Review) -> MaskGroup:
        """Record one review transition of the group (locked by the caller)."""
        params = {
            "group_id": group_id,
            "state": review.state.value,
            "user_id": review.user_id,
            "comment": review.comment,
        }
        async with conn.cursor(row_factory=GROUP_ROW) as cur:
            await cur.execute(REVIEW_GROUP, params)
            row = await cur.fetchone()
        assert row is not None
        return row

    async def move_group_to_trash(
        self, conn: Connection, group_id: int, *, trash: bool
    ) -> MaskGroup:
        """Into the trash (trash=True) or back out, passing the lineage's currency as a purge
        and a completion would; slices, exports and objects stay."""
        async with conn.cursor(row_factory=GROUP_ROW) as cur:
            await cur.execute(TRASH_GROUP if trash else UNTRASH_GROUP, {"group_id": group_id})
            row = await cur.fetchone()
        assert row is not None
        return row

    async def expired_trash(self, conn: Connection, retention: timedelta, limit: int) -> list[int]:
        """TrashPurger for groups: up to `limit` trashed longer than `retention`, locked."""
        async with conn.cursor() as cur:
            await cur.execute(EXPIRED_GROUP_TRASH, {"retention": retention, "limit": limit})
            return [group_id for (group_id,) in await cur.fetchall()]

    async def purge(self, conn: Connection, group_ids: Sequence[int]) -> int:
        """TrashPurger for groups: delete each for good; how many objects were queued."""
        queued = 0
        for group_id in group_ids:
            queued += await self.delete_group(conn, group_id)
        return queued

    async def delete_group(self, conn: Connection, group_id: int) -> int:
        async with conn.cursor() as cur:
            await cur.execute(ENQUEUE_GROUP_OBJECTS, {"group_id": group_id})
            queued = cur.rowcount
            await cur.execute(REINSTATE_PREDECESSOR, {"group_id": group_id})
            await cur.execute(MARK_GROUP_FOR_PURGE, {"group_id": group_id})
            await cur.execute(DELETE_GROUP, {"group_id": group_id})
        return queued
