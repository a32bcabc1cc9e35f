"""mask_group_export: the SEGs written from mask groups."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from psycopg.rows import kwargs_row

from pacs_grpc.adapters.postgres.database import Connection
from pacs_grpc.domain.exports import MaskGroupExport, NewExport, PacsStatus

_COLUMNS = ", ".join(f"e.{f.name}" for f in fields(MaskGroupExport))

INSERT_EXPORT = f"""
insert into mask_group_export as e (mask_group_id, object_key, object_version, size_bytes,
    seg_series_uid, seg_sop_instance_uid, series_number, segment_count, pacs_status,
    pacs_failure_reason, created_by)
values (%(group_id)s, %(object_key)s, %(object_version)s, %(size_bytes)s, %(seg_series_uid)s,
    %(seg_sop_instance_uid)s, %(series_number)s, %(segment_count)s, %(pacs_status)s,
    %(pacs_failure_reason)s, %(created_by)s)
returning {_COLUMNS}
"""

GET_EXPORT = f"""
select {_COLUMNS} from mask_group_export e
where e.id = %(export_id)s and e.mask_group_id = %(group_id)s
"""

# Newest first: ids grow with time.
LIST_EXPORTS = f"""
select {_COLUMNS} from mask_group_export e
where e.mask_group_id = %(group_id)s and e.id < %(before_id)s
order by e.id desc limit %(limit)s
"""

COUNT_EXPORTS = "select count(*) from mask_group_export where mask_group_id = %(group_id)s"


def _export(*, pacs_status: str, **columns: Any) -> MaskGroupExport:
    return MaskGroupExport(**columns, pacs_status=PacsStatus(pacs_status))


_ROW = kwargs_row(_export)


class ExportRepository:
    """ExportStore (pacs_grpc.services.ports) on mask_group_export, in the caller's transaction.

    Every read is scoped to the group, so another group's export id reads as None. Maps no errors:
    the use case checks the group before inserting.
    """

    async def insert(
        self, conn: Connection, group_id: int, new: NewExport, created_by: int
    ) -> MaskGroupExport:
        params = {
            **new.__dict__,
            "pacs_status": new.pacs_status.value,
            "group_id": group_id,
            "created_by": created_by,
        }
        async with conn.cursor(row_factory=_ROW) as cur:
            await cur.execute(INSERT_EXPORT, params)
            row = await cur.fetchone()
        assert row is not None
        return row

    async def get(self, conn: Connection, group_id: int, export_id: int) -> MaskGroupExport | None:
        async with conn.cursor(row_factory=_ROW) as cur:
            await cur.execute(GET_EXPORT, {"group_id": group_id, "export_id": export_id})
            return await cur.fetchone()

    async def list_exports(
        self, conn: Connection, group_id: int, *, before_id: int, limit: int
    ) -> list[MaskGroupExport]:
        params = {"group_id": group_id, "before_id": before_id, "limit": limit}
        async with conn.cursor(row_factory=_ROW) as cur:
            await cur.execute(LIST_EXPORTS, params)
            return await cur.fetchall()

    async def count(self, conn: Connection, group_id: int) -> int:
        async with conn.cursor() as cur:
            await cur.execute(COUNT_EXPORTS, {"group_id": group_id})
            row = await cur.fetchone()
        return int(row[0]) if row else 0
