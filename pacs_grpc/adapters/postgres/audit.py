"""audit_log: one append-only row per audited RPC."""

from __future__ import annotations

from pacs_grpc.adapters.postgres.database import Connection
from pacs_grpc.domain.audit import AuditEntry

INSERT_AUDIT = """
insert into audit_log (subject, client_id, project_id, action, resource_type, resource_ids,
                       study_uid, outcome, error_code, request_id)
values (%(subject)s, %(client_id)s, %(project_id)s, %(action)s, %(resource_type)s,
        %(resource_ids)s::bigint[], %(study_uid)s, %(outcome)s, %(error_code)s, %(request_id)s)
"""


class AuditRepository:
    """AuditStore: one audit_log insert in the caller's transaction, so a use case's audit row
    commits or rolls back with its data. Nothing is mapped: a failed insert fails that transaction.
    """

    async def insert(self, conn: Connection, entry: AuditEntry) -> None:
        async with conn.cursor() as cur:
            await cur.execute(
                INSERT_AUDIT,
                {
                    "subject": entry.subject,
                    "client_id": entry.client_id,
                    "project_id": entry.project_id,
                    "action": entry.action,
                    "resource_type": entry.resource_type,
                    "resource_ids": _bigint_array(entry.resource_ids),
                    "study_uid": entry.study_uid,
                    "outcome": entry.outcome,
                    "error_code": entry.error_code,
                    "request_id": entry.request_id,
                },
            )


def _bigint_array(ids: tuple[int, ...]) -> str | None:
    """The ids as an array literal: psycopg adapts a Python list by inspecting its items on
    every call, which cost a read's audit insert 40 us for one id and 85 us for a page's 50."""
    return "{" + ",".join(str(int(i)) for i in ids) + "}" if ids else None
