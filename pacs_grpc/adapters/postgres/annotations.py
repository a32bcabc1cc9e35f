"""annotation_annotation: hand-written SQL, dynamic parts only from whitelists."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from pacs_grpc.adapters.postgres.database import Connection
from pacs_grpc.domain import annotation_rules
from pacs_grpc.domain.annotation import (
    Annotation,
    AnnotationAccess,
    AnnotationRevision,
    ListFilter,
    RevisionAction,
    RevisionNote,
)
from pacs_grpc.domain.annotation_rules import AnnotationContent, Location
from pacs_grpc.domain.identity import ProjectRole
from pacs_grpc.domain.paging import BudgetedRows

ANNOTATION_FIELDS = [f.name for f in fields(Annotation)]
# A JSON field and the column that keeps its encoding (migration 0010).
_ENCODING_OF = {
    "annotation_data": "annotation_data_encoded",
    "measurement_values": "measurement_values_encoded",
}
_JSON_READS = frozenset(_ENCODING_OF) | frozenset(_ENCODING_OF.values())


def answer_columns(alias: str, *, prefix: str = "", within: str | None = None) -> str:
    """Annotation's fields in order, as reads that only answer take them: a JSON field is
    left out (None) where its encoding was kept, since decoding it would cost more than all
    else in a row; with `within`, JSON of either kind only where that condition holds (a
    byte budget). Columns are `alias.prefix<field>`."""

    def column(name: str) -> str:
        conditions = [within] if within and name in _JSON_READS else []
        if name in _ENCODING_OF:
            conditions.append(f"{alias}.{prefix}{_ENCODING_OF[name]} is null")
        read = f"{alias}.{prefix}{name}"
        return f"case when {' and '.join(conditions)} then {read} end" if conditions else read

    return ", ".join(f"{column(name)} as {name}" for name in ANNOTATION_FIELDS)


COLUMNS = ", ".join(f"a.{name}" for name in ANNOTATION_FIELDS)
ANSWER_COLUMNS = answer_columns("a")
# Over a budgeted page `p`: the JSON only where the page's budget still allows it.
BUDGETED_COLUMNS = answer_columns("p", within="p.before_bytes < %(budget_bytes)s")

# The content a revision keeps, in annotation_revision's column order.
_REVISION_CONTENT = (
    "annotation_type", "annotation_data", "measurement_values", "viewer_software",
    "annotation_data_encoded", "measurement_values_encoded",
)  # fmt: skip


def append_revision(written: str, *, changed_fields: str = "%(changed_fields)s") -> str:
    """An insert of the revision that the write in CTE `written` (its rows as `annotation_annotation
    returning *`) leaves: under the row's new row_version, with the note's action and author."""
    content = ", ".join(_REVISION_CONTENT)
    taken = ", ".join(f"w.{name}" for name in _REVISION_CONTENT)
    return (
        "insert into annotation_revision (annotation_id, revision, action, changed_fields,"
        f" user_id, restored_from, {content}, created_at)"
        f" select w.id, w.row_version, %(action)s, {changed_fields}, %(actor)s,"
        f" %(restored_from)s, {taken}, w.updated_at from {written} w"
    )


INSERT_ANNOTATION = f"""
with written as (
    insert into annotation_annotation as a (
        user_id, project_id, study_uid, series_uid, instance_uid, annotation_type,
        annotation_data, measurement_values, viewer_software,
        annotation_data_encoded, measurement_values_encoded)
    values (%(user_id)s, %(project_id)s, %(study_uid)s, %(series_uid)s, %(instance_uid)s,
            %(annotation_type)s, %(annotation_data)s, %(measurement_values)s,
            %(viewer_software)s, %(annotation_data_encoded)s, %(measurement_values_encoded)s)
    returning a.*
), revision as ({append_revision("written")})
select {answer_columns("written")} from written
"""

# An earlier revision's content written back over the current one, as a new revision that names
# its source. Which fields change is decided here, against the locked current row.
RESTORE_REVISION = f"""
with source as (
    select {", ".join(f"r.{name}" for name in _REVISION_CONTENT)},
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
    set {", ".join(f"{name} = s.{name}" for name in _REVISION_CONTENT)},
        row_version = a.row_version + 1, updated_at = now()
    from source s
    where a.id = %(annotation_id)s
    returning a.*, s.changed_fields
), revision as ({append_revision("written", changed_fields="w.changed_fields")})
select {answer_columns("written")} from written
"""


def _revision_column(name: str) -> str:
    """Annotation field `name` as revision `r` of annotation `a` left it, for an answer."""
    if name in _REVISION_CONTENT:
        read = f"r.{name}"
    else:
        read = {"row_version": "r.revision", "updated_at": "r.created_at"}.get(name, f"a.{name}")
    if name in _ENCODING_OF:
        read = f"case when r.{_ENCODING_OF[name]} is null then {read} end"
    return f"{read} as {name}"


GET_REVISION = f"""
select {", ".join(_revision_column(name) for name in ANNOTATION_FIELDS)}
from annotation_revision r
join annotation_annotation a on a.id = r.annotation_id
where r.annotation_id = %(annotation_id)s and r.revision = %(revision)s
"""

LIST_REVISIONS = """
select annotation_id, revision, action, changed_fields, user_id, restored_from, created_at
from annotation_revision
where annotation_id = %(annotation_id)s
  and (%(before)s::bigint is null or revision < %(before)s::bigint)
