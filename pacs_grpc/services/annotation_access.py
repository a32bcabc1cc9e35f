"""What every annotation use case does first and last: find the annotation with the caller's
role, and record the change on the project's feed after the audit row."""

from __future__ import annotations

from pacs_grpc.domain.annotation import Annotation, EventType
from pacs_grpc.domain.errors import Conflict, NotFound
from pacs_grpc.domain.identity import ProjectRole
from pacs_grpc.services.context import AuditedTransactions, CallContext, check_access
from pacs_grpc.services.ports import AnnotationAccessLookup, EventRecorder, TxT


async def accessible_annotation(
    annotations: AnnotationAccessLookup[TxT], conn: TxT, call: CallContext, annotation_id: int,
    *, for_update: bool = False, include_deleted: bool = False,
) -> tuple[Annotation, ProjectRole]:  # fmt: skip
    """The annotation and the caller's effective role, if the RPC's access is met (see
    check_access). One in the trash is NOT_FOUND unless `include_deleted`."""
    found = await annotations.get_with_access(
        conn, annotation_id, call.caller.user_id, for_update=for_update,
        include_deleted=include_deleted,
    )  # fmt: skip
    if found is None:
        raise NotFound("annotation not found")
    annotation = found.annotation
    call.audit.touch(project_id=annotation.project_id, study_uid=annotation.study_uid)
    role = check_access(
        call, found.caller_role, project_active=found.project_active, what="annotation"
    )
    return annotation, role


def check_version(current: Annotation, expected_version: int | None) -> None:
    """Refuse a write whose etag is stale. Without one the write applies: last writer wins, by
    the client's choice."""
    if expected_version is not None and expected_version != current.row_version:
        raise Conflict("etag: the annotation changed since it was read; read it again and retry")


async def record_change(
    transaction: AuditedTransactions[TxT], record_event: EventRecorder[TxT], conn: TxT,
    call: CallContext, *, annotation: Annotation, event_type: EventType,
    mask_group_id: int | None = None,
) -> None:  # fmt: skip
    """The audit row, then the change event. The event takes the project's feed lock until
    commit, so it goes last: the audit row is written before it, not after."""
    await transaction.write_audit(conn, call)
    await record_event(
        conn,
        project_id=annotation.project_id,
        study_uid=annotation.study_uid,
        annotation_id=annotation.id,
        event_type=event_type,
        mask_group_id=mask_group_id,
    )
