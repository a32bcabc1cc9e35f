"""What every MaskService use case does first or last: find the annotation or group the
caller names and check their role on it, and clear away objects a failed call stored.

Masks, exports and imports share these, so the NOT_FOUND / PERMISSION_DENIED rules and the
audit facts they record are the same for every RPC that reaches a group.
"""

from __future__ import annotations

import contextlib
import logging

from pacs_grpc.domain import validation
from pacs_grpc.domain.annotation import Annotation
from pacs_grpc.domain.errors import NotFound
from pacs_grpc.domain.identity import ProjectRole
from pacs_grpc.domain.masks import GroupAccess
from pacs_grpc.services.annotation_access import accessible_annotation
from pacs_grpc.services.context import CallContext, check_access
from pacs_grpc.services.ports import (
    AnnotationAccessLookup,
    DeletionQueue,
    GroupAccessLookup,
    ObjectStorage,
    Transactions,
    TxT,
)

_log = logging.getLogger(__name__)


async def authorized_annotation(
    annotations: AnnotationAccessLookup[TxT], conn: TxT, call: CallContext, annotation_id: int
) -> Annotation:
    """The annotation, if the caller holds the role the RPC table asks for on its project."""
    annotation, _ = await accessible_annotation(annotations, conn, call, annotation_id)
    return annotation


async def authorized_group(
    groups: GroupAccessLookup[TxT], conn: TxT, call: CallContext, annotation_id: int, group_id: int,
    *, for_update: bool = False, include_deleted: bool = False,
) -> GroupAccess:  # fmt: skip
    """The group of that annotation, if the caller holds the role the RPC table asks for."""
    access, _ = await authorized_group_with_role(
        groups, conn, call, annotation_id, group_id, for_update=for_update,
        include_deleted=include_deleted,
    )  # fmt: skip
    return access


async def authorized_group_with_role(
    groups: GroupAccessLookup[TxT], conn: TxT, call: CallContext, annotation_id: int, group_id: int,
    *, for_update: bool = False, include_deleted: bool = False,
) -> tuple[GroupAccess, ProjectRole]:  # fmt: skip
    """As authorized_group, with the caller's effective role (see check_access: platform
    administrators act as owners). One in the trash is NOT_FOUND unless `include_deleted`."""
    validation.positive_id("annotation_id", annotation_id)
    validation.positive_id("group_id", group_id)
    call.audit.touch(resource_type="mask_group", resource_ids=[group_id])
    access = await groups.group_with_access(
        conn, annotation_id, group_id, call.caller.user_id, for_update=for_update,
        include_deleted=include_deleted,
    )  # fmt: skip
    if access is None:
        raise NotFound("mask group not found")
    call.audit.touch(project_id=access.project_id, study_uid=access.study_uid)
    role = check_access(call, access.caller_role, project_active=access.project_active,
                        what="mask group")  # fmt: skip
    return access, role


async def discard_objects(
    storage: ObjectStorage, database: Transactions[TxT], queue: DeletionQueue[TxT], keys: list[str],
    *, what: str,
) -> None:  # fmt: skip
    """Delete objects a failed call stored, and queue them for the sweeper too: storage may be
    away right now, or a worker still finishing a slice may create its object after this."""
    with contextlib.suppress(Exception):
        await storage.delete(keys)
    try:
        async with database.transaction() as conn:
            await queue.enqueue_deletions(conn, keys)
    except Exception:  # noqa: BLE001 - the delete above did what it could
        _log.warning(f"could not queue objects of {what}", extra={"count": len(keys)})
