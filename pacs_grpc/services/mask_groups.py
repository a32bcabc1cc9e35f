"""Use cases of MaskService on groups and their recorded masks: create, read, list, delete."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic

from pacs_grpc.domain import paging, validation
from pacs_grpc.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from pacs_grpc.domain.masks import Mask, MaskGroup, MaskLimits, VersionOf, group_fields
from pacs_grpc.domain.paging import Page
from pacs_grpc.domain.review import ReviewState
from pacs_grpc.domain.segments import SegmentInput
from pacs_grpc.services.context import AuditedTransactions, CallContext
from pacs_grpc.services.idempotency import create_once
from pacs_grpc.services.mask_access import authorized_annotation, authorized_group
from pacs_grpc.services.pacs_checks import PacsChecks
from pacs_grpc.services.ports import (
    AnnotationAccessLookup,
    IdempotencyStore,
    MaskStore,
    Transactions,
    TxT,
)

_OPERATION = "CreateMaskGroup"


@dataclass(frozen=True)
class NewGroup:
    """CreateMaskGroup's group as the client sent it; `create_group` validates every field."""

    group_name: str
    model_name: str
    version: str
    modality: str
    slice_count: int
    mask_type: str
    description: str
    segments: Sequence[SegmentInput] = ()
    # A correction: the COMPLETE, current version this one supersedes (0: a new lineage).
    supersedes_group_id: int = 0
    inference_parameters: dict[str, Any] | None = None
    input_series_uid: str = ""


