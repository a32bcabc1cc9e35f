"""annotation_revision and the trash: history reads, restores, review transitions, moves to
and from the trash, and purges, for AnnotationRepository (annotations.py), which inherits them.
Hand-written SQL; every write appends its revision in its own statement (annotation_columns)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from psycopg.rows import class_row

from pacs_grpc.adapters.postgres.annotation_columns import (
    ANNOTATION_FIELDS,
    BACK_TO_DRAFT,
    ENCODING_OF,
    REVISION_CONTENT,
    REVISION_STATE,
    answer_columns,
    append_revision,
    note_params,
)
from pacs_grpc.adapters.postgres.database import Connection
from pacs_grpc.domain.annotation import (
    Annotation,
    AnnotationRevision,
    RevisionAction,
    RevisionNote,
)
from pacs_grpc.domain.review import Review, ReviewState

# An earlier revision's content written back over the current one, as a new revision that names
# its source. Which fields change is decided here, against the locked current row.
RESTORE_REVISION = f"""
with source as (
    select {", ".join(f"r.{name}" for name in REVISION_CONTENT)},
           array_remove(array[
               case when r.annotation_data is distinct from a.annotation_data
                    then 'annotation_data' end,
               case when r.annotation_type is distinct from a.annotation_type
                    then 'annotation_type' end,
               case when r.measurement_values is distinct from a.measurement_values
                    then 'measurement_values' end,
               case when r.viewer_software is distinct from a.viewer_software
                    then 'viewer_software' end], null) as changed_fields
    from annotation_revision r
    join annotation_annotation a on a.id = r.annotation_id
    where r.annotation_id = %(annotation_id)s and r.revision = %(restored_from)s
), written as (
    update annotation_annotation a
    set {", ".join(f"{name} = s.{name}" for name in REVISION_CONTENT)},
        {BACK_TO_DRAFT}, row_version = a.row_version + 1, updated_at = now()
    from source s
    where a.id = %(annotation_id)s
    returning a.*, s.changed_fields
), revision as ({append_revision("written", changed_fields="w.changed_fields")})
select {answer_columns("written")} from written
"""


_REVISION_READS = {
    "row_version": "r.revision",
    "updated_at": "r.created_at",
    # A revision keeps the state, not who made the transition or when.
    "reviewed_by": "null::bigint",
    "reviewed_at": "null::timestamptz",
}


def _revision_column(name: str) -> str:
    """Annotation field `name` as revision `r` of annotation `a` left it, for an answer."""
    read = f"r.{name}" if name in REVISION_STATE else _REVISION_READS.get(name, f"a.{name}")
    if name in ENCODING_OF:
        read = f"case when r.{ENCODING_OF[name]} is null then {read} end"
    return f"{read} as {name}"


GET_REVISION = f"""
select {", ".join(_revision_column(name) for name in ANNOTATION_FIELDS)}
from annotation_revision r
join annotation_annotation a on a.id = r.annotation_id
where r.annotation_id = %(annotation_id)s and r.revision = %(revision)s
"""

LIST_REVISIONS = """
select annotation_id, revision, action, changed_fields, user_id, restored_from, created_at,
       review_state
from annotation_revision
where annotation_id = %(annotation_id)s
  and (%(before)s::bigint is null or revision < %(before)s::bigint)
