"""Use cases of a mask group's trash: DeleteMaskGroup (to the trash, or a purge by an owner)
and UndeleteMaskGroup, as for annotations (services/annotation_history.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Generic

from pacs_grpc.domain.errors import FailedPrecondition, PermissionDenied
from pacs_grpc.domain.identity import ProjectRole
from pacs_grpc.domain.masks import MaskGroup
from pacs_grpc.domain.review import ReviewState
from pacs_grpc.services.context import AuditedTransactions, CallContext
from pacs_grpc.services.mask_access import authorized_group, authorized_group_with_role
from pacs_grpc.services.ports import Clock, MaskStore, TxT


class MaskGroupTrash(Generic[TxT]):
    """A deleted group waits in the trash for `trash_retention`, where it can be undeleted;
    the sweeper then purges it. Only owners purge at once, and only owners delete an approved
    group (approved content is frozen)."""

    def __init__(
        self,
        transaction: AuditedTransactions[TxT],
        *,
        masks: MaskStore[TxT],
        clock: Clock,
        trash_retention: timedelta,
    ) -> None:
        self._transaction = transaction
        self._masks = masks
        self._clock = clock
        self._trash_retention = trash_retention

    async def delete(
        self, call: CallContext, annotation_id: int, group_id: int, *, purge: bool = False
    ) -> int:
        """To the trash, or for good with `purge`; how many stored objects were queued."""
        async with self._transaction(call) as conn:
            access, role = await authorized_group_with_role(
                self._masks, conn, call, annotation_id, group_id, for_update=True,
                include_deleted=purge,
            )  # fmt: skip
            if purge:
                # The audit row says this was the one hard delete, not a move to the trash.
                call.audit.touch(resource_type="mask_group_purge")
            owner = role is ProjectRole.OWNER
            if access.group.review.state is ReviewState.APPROVED and not owner:
                raise FailedPrecondition(
                    "the mask group is approved and frozen; only the project's owners may delete it"
                )
            if not purge:
                await self._masks.move_group_to_trash(conn, group_id, trash=True)
                return 0
            if not owner:
                raise PermissionDenied("purge: only the project's owners may purge")
            return await self._masks.delete_group(conn, group_id)

    async def undelete(self, call: CallContext, annotation_id: int, group_id: int) -> MaskGroup:
        """Bring a group back from the trash while its retention lasts."""
        async with self._transaction(call) as conn:
            access = await authorized_group(
                self._masks, conn, call, annotation_id, group_id, for_update=True,
                include_deleted=True,
            )  # fmt: skip
            deleted_at = access.group.deleted_at
            if deleted_at is None:
                raise FailedPrecondition("group_id: the mask group is not in the trash")
            if deleted_at <= self._clock.now() - self._trash_retention:
                raise FailedPrecondition(
                    "group_id: the mask group's time in the trash is up; it is being purged"
                )
            return await self._masks.move_group_to_trash(conn, group_id, trash=False)
