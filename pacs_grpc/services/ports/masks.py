"""Mask groups, their slices and upload tickets, SEG exports, and objects queued for deletion."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from pacs_grpc.domain.exports import MaskGroupExport, NewExport
from pacs_grpc.domain.masks import (
    GroupAccess,
    GroupFields,
    Mask,
    MaskGroup,
    NewMask,
    PendingUpload,
    SliceDeclaration,
    VersionOf,
)
from pacs_grpc.domain.review import Review, ReviewState
from pacs_grpc.services.ports.annotations import TrashPurger
from pacs_grpc.services.ports.transactions import TxT_contra


class GroupAccessLookup(Protocol[TxT_contra]):
    """A mask group with the caller's role in its project, read together, so the access check sees
    one snapshot; `for_update` locks the group until the transaction ends.
    """

    async def group_with_access(
        self, conn: TxT_contra, annotation_id: int, group_id: int, user_id: int, *,
        for_update: bool = False, include_deleted: bool = False,
    ) -> GroupAccess | None:  # fmt: skip
        """The group of that annotation with the user's role in its project, in one query; one
        in the trash only with include_deleted."""
        ...


class DeletionQueue(Protocol[TxT_contra]):
    """Queues object keys for the sweeper in the caller's transaction: an object goes only once
    what referenced it is gone for good.
    """

    async def enqueue_deletions(self, conn: TxT_contra, keys: Sequence[str]) -> None:
        """Queues objects for the sweeper (pacs_grpc.services.sweeper), due at once."""
        ...


class ScheduledDeletions(Protocol[TxT_contra]):
    """Queues object keys for a later time, in the caller's transaction: objects a ticket let in,
    deleted after it expires whatever the client does.
    """

    async def enqueue_at(self, conn: TxT_contra, keys: Sequence[str], due_at: datetime) -> None:
        """Queues objects for the sweeper, due at `due_at` (unless something claims them)."""
        ...


class MaskStore(
    GroupAccessLookup[TxT_contra],
    DeletionQueue[TxT_contra],
    TrashPurger[TxT_contra],
    Protocol[TxT_contra],
):
    """Mask groups, upload tickets and masks, in the transaction the caller passes. `record_masks`
    holds up under concurrent completions (each ticket yields one mask) and refuses a second mask
    for a slice with FailedPrecondition.
    """

    async def insert_group(
        self, conn: TxT_contra, annotation_id: int, values: GroupFields, created_by: int, *,
        version_of: VersionOf | None = None, client_id: str | None = None,
    ) -> MaskGroup:  # fmt: skip
        """A new group; with `version_of`, the next version of a lineage, pending and not yet
        current. A second successor of one version is AlreadyExists."""
        ...

    async def get_group(self, conn: TxT_contra, group_id: int) -> MaskGroup | None: ...
    async def list_groups(
        self, conn: TxT_contra, annotation_id: int, *, after_id: int, limit: int,
        review_state: ReviewState | None = None, all_versions: bool = False,
    ) -> list[MaskGroup]: ...  # fmt: skip
    async def list_versions(self, conn: TxT_contra, group: MaskGroup) -> list[MaskGroup]:
        """Every version of the group's lineage, newest first."""
        ...

    async def slice_authors(self, conn: TxT_contra, group_id: int) -> set[int]:
        """Who recorded the group's slices."""
        ...

    async def review_group(self, conn: TxT_contra, group_id: int, review: Review) -> MaskGroup:
        """Records one review transition of the group, which the caller has locked."""
        ...

    async def delete_group(self, conn: TxT_contra, group_id: int) -> int:
        """Deletes the group for good (a purge) and queues its objects for deletion; the rows
        removed. Its predecessor becomes current if it was the current version."""
        ...

    async def move_group_to_trash(
        self, conn: TxT_contra, group_id: int, *, trash: bool
    ) -> MaskGroup:
        """Into the trash or back out; slices, exports and objects stay."""
        ...

    async def insert_uploads(
        self, conn: TxT_contra, group_id: int,
        declared: Sequence[tuple[uuid.UUID, str, SliceDeclaration]],
        *, method: str, created_by: int, expires_at: datetime,
    ) -> None: ...  # fmt: skip
    async def uploads(
        self, conn: TxT_contra, group_id: int, upload_ids: Sequence[uuid.UUID]
    ) -> list[PendingUpload]: ...
    async def masks_by_upload(
        self, conn: TxT_contra, upload_ids: Sequence[uuid.UUID]
    ) -> list[Mask]: ...
    async def record_masks(
        self, conn: TxT_contra, group_id: int, new: Sequence[NewMask], *, from_tickets: bool = True,
        recorded_by: int | None = None,
    ) -> list[Mask]:  # fmt: skip
        """Records the masks, by `recorded_by`, marking their tickets completed; a slice already
        recorded keeps its mask (a concurrent completion), so fewer masks than `new` may come
        back. The group becomes its lineage's current version once complete (a trigger)."""
        ...

    async def list_masks(
        self, conn: TxT_contra, group_id: int, *, after_slice: int, limit: int
    ) -> list[Mask]: ...
    async def get_mask(self, conn: TxT_contra, group_id: int, mask_id: int) -> Mask | None: ...
    async def masks_of_group(
        self, conn: TxT_contra, group_id: int, mask_ids: Sequence[int] | None, *, limit: int
    ) -> list[Mask]: ...


class ExportStore(Protocol[TxT_contra]):
    """A group's recorded SEG exports, in the caller's transaction. Reads are scoped to the group;
    `list_exports` goes newest first, below `before_id`.
    """

    async def insert(
        self, conn: TxT_contra, group_id: int, new: NewExport, created_by: int
    ) -> MaskGroupExport: ...
    async def get(
        self, conn: TxT_contra, group_id: int, export_id: int
    ) -> MaskGroupExport | None: ...
    async def list_exports(
        self, conn: TxT_contra, group_id: int, *, before_id: int, limit: int
    ) -> list[MaskGroupExport]: ...
    async def count(self, conn: TxT_contra, group_id: int) -> int: ...