order by revision desc
limit %(limit)s
"""

# Into the trash or back out of it: a revision like any write, with no content changed.
MOVE_TRASH = f"""
with written as (
    update annotation_annotation a
    set deleted_at = case when %(trash)s then now() end,
        row_version = a.row_version + 1, updated_at = now()
    where a.id = %(annotation_id)s
    returning a.*
), revision as ({append_revision("written")})
select {answer_columns("written")} from written
"""

# One review transition, as a revision like any write, with no content changed.
REVIEW = f"""
with written as (
    update annotation_annotation a
    set review_state = %(state)s, reviewed_by = %(actor)s, reviewed_at = now(),
        review_comment = %(comment)s, row_version = a.row_version + 1, updated_at = now()
    where a.id = %(annotation_id)s
    returning a.*
), revision as ({append_revision("written")})
select {answer_columns("written")} from written
"""

# Whether the user wrote any of the annotation's content: created, changed or restored it.
WROTE_CONTENT = """
select exists (
    select from annotation_revision
    where annotation_id = %(annotation_id)s and user_id = %(user_id)s
      and action in ('created', 'updated', 'restored')
)
"""

# Purging marks the row as trashed first: only a trashed annotation may be deleted (0013).
MARK_FOR_PURGE = """
update annotation_annotation set deleted_at = coalesce(deleted_at, now())
where id = any(%(annotation_ids)s)
"""

# Trashed for longer than the retention, oldest first; locked so that two sweepers, or an
# undelete racing the sweeper, never both act on one row.
EXPIRED_TRASH = """
select id from annotation_annotation
where deleted_at < now() - %(retention)s
order by deleted_at
limit %(limit)s
for update skip locked
"""

# Pending uploads count too: their objects may exist although no mask row does. So do the
# groups' exported SEGs.
ENQUEUE_ANNOTATION_OBJECTS = """
insert into storage_deletion_outbox (object_key)
select m.file_path from annotation_mask m
join annotation_mask_group g on g.id = m.mask_group_id
where g.annotation_id = any(%(annotation_ids)s)
union all
select u.object_key from mask_upload u
join annotation_mask_group g on g.id = u.mask_group_id
where g.annotation_id = any(%(annotation_ids)s) and u.completed_at is null
union all
select e.object_key from mask_group_export e
join annotation_mask_group g on g.id = e.mask_group_id
where g.annotation_id = any(%(annotation_ids)s)
"""

# Revisions, groups and masks go by cascade.
DELETE_ANNOTATIONS = "delete from annotation_annotation where id = any(%(annotation_ids)s)"


class AnnotationHistoryQueries:
    """The revision, review and trash half of AnnotationStore, in the caller's transaction."""

    async def restore(
        self, conn: Connection, annotation_id: int, revision: int, user_id: int
    ) -> Annotation | None:
        """Write revision `revision`'s content back as a new revision; None if there is no
        such revision. The caller holds the annotation's row lock."""
        note = RevisionNote(RevisionAction.RESTORED, user_id, ())
        params = {**note_params(note), "annotation_id": annotation_id, "restored_from": revision}
        async with conn.cursor(row_factory=class_row(Annotation)) as cur:
            await cur.execute(RESTORE_REVISION, params)
            return await cur.fetchone()

    async def get_revision(
        self, conn: Connection, annotation_id: int, revision: int
    ) -> Annotation | None:
        """The annotation as revision `revision` left it; JSON as in answers (ANSWER_COLUMNS)."""
        async with conn.cursor(binary=True) as cur:
            await cur.execute(GET_REVISION, {"annotation_id": annotation_id, "revision": revision})
            row = await cur.fetchone()
        return None if row is None else Annotation(*row)

    async def list_revisions(
        self, conn: Connection, annotation_id: int, *, before: int | None, limit: int
    ) -> list[AnnotationRevision]:
        """Newest first, from just below revision `before` (None: from the newest)."""
        params = {"annotation_id": annotation_id, "before": before, "limit": limit}
        async with conn.cursor() as cur:
            await cur.execute(LIST_REVISIONS, params)
            rows = await cur.fetchall()
        return [
            AnnotationRevision(
                annotation_id=annotation, revision=number, action=RevisionAction(action),
                changed_fields=tuple(changed), user_id=author, restored_from=source,
                created_at=created_at, review_state=ReviewState(state),
            )
            for annotation, number, action, changed, author, source, created_at, state in rows
        ]  # fmt: skip

    async def review(
        self, conn: Connection, annotation_id: int, review: Review, action: RevisionAction
    ) -> Annotation:
        """Record one review transition (the caller holds the row lock) as a revision."""
        assert review.user_id is not None
        params = {
            **note_params(RevisionNote(action, review.user_id, ())),
            "annotation_id": annotation_id,
            "state": review.state.value,
            "comment": review.comment,
        }
        async with conn.cursor(row_factory=class_row(Annotation)) as cur:
            await cur.execute(REVIEW, params)
            row = await cur.fetchone()
        assert row is not None
        return row

    async def wrote_content(self, conn: Connection, annotation_id: int, user_id: int) -> bool:
        """Whether the user created, changed or restored any of the annotation's content."""
        async with conn.cursor() as cur:
            await cur.execute(WROTE_CONTENT, {"annotation_id": annotation_id, "user_id": user_id})
            row = await cur.fetchone()
        return bool(row and row[0])

    async def move_to_trash(
        self, conn: Connection, annotation_id: int, user_id: int, *, trash: bool
    ) -> Annotation:
        """Into the trash (trash=True) or back out, as a DELETED or UNDELETED revision."""
        action = RevisionAction.DELETED if trash else RevisionAction.UNDELETED
        params = {
            **note_params(RevisionNote(action, user_id, ())),
            "annotation_id": annotation_id,
            "trash": trash,
        }
        async with conn.cursor(row_factory=class_row(Annotation)) as cur:
            await cur.execute(MOVE_TRASH, params)
            row = await cur.fetchone()
        assert row is not None
        return row

    async def purge(self, conn: Connection, annotation_ids: Sequence[int]) -> int:
        """Delete for good, with history, groups and masks, queueing every stored object of
        the groups in this transaction; how many objects were queued."""
        params = {"annotation_ids": list(annotation_ids)}
        async with conn.cursor() as cur:
            await cur.execute(ENQUEUE_ANNOTATION_OBJECTS, params)
            queued = cur.rowcount
            await cur.execute(MARK_FOR_PURGE, params)
            await cur.execute(DELETE_ANNOTATIONS, params)
        return queued

    async def expired_trash(self, conn: Connection, retention: timedelta, limit: int) -> list[int]:
        """Up to `limit` annotations trashed longer than `retention` ago, locked, oldest first;
        rows another transaction holds are skipped."""
        async with conn.cursor() as cur:
            await cur.execute(EXPIRED_TRASH, {"retention": retention, "limit": limit})
            return [annotation_id for (annotation_id,) in await cur.fetchall()]