order by revision desc
limit %(limit)s
"""

# The annotation, its project's state and the caller's role there, in one round trip.
_GET_WITH_ACCESS = """
select {columns}, m.role as caller_role, p.is_active as project_active
from annotation_annotation a
join security_project p on p.id = a.project_id
left join security_project_member m on m.project_id = a.project_id and m.user_id = %(user_id)s
where a.id = %(annotation_id)s and (a.deleted_at is null or %(include_deleted)s)
"""
GET_WITH_ACCESS = _GET_WITH_ACCESS.format(columns=ANSWER_COLUMNS)
# A change reads the JSON whole: the use case checks the combined size against its limits.
GET_WITH_ACCESS_FOR_UPDATE = _GET_WITH_ACCESS.format(columns=COLUMNS) + " for update of a"

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

# Filters ListAnnotations may use: request field -> SQL condition.
_FILTERS: Mapping[str, str] = {
    "project_id": "a.project_id = %(project_id)s",
    "project_ids": "a.project_id = any(%(project_ids)s)",
    "study_uid": "a.study_uid = %(study_uid)s",
    "series_uid": "a.series_uid = %(series_uid)s",
    "instance_uid": "a.instance_uid = %(instance_uid)s",
    "annotation_type": "a.annotation_type = %(annotation_type)s",
    "user_id": "a.user_id = %(user_id)s",
    "created_after": "a.created_at >= %(created_after)s",
    "created_before": "a.created_at < %(created_before)s",
    "live": "a.deleted_at is null",
    "after": "(a.created_at, a.id) < (%(after_created_at)s, %(after_id)s)",
}
_JSON_COLUMNS = frozenset({"annotation_data", "measurement_values"})
UPDATABLE_COLUMNS = frozenset(
    {
        "annotation_type", "annotation_data", "measurement_values", "viewer_software",
        "annotation_data_encoded", "measurement_values_encoded",
    }
)  # fmt: skip


class AnnotationRepository:
    """AnnotationStore (pacs_grpc.services.ports) on annotation_annotation, in the caller's
    transaction.

    No database error is mapped here: the use cases validate first, and `update` refuses a column
    outside UPDATABLE_COLUMNS with ValueError (a bug, not input). `delete` queues the objects of
    the annotation's groups in the same transaction, so they go only if the delete commits.
    What is read to answer (list pages, get_with_access without for_update, the rows insert and
    update return) leaves out each JSON field whose encoding was kept: see ANSWER_COLUMNS.
    """

    async def insert(
        self, conn: Connection, *, project_id: int, user_id: int, where: Location,
        content: AnnotationContent,
    ) -> Annotation:  # fmt: skip
        params = {
            "user_id": user_id,
            "project_id": project_id,
            "study_uid": where.study_uid,
            "series_uid": where.series_uid,
            "instance_uid": where.instance_uid,
            "annotation_type": content.annotation_type,
            "annotation_data": Jsonb(content.annotation_data),
            "measurement_values": _json_or_null(content.measurement_values),
            "viewer_software": content.viewer_software,
            "annotation_data_encoded": content.annotation_data_encoded,
            "measurement_values_encoded": content.measurement_values_encoded,
            **_note_params(
                RevisionNote(
                    RevisionAction.CREATED, user_id, annotation_rules.created_fields(content)
                )
            ),
        }
        async with conn.cursor(row_factory=class_row(Annotation)) as cur:
            await cur.execute(INSERT_ANNOTATION, params)
            row = await cur.fetchone()
        assert row is not None
        return row

    async def get_with_access(
        self, conn: Connection, annotation_id: int, user_id: int, *, for_update: bool = False,
        include_deleted: bool = False,
    ) -> AnnotationAccess | None:  # fmt: skip
        """The annotation and the caller's access to it; locked for a change when asked. One
        in the trash is found only with include_deleted.

        Without for_update, JSON fields whose encoding was kept come back None (see
        ANSWER_COLUMNS); with it, everything is read.
        """
        query = GET_WITH_ACCESS_FOR_UPDATE if for_update else GET_WITH_ACCESS
        params = {
            "annotation_id": annotation_id, "user_id": user_id, "include_deleted": include_deleted
        }  # fmt: skip
        async with conn.cursor(binary=True) as cur:
            await cur.execute(query, params)
            row = await cur.fetchone()
        if row is None:
            return None
        *annotation_values, role, active = row
        return AnnotationAccess(
            Annotation(*annotation_values), ProjectRole.from_db(role) if role else None, active
        )

    async def update(
        self, conn: Connection, annotation_id: int, changes: Mapping[str, Any], note: RevisionNote
    ) -> Annotation:
        """Set whitelisted columns, bump the row version (the etag) and append its revision."""
        columns = sorted(changes)
        if not columns or not set(columns) <= UPDATABLE_COLUMNS:
            raise ValueError(f"not updatable: {set(columns) - UPDATABLE_COLUMNS}")
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(c), sql.Placeholder(c)) for c in columns
        )
        query = sql.SQL(
            "with written as (update annotation_annotation a set {assignments},"
            " row_version = a.row_version + 1, updated_at = now()"
            " where a.id = %(annotation_id)s returning a.*),"
            " revision as ({revision}) select {columns} from written"
        ).format(
            assignments=assignments,
            revision=sql.SQL(append_revision("written")),
            columns=sql.SQL(answer_columns("written")),
        )
        params = {c: (_json_or_null(v) if c in _JSON_COLUMNS else v) for c, v in changes.items()}
        async with conn.cursor(row_factory=class_row(Annotation)) as cur:
            await cur.execute(
                query, {**params, **_note_params(note), "annotation_id": annotation_id}
            )
            row = await cur.fetchone()
        assert row is not None
        return row

    async def restore(
        self, conn: Connection, annotation_id: int, revision: int, user_id: int
    ) -> Annotation | None:
        """Write revision `revision`'s content back as a new revision; None if there is no
        such revision. The caller holds the annotation's row lock."""
        note = RevisionNote(RevisionAction.RESTORED, user_id, ())
        params = {**_note_params(note), "annotation_id": annotation_id, "restored_from": revision}
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
                created_at=created_at,
            )
            for annotation, number, action, changed, author, source, created_at in rows
        ]  # fmt: skip

    async def move_to_trash(
        self, conn: Connection, annotation_id: int, user_id: int, *, trash: bool
    ) -> Annotation:
        """Into the trash (trash=True) or back out, as a DELETED or UNDELETED revision."""
        action = RevisionAction.DELETED if trash else RevisionAction.UNDELETED
        params = {
            **_note_params(RevisionNote(action, user_id, ())),
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

    async def list_page(
        self,
        conn: Connection,
        filters: ListFilter,
        *,
        after: tuple[datetime, int] | None,
        limit: int,
        budget_bytes: int,
    ) -> BudgetedRows[Annotation]:
        """Newest first, keyset-paged: `after` is the (created_at, id) of the last row seen.

        At most `limit` rows, and no more JSON than `budget_bytes` beyond the first row:
        rows past the budget come back without their JSON, only to say that more follow.
        """
        query, params = build_list_query(
            filters, after=after, limit=limit, budget_bytes=budget_bytes
        )
        # Binary results: a page's timestamps and encoded JSON need no text parsing, which
        # takes a tenth off reading 50 rows.
        async with conn.cursor(binary=True) as cur:
            await cur.execute(query, params)
            rows = await cur.fetchall()
        within = [Annotation(*row[:-1]) for row in rows if row[-1]]
        return BudgetedRows(within, cut=len(within) < len(rows))


def build_list_query(
    filters: ListFilter,
    *,
    after: tuple[datetime, int] | None,
    limit: int,
    budget_bytes: int,
) -> tuple[sql.Composed, dict[str, Any]]:
    """The list query and its parameters; public so tests can EXPLAIN exactly this SQL."""
    params: dict[str, Any] = {"limit": limit, "budget_bytes": budget_bytes}
    used: list[str] = []
    if filters.project_ids is not None:
        if len(filters.project_ids) == 1:
            used.append("project_id")
            params["project_id"] = filters.project_ids[0]
        else:
            used.append("project_ids")
            params["project_ids"] = list(filters.project_ids)
    for name in (
        "study_uid", "series_uid", "instance_uid", "annotation_type", "user_id",
        "created_after", "created_before",
    ):  # fmt: skip
        value = getattr(filters, name)
        if value is not None:
            used.append(name)
            params[name] = value
    if not filters.include_deleted:
        used.append("live")
    if after is not None:
        used.append("after")
        params["after_created_at"], params["after_id"] = after
    where = (
        sql.SQL(" and ").join(sql.SQL(_FILTERS[name]) for name in used) if used else sql.SQL("true")
    )
    # The running sum follows the index order, so the scan still stops at the limit; a
    # row's JSON is only read when the rows before it stayed within the budget.
    query = sql.SQL(
        "select {columns}, p.before_bytes < %(budget_bytes)s from ("
        " select a.*, sum(a.json_bytes) over (order by a.created_at desc, a.id desc"
        " rows between unbounded preceding and current row) - a.json_bytes as before_bytes"
        " from annotation_annotation a where {where}"
        " order by a.created_at desc, a.id desc limit %(limit)s) p"
    ).format(columns=sql.SQL(BUDGETED_COLUMNS), where=where)
    return query, params


def _note_params(note: RevisionNote) -> dict[str, Any]:
    return {
        "action": note.action.value,
        "changed_fields": list(note.changed_fields),
        "actor": note.user_id,
        "restored_from": None,
    }


def _json_or_null(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)
