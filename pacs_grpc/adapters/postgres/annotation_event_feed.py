"""annotation_event: writing change events, and reading them back in event_id order.

The hub that streams these events to viewers is in annotation_events.py, which also
re-exports record_event, AnnotationEventFeed, CHANNEL and project_lock_key.
"""

from __future__ import annotations

from typing import Any

from psycopg import pq

from pacs_grpc.adapters.postgres.annotations import ANNOTATION_FIELDS, answer_columns
from pacs_grpc.adapters.postgres.database import Connection
from pacs_grpc.domain.annotation import Annotation, AnnotationEvent, EventType
from pacs_grpc.domain.paging import BudgetedRows
from pacs_grpc.domain.review import Review, ReviewState

CHANNEL = "pacs_annotation_events"

# Advisory lock keys are one bigint space per database, shared with every other feature that
# locks (idempotency keys, the migrator). The high 32 bits name this one ("pcev"), the low 32
# bits are the project id. Projects whose ids differ by a multiple of 2**32 would share a key:
# that serialises their writers more than needed, never less, so ordering stays correct.
_LOCK_NAMESPACE = 0x7063_6576


def project_lock_key(project_id: int) -> int:
    """The pg_advisory_xact_lock key that orders the events of one project."""
    return (_LOCK_NAMESPACE << 32) | (project_id & 0xFFFF_FFFF)


# Migration 0011: the project's feed lock, the insert and the NOTIFY, in that order. The
# NOTIFY's payload is the project id only (UIDs are client-chosen and may identify patients);
# listeners re-read the table anyway.
APPEND_EVENT = """
select annotation_event_append(%(lock_key)s, %(project_id)s, %(study_uid)s, %(annotation_id)s,
                               %(event_type)s, %(channel)s, %(mask_group_id)s::bigint)
"""


async def record_event(
    conn: Connection,
    *,
    project_id: int,
    study_uid: str,
    annotation_id: int,
    event_type: EventType,
    mask_group_id: int | None = None,
) -> int:
    """Append an event to the project's feed; return its event_id.

    Must be the LAST statement of the writer's transaction, just before it commits. The
    per-project lock taken here is held until commit, so that a later event_id can only
    exist once every earlier one of the project has committed (readers never skip one
    that commits late); every writer of the project waits while it is held, so nothing
    slow may follow. The NOTIFY is delivered at commit, and not at all on rollback.
    """
    if conn.info.transaction_status != pq.TransactionStatus.INTRANS:
        # In autocommit the lock would be released before the insert commits.
        raise RuntimeError("record_event must run inside the writer's transaction")
    params: dict[str, Any] = {
        "lock_key": project_lock_key(project_id),
        "project_id": project_id,
        "study_uid": study_uid,
        "annotation_id": annotation_id,
        "event_type": event_type.value,
        "channel": CHANNEL,
        "mask_group_id": mask_group_id,
    }
    # One statement, one round trip: once the lock is granted, each further round trip
    # would lengthen the wait of every other writer of the project.
    async with conn.cursor() as cur:
        await cur.execute(APPEND_EVENT, params)
        row = await cur.fetchone()
    if row is None:  # pragma: no cover - a select of a function returns one row
        raise RuntimeError("annotation_event_append returned nothing")
    return int(row[0])


_EVENT_COLUMN_COUNT = 11


