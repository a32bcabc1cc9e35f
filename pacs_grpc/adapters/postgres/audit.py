"""audit_log: one append-only row per audited RPC."""

from __future__ import annotations

from pacs_grpc.adapters.postgres.database import Connection
from pacs_grpc.domain.audit import AuditEntry

INSERT_AUDIT = """
insert into audit_log (subject, client_id, project_id, action, resource_type, resource_ids,
                       study_uid, outcome, error_code, request_id)
values (%(subject)s, %(client_id)s, %(project_id)s, %(action)s, %(resource_type)s,
        %(resource_ids)s, %(study_uid)s, %(outcome)s, %(error_code)s, %(request_id)s)
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
                    "resource_ids": list(entry.resource_ids) or None,
                    "study_uid": entry.study_uid,
                    "outcome": entry.outcome,
                    "error_code": entry.error_code,
                    "request_id": entry.request_id,
                },
            )
