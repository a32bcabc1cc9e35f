"""annotation_annotation: hand-written SQL, dynamic parts only from whitelists. History, review
and trash queries are in annotation_history.py; the column lists in annotation_columns.py."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from pacs_grpc.adapters.postgres.annotation_columns import (
    ANNOTATION_FIELDS,
    ANSWER_COLUMNS,
    BACK_TO_DRAFT,
    BUDGETED_COLUMNS,
    COLUMNS,
    answer_columns,
    append_revision,
    note_params,
)
from pacs_grpc.adapters.postgres.annotation_history import AnnotationHistoryQueries
from pacs_grpc.adapters.postgres.database import Connection
from pacs_grpc.domain import annotation_rules
from pacs_grpc.domain.annotation import (
    Annotation,
    AnnotationAccess,
    ListFilter,
    RevisionAction,
    RevisionNote,
)
from pacs_grpc.domain.annotation_rules import AnnotationContent, Location
from pacs_grpc.domain.identity import ProjectRole
from pacs_grpc.domain.paging import BudgetedRows

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
    "review_state": "a.review_state = %(review_state)s",
    "after": "(a.created_at, a.id) < (%(after_created_at)s, %(after_id)s)",
}
_JSON_COLUMNS = frozenset({"annotation_data", "measurement_values"})
UPDATABLE_COLUMNS = frozenset(
    {
        "annotation_type", "annotation_data", "measurement_values", "viewer_software",
        "annotation_data_encoded", "measurement_values_encoded",
    }
)  # fmt: skip


class AnnotationRepository(AnnotationHistoryQueries):
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
            **note_params(
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
            f" {BACK_TO_DRAFT}, row_version = a.row_version + 1, updated_at = now()"
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
                query, {**params, **note_params(note), "annotation_id": annotation_id}
            )
            row = await cur.fetchone()
        assert row is not None
        return row

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
    if filters.review_state is not None:
        used.append("review_state")
        params["review_state"] = filters.review_state.value
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


def _json_or_null(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


__all__ = ["ANNOTATION_FIELDS", "AnnotationRepository", "answer_columns", "build_list_query"]