def _events_after(condition: str) -> str:
    """Events in event_id order with their annotations, under a byte budget.

    The running sum of the annotations' JSON follows the scan, which still stops at the
    limit; an event's annotation JSON is only read while the events before it stayed
    within %(budget_bytes)s. The last column says whether the event did.
    """
    inner = ", ".join(f"a.{name} as a_{name}" for name in ANNOTATION_FIELDS)
    outer = answer_columns("b", prefix="a_", within="b.before_bytes < %(budget_bytes)s")
    return f"""
select b.event_id, b.project_id, b.study_uid, b.annotation_id, b.event_type, b.occurred_at,
       b.mask_group_id, b.g_review_state, b.g_reviewed_by, b.g_reviewed_at, b.g_review_comment,
       {outer}, b.before_bytes < %(budget_bytes)s
from (
    select e.event_id, e.project_id, e.study_uid, e.annotation_id, e.event_type, e.occurred_at,
           e.mask_group_id, g.review_state as g_review_state, g.reviewed_by as g_reviewed_by,
           g.reviewed_at as g_reviewed_at, g.review_comment as g_review_comment,
           {inner},
           sum(coalesce(a.json_bytes, 0)) over (order by e.event_id
               rows between unbounded preceding and current row)
             - coalesce(a.json_bytes, 0) as before_bytes
    from annotation_event e
    left join annotation_annotation a
        on a.id = e.annotation_id and a.project_id = e.project_id and a.deleted_at is null
    left join annotation_mask_group g on g.id = e.mask_group_id and g.annotation_id = a.id
    where {condition}
    order by e.event_id limit %(limit)s
) b
"""


# Two statements rather than "study_uid is null or ...": each matches one index exactly,
# (project_id, event_id) or (project_id, study_uid, event_id), as a range scan in order.
EVENTS_AFTER = _events_after("e.project_id = %(project_id)s and e.event_id > %(after_event_id)s")
STUDY_EVENTS_AFTER = _events_after(
    "e.project_id = %(project_id)s and e.study_uid = %(study_uid)s"
    " and e.event_id > %(after_event_id)s"
)
LATEST_EVENT_ID = """
select coalesce(max(event_id), 0) from annotation_event where project_id = %(project_id)s
"""


class AnnotationEventFeed:
    """The EventHub's reads of annotation_event, on a connection the caller holds; writes nothing.

    Events come in event_id order. record_event's per-project lock makes that commit order within
    a project, so a reader that resumes after the last id it saw never skips an event.
    """

    async def after(
        self,
        conn: Connection,
        project_id: int,
        *,
        after_event_id: int,
        study_uid: str | None,
        limit: int,
        budget_bytes: int,
    ) -> BudgetedRows[AnnotationEvent]:
        """Up to `limit` events with event_id > after_event_id, ascending, ending early
        (`cut`) once their annotations' JSON passes `budget_bytes`; never fewer than one.

        Each carries the annotation as it is now, or None once it is deleted.
        """
        params = {
            "project_id": project_id,
            "study_uid": study_uid,
            "after_event_id": after_event_id,
            "limit": limit,
            "budget_bytes": budget_bytes,
        }
        query = EVENTS_AFTER if study_uid is None else STUDY_EVENTS_AFTER
        async with conn.cursor() as cur:
            await cur.execute(query, params)
            rows = await cur.fetchall()
        within = [_event(row[:-1]) for row in rows if row[-1]]
        return BudgetedRows(within, cut=len(within) < len(rows))

    async def latest_event_id(self, conn: Connection, project_id: int) -> int:
        """The project's highest event_id, 0 when it has none."""
        async with conn.cursor() as cur:
            await cur.execute(LATEST_EVENT_ID, {"project_id": project_id})
            row = await cur.fetchone()
        return int(row[0]) if row else 0


def _event(row: tuple[Any, ...]) -> AnnotationEvent:
    annotation_values = row[_EVENT_COLUMN_COUNT:]
    annotation = None
    if annotation_values[0] is not None:
        annotation = Annotation(**dict(zip(ANNOTATION_FIELDS, annotation_values, strict=True)))
    return AnnotationEvent(
        event_id=row[0],
        project_id=row[1],
        study_uid=row[2],
        annotation_id=row[3],
        event_type=EventType(row[4]),
        occurred_at=row[5],
        annotation=annotation,
        mask_group_id=row[6],
        mask_group_review=(
            Review(ReviewState(row[7]), row[8], row[9], row[10]) if row[7] is not None else None
        ),
    )