class MaskGroupUseCases(Generic[TxT]):
    """Mask groups of an annotation, and the masks recorded in them."""

    def __init__(
        self,
        transaction: AuditedTransactions[TxT],
        *,
        masks: MaskStore[TxT],
        annotations: AnnotationAccessLookup[TxT],
        idempotency: IdempotencyStore[TxT],
        database: Transactions[TxT],
        limits: MaskLimits,
        pacs_checks: PacsChecks,
    ) -> None:
        self._transaction = transaction
        self._masks = masks
        self._annotations = annotations
        self._idempotency = idempotency
        # Unaudited: the read before the audited transaction when the PACS is asked.
        self._database = database
        self._limits = limits
        self._pacs_checks = pacs_checks

    async def create_group(
        self, call: CallContext, annotation_id: int, new: NewGroup, request_id: str
    ) -> MaskGroup:
        values = group_fields(
            group_name=new.group_name,
            model_name=new.model_name,
            version=new.version,
            modality=new.modality,
            slice_count=new.slice_count,
            mask_type=new.mask_type,
            description=new.description,
            segments=new.segments,
            inference_parameters=new.inference_parameters,
            input_series_uid=new.input_series_uid,
        )
        validation.positive_id("annotation_id", annotation_id)
        if new.supersedes_group_id < 0:
            raise InvalidArgument("mask_group.supersedes_group_id", "must be a group id or 0")
        key = validation.request_id("request_id", request_id)
        fingerprint = paging.filters_fingerprint(
            annotation_id, values.__dict__, new.supersedes_group_id
        )
        if self._pacs_checks.active:
            # The annotation's images must still be in the PACS. Read (and authorised) first,
            # and the PACS asked outside any transaction, so a slow PACS holds no connection.
            async with self._database.autocommit() as conn:
                annotation = await authorized_annotation(
                    self._annotations, conn, call, annotation_id
                )
            lookup = await self._pacs_checks.look_up(
                annotation.study_uid, annotation.series_uid, annotation.instance_uid
            )
            self._pacs_checks.settle(lookup, "annotation", whose=" (the group's annotation)")
        async with self._transaction(call) as conn:
            await authorized_annotation(self._annotations, conn, call, annotation_id)

            async def insert() -> MaskGroup:
                # Checked for a new group only: the retry of a correction that went through
                # gets its group back, though the version it superseded is no longer current.
                version_of = (
                    await self._version_of(conn, call, annotation_id, new.supersedes_group_id)
                    if new.supersedes_group_id
                    else None
                )
                return await self._masks.insert_group(
                    conn,
                    annotation_id,
                    values,
                    call.caller.user_id,
                    version_of=version_of,
                    client_id=call.caller.principal.client_id,
                )

            group, _ = await create_once(
                self._idempotency,
                conn,
                call,
                operation=_OPERATION,
                request_id=key,
                fingerprint=fingerprint,
                create=insert,
                find=lambda group_id: self._masks.get_group(conn, group_id),
                id_of=lambda g: g.id,
            )
            call.audit.touch(resource_ids=[group.id])
        return group

    async def _version_of(
        self, conn: TxT, call: CallContext, annotation_id: int, supersedes: int
    ) -> VersionOf:
        """Where a correction of `supersedes` sits; only a complete, current version of this
        annotation may be corrected (locked, so two corrections cannot both see it current)."""
        found = await self._masks.group_with_access(
            conn, annotation_id, supersedes, call.caller.user_id, for_update=True
        )
        if found is None:
            raise NotFound("mask_group.supersedes_group_id: no such group of this annotation")
        previous = found.group
        if not previous.complete:
            raise FailedPrecondition(
                "mask_group.supersedes_group_id: that version is not complete; finish it, "
                "or delete it"
            )
        if not previous.is_current:
            raise FailedPrecondition(
                "mask_group.supersedes_group_id: that version is no longer current; "
                "supersede the lineage's current version"
            )
        return VersionOf(previous.id, previous.lineage_id, previous.version_number + 1)

    async def list_versions(
        self, call: CallContext, annotation_id: int, group_id: int
    ) -> list[MaskGroup]:
        """Every version of the group's lineage, newest first."""
        async with self._transaction.read(call) as conn:
            access = await authorized_group(self._masks, conn, call, annotation_id, group_id)
            versions = await self._masks.list_versions(conn, access.group)
            call.audit.returned("mask_group", [g.id for g in versions])
        return versions

    async def list_groups(
        self, call: CallContext, annotation_id: int, page_size: int, page_token: str,
        review_state: ReviewState | None = None, *, all_versions: bool = False,
    ) -> Page[MaskGroup]:  # fmt: skip
        validation.positive_id("annotation_id", annotation_id)
        limit = validation.page_size("page_size", page_size, self._limits.max_page_size)
        state = review_state.value if review_state else None
        fingerprint = paging.filters_fingerprint("groups", annotation_id, state, all_versions)
        position = paging.decode(page_token, fingerprint, arity=1)
        async with self._transaction.read(call) as conn:
            await authorized_annotation(self._annotations, conn, call, annotation_id)
            rows = await self._masks.list_groups(
                conn, annotation_id, after_id=int(position[0]) if position else 0,
                limit=limit + 1, review_state=review_state, all_versions=all_versions,
            )  # fmt: skip
            page = Page.of(rows, limit, fingerprint, lambda g: [g.id])
            call.audit.returned("mask_group", [g.id for g in page.items])
        return page

    async def get_group(self, call: CallContext, annotation_id: int, group_id: int) -> MaskGroup:
        async with self._transaction.read(call) as conn:
            access = await authorized_group(self._masks, conn, call, annotation_id, group_id)
        return access.group

    async def list_masks(
        self, call: CallContext, annotation_id: int, group_id: int, page_size: int, page_token: str
    ) -> Page[Mask]:
        limit = validation.page_size("page_size", page_size, self._limits.max_page_size)
        fingerprint = paging.filters_fingerprint("masks", group_id)
        position = paging.decode(page_token, fingerprint, arity=1)
        async with self._transaction.read(call) as conn:
            await authorized_group(self._masks, conn, call, annotation_id, group_id)
            rows = await self._masks.list_masks(
                conn, group_id, after_slice=int(position[0]) if position else -1, limit=limit + 1
            )
            page = Page.of(rows, limit, fingerprint, lambda m: [m.slice_index])
            call.audit.returned("mask", [m.id for m in page.items])
        return page

    async def get_mask(
        self, call: CallContext, annotation_id: int, group_id: int, mask_id: int
    ) -> Mask:
        validation.positive_id("mask_id", mask_id)
        async with self._transaction.read(call) as conn:
            await authorized_group(self._masks, conn, call, annotation_id, group_id)
            mask = await self._masks.get_mask(conn, group_id, mask_id)
            if mask is None:
                raise NotFound("mask not found")
            call.audit.returned("mask", [mask_id])
        return mask
