"""Use cases of ExportMaskGroup and ListMaskGroupExports: a mask group as a DICOM SEG.

An export reads the group's slices from storage, the source series' metadata from the PACS,
builds one BINARY Segmentation off the event loop (bounded: EXPORT_MAX_CONCURRENCY builds at
once, EXPORT_MAX_VOXELS each), stores the .dcm under a server-made key and, when asked, sends
it to the PACS with STOW-RS. Only then is the export recorded, with the PACS's answer, in the
one audited transaction; so a failure on the way (PACS down while reading the series, storage
down, a refusal) records nothing, and the RPC answers with that failure.

The PACS's answer to the STOW-RS is part of the record, not of the RPC's status: once the SEG
is built and stored it is worth keeping and downloading, so a PACS that refuses it, or that
stops answering between the metadata read and the STOW-RS, yields an export whose status is
FAILED with a reason (a new export retries). A retry with the same request_id returns the
recorded export; concurrent retries may each build and send a SEG, and only the first is
recorded (the others' objects are queued for deletion; a PACS keeps what it was sent).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from pacs_grpc.domain import paging, review, validation
from pacs_grpc.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from pacs_grpc.domain.exports import (
    MAX_REASON_LENGTH,
    SERIES_NUMBER_BASE,
    MaskGroupExport,
    NewExport,
    PacsStatus,
    SegmentationBuild,
    SliceImage,
    export_key,
)
from pacs_grpc.domain.masks import MAX_SLICE_COUNT, GroupAccess, Mask, slice_list
from pacs_grpc.domain.paging import Page
from pacs_grpc.domain.segments import TISSUE, AlgorithmType, Segment, new_uid
from pacs_grpc.services.context import AuditedTransactions, CallContext
from pacs_grpc.services.idempotency import create_once
from pacs_grpc.services.mask_access import authorized_group
from pacs_grpc.services.ports import (
    ExportStore,
    IdempotencyStore,
    MaskStore,
    ObjectStorage,
    Pacs,
    SegmentationWriter,
    Transactions,
    TxT,
)

_log = logging.getLogger(__name__)
_In = TypeVar("_In")
_Out = TypeVar("_Out")
_OPERATION = "ExportMaskGroup"
RESOURCE_TYPE = "mask_group_export"
DICOM_CONTENT_TYPE = "application/dicom"
# Slices read from storage at once by one export.
_PARALLEL_READS = 16
_UPLOAD_CHUNK = 1024 * 1024
# ContentCreatorName (PN): the exporting user's username, reduced to characters a PN holds.
_PN_UNSAFE = re.compile(r"[^A-Za-z0-9 ._@-]")
_REFUSED = "the PACS refused the SEG (STOW-RS FailedSOPSequence)"
_UNREACHABLE = "the PACS could not be reached for STOW-RS; export again to retry"
_UNEXPECTED = "the PACS's STOW-RS reply could not be understood; export again to retry"


@dataclass(frozen=True)
class ExportLimits:
    """What an export may build and sign, from Settings: voxels per SEG, builds at once, the largest
    slice read back, URL lifetimes, page size, and the root of the SEG's new UIDs.
    """

    max_voxels: int
    max_concurrency: int
    # The largest stored slice read back (MAX_MASK_BYTES).
    max_slice_bytes: int
    download_ttl: timedelta
    max_ttl: timedelta
    max_page_size: int
    # DICOM_UID_ROOT; empty: 2.25.<UUID>.
    uid_root: str = ""


@dataclass(frozen=True)
class ExportLink:
    """An export with a download URL signed for its recorded version, valid until `expires_at`."""

    export: MaskGroupExport
    url: str
    expires_at: datetime


@dataclass(frozen=True)
class _Plan:
    """What the unaudited read found: the group, its slices, and an earlier result."""

    access: GroupAccess
    masks: list[Mask]
    export_count: int
    earlier: MaskGroupExport | None


class ExportUseCases(Generic[TxT]):
    """ExportMaskGroup and ListMaskGroupExports; the module docstring gives the export's steps.

    `export` checks ids, access and an earlier result for the request_id first, then the PACS link,
    completeness and the voxel limit, all before any build. The record and its audit row commit in
    one transaction once the SEG is stored; any failure before that records nothing and queues
    what was stored for deletion. A retry with the same request_id returns the recorded export.
    """

    def __init__(
        self,
        transaction: AuditedTransactions[TxT],
        *,
        masks: MaskStore[TxT],
        exports: ExportStore[TxT],
        idempotency: IdempotencyStore[TxT],
        storage: ObjectStorage,
        database: Transactions[TxT],
        pacs: Pacs | None,
        write: SegmentationWriter,
        limits: ExportLimits,
    ) -> None:
        self._transaction = transaction
        self._masks = masks
        self._exports = exports
        self._idempotency = idempotency
        self._storage = storage
        # Unaudited: the reads before the audited transaction, and cleanup after a failure.
        self._database = database
        self._pacs = pacs
        self._write = write
        self.limits = limits
        self._builds = asyncio.Semaphore(limits.max_concurrency)

    async def export(
        self,
        call: CallContext,
        annotation_id: int,
        group_id: int,
        *,
        store_in_pacs: bool,
        request_id: str,
        ttl_seconds: int = 0,
    ) -> ExportLink:
        validation.positive_id("annotation_id", annotation_id)
        validation.positive_id("group_id", group_id)
        key = validation.request_id("request_id", request_id)
        ttl = self._ttl(ttl_seconds)
        fingerprint = paging.filters_fingerprint(_OPERATION, annotation_id, group_id, store_in_pacs)
        plan = await self._plan(call, annotation_id, group_id, key, fingerprint)
        if plan.earlier is not None:
            return await self._answer(call, annotation_id, group_id, plan.earlier, ttl)
        pacs = self._pacs
        if pacs is None:
            raise FailedPrecondition(
                "exporting a DICOM Segmentation needs the PACS link, for the source images' "
                "metadata; this server has no PACS_DICOMWEB_URL"
            )
        access = plan.access
        group = access.group
        if not group.complete:
            raise FailedPrecondition(
                f"the mask group is not COMPLETE ({group.completed_slices} of "
                f"{group.slice_count} slices recorded)"
            )
        review.exportable(group.review.state, drafts_allowed=access.export_unapproved)
        if access.series_uid is None:
            raise FailedPrecondition("the group's annotation names no series to export against")
        unbound = [m.slice_index for m in plan.masks if not m.sop_instance_uid]
        if unbound:
            raise FailedPrecondition(
                f"slices {slice_list(unbound)} are not bound to source images; groups completed "
                "with a PACS link are bound at completion"
            )
        segments, label_of = _segments(group.segments, plan.masks, model=group.model_name)
        voxels = len(segments) * sum((m.width or 0) * (m.height or 0) for m in plan.masks)
        if voxels > self.limits.max_voxels:
            raise ResourceExhausted(
                f"the segmentation would hold {voxels} voxels (slices x rows x columns x "
                f"segments); the limit is {self.limits.max_voxels}"
            )
        series_uid, sop_uid = new_uid(self.limits.uid_root), new_uid(self.limits.uid_root)
        series_number = SERIES_NUMBER_BASE + plan.export_count + 1
        source_series = access.series_uid

        async def prepare() -> SegmentationBuild:
            metadata = await pacs.series_metadata(access.study_uid, source_series)
            if not metadata:
                raise FailedPrecondition("the annotation's series is not in the PACS")
            stored = await self._read_slices(plan.masks)
            return SegmentationBuild(
                source_metadata=metadata,
                slices=[
                    SliceImage(
                        m.slice_index,
                        m.sop_instance_uid or "",
                        png,
                        label_of[m.label_name or ""] if label_of else None,
                    )
                    for m, png in zip(plan.masks, stored, strict=True)
                ],
                segments=tuple(segments),
                series_uid=series_uid,
                sop_uid=sop_uid,
                series_number=series_number,
                content_creator=_person_name(call.caller.principal.username),
                model_name=group.model_name,
                model_version=group.version,
                max_voxels=self.limits.max_voxels,
                review_state=group.review.state.value,
                group_name=group.group_name,
                inference_parameters=group.inference_parameters,
            )

        data = await build_holding(self._builds, prepare, self._write)
        object_key = export_key(access.project_id, annotation_id, group_id, uuid.uuid4())

        async def record(
            version: str | None, status: PacsStatus, reason: str | None
        ) -> MaskGroupExport:
            new = NewExport(
                object_key=object_key,
                object_version=version,
                size_bytes=len(data),
                seg_series_uid=series_uid,
                seg_sop_instance_uid=sop_uid,
                series_number=series_number,
                segment_count=len(segments),
                pacs_status=status,
                pacs_failure_reason=reason,
            )
            return await self._record(
                call, annotation_id, group_id, new, key=key, fingerprint=fingerprint
            )

        export = await self._keep(object_key, data, pacs if store_in_pacs else None, record)
        return self._link(export, ttl)

    async def list_exports(
        self, call: CallContext, annotation_id: int, group_id: int, page_size: int, page_token: str
    ) -> tuple[Page[MaskGroupExport], list[ExportLink]]:
        """A page of the group's exports, newest first, each with a signed download."""
        limit = validation.page_size("page_size", page_size, self.limits.max_page_size)
        fingerprint = paging.filters_fingerprint("exports", group_id)
        position = paging.decode(page_token, fingerprint, arity=1)
        async with self._transaction.read(call) as conn:
            await self._group(conn, call, annotation_id, group_id)
            rows = await self._exports.list_exports(
                conn, group_id, before_id=int(position[0]) if position else 2**63 - 1,
                limit=limit + 1,
            )  # fmt: skip
            page = Page.of(rows, limit, fingerprint, lambda e: [e.id])
            call.audit.returned(RESOURCE_TYPE, [e.id for e in page.items])
        return page, [self._link(e, self.limits.download_ttl) for e in page.items]

    # -- steps ------------------------------------------------------------------------------

    async def _plan(
        self, call: CallContext, annotation_id: int, group_id: int, key: str | None,
        fingerprint: str,
    ) -> _Plan:  # fmt: skip
        async with self._database.transaction() as conn:
            access = await self._group(conn, call, annotation_id, group_id)
            if key is not None:
                found = await self._idempotency.lock_and_find(
                    conn, call.caller.user_id, _OPERATION, key
                )
                if found is not None:
                    export_id, earlier_fingerprint = found
                    if earlier_fingerprint != fingerprint:
                        raise InvalidArgument(
                            "request_id", "was already used for a different request"
                        )
                    earlier = await self._exports.get(conn, group_id, export_id)
                    if earlier is None:
                        raise FailedPrecondition("what this request_id created no longer exists")
                    return _Plan(access, [], 0, earlier)
            masks = await self._masks.masks_of_group(conn, group_id, None, limit=MAX_SLICE_COUNT)
            count = await self._exports.count(conn, group_id)
        return _Plan(access, masks, count, None)

    async def _read_slices(self, masks: list[Mask]) -> list[bytes]:
        gate = asyncio.Semaphore(_PARALLEL_READS)

        async def read(mask: Mask) -> bytes:
            async with gate:
                try:
                    return await self._storage.read(
                        mask.file_path,
                        version_id=mask.object_version,
                        max_bytes=self.limits.max_slice_bytes,
                    )
                except NotFound:
                    raise FailedPrecondition(
                        f"slice {mask.slice_index}'s stored image is missing"
                    ) from None

        return list(await asyncio.gather(*(read(m) for m in masks)))

    async def _record(
        self, call: CallContext, annotation_id: int, group_id: int, new: NewExport, *,
        key: str | None, fingerprint: str,
    ) -> MaskGroupExport:  # fmt: skip
        async with self._transaction(call) as conn:
            await self._group(conn, call, annotation_id, group_id)
            export, created = await create_once(
                self._idempotency,
                conn,
                call,
                operation=_OPERATION,
                request_id=key,
                fingerprint=fingerprint,
                create=lambda: self._exports.insert(conn, group_id, new, call.caller.user_id),
                find=lambda export_id: self._exports.get(conn, group_id, export_id),
                id_of=lambda e: e.id,
            )
            if not created:
                # A concurrent retry recorded its export first: this one's object goes.
                await self._masks.enqueue_deletions(conn, [new.object_key])
            # The export; its row names the group. (One resource type per audit row, and ids
            # are kept once: a group and an export of the same id would collapse into one.)
            call.audit.returned(RESOURCE_TYPE, [export.id])
        return export

    async def _keep(
        self,
        object_key: str,
        data: bytes,
        pacs: Pacs | None,
        record: Callable[[str | None, PacsStatus, str | None], Awaitable[MaskGroupExport]],
    ) -> MaskGroupExport:
        """Store the SEG, send it to ``pacs`` (None: not asked to) and record it. Whatever ends
        the call from the first byte stored to the record (cancellation, storage or database
        failure) queues the object, else it would be stored with no row that names it."""
        try:
            info = await self._storage.put_stream(
                object_key, _chunks(data), size=len(data), content_type=DICOM_CONTENT_TYPE
            )
            status, reason = PacsStatus.NOT_REQUESTED, None
            if pacs is not None:
                status, reason = await _stow(pacs, data)
            return await record(info.version_id, status, reason)
        except BaseException:
            # Shielded: a second cancellation must not stop the queueing half-way.
            await asyncio.shield(self._forget(object_key))
            raise

    async def _answer(
        self, call: CallContext, annotation_id: int, group_id: int, export: MaskGroupExport,
        ttl: timedelta,
    ) -> ExportLink:  # fmt: skip
        async with self._transaction(call) as conn:
            await self._group(conn, call, annotation_id, group_id)
            call.audit.returned(RESOURCE_TYPE, [export.id])
        return self._link(export, ttl)

    async def _forget(self, object_key: str) -> None:
        """Queue a stored SEG that was not recorded for deletion; the sweeper removes it."""
        try:
            async with self._database.transaction() as conn:
                await self._masks.enqueue_deletions(conn, [object_key])
        except Exception:  # noqa: BLE001 - the caller's error is the one to report
            _log.warning("could not queue an unrecorded export object for deletion")

    def _link(self, export: MaskGroupExport, ttl: timedelta) -> ExportLink:
        url, expires_at = self._storage.presign_get(
            export.object_key,
            content_type=DICOM_CONTENT_TYPE,
            ttl=ttl,
            version_id=export.object_version,
        )
        return ExportLink(export, url, expires_at)

    async def _group(
        self, conn: TxT, call: CallContext, annotation_id: int, group_id: int
    ) -> GroupAccess:
        return await authorized_group(self._masks, conn, call, annotation_id, group_id)

    def _ttl(self, seconds: int) -> timedelta:
        return validation.url_ttl(
            "ttl_seconds", seconds, default=self.limits.download_ttl, longest=self.limits.max_ttl
        )


# -- helpers ----------------------------------------------------------------------------------


def _segments(
    declared: Sequence[Segment], masks: Sequence[Mask], *, model: str | None
) -> tuple[list[Segment], dict[str, int]]:
    """The SEG's segments, and for a group without declared segments the pixel value each
    slice's label_name gets (its nonzero pixels become that segment)."""
    if declared:
        return list(declared), {}
    labels = sorted({m.label_name or "" for m in masks})
    if len(labels) > 255:
        raise FailedPrecondition("the group's slices name more than 255 labels")
    algorithm = AlgorithmType.AUTOMATIC if model else AlgorithmType.MANUAL
    segments = [
        Segment(
            pixel_value=value,
            label=(label or "Segment")[:64],
            segmented_property_category=TISSUE,
            segmented_property_type=TISSUE,
            algorithm_type=algorithm,
        )
        for value, label in enumerate(labels, start=1)
    ]
    return segments, {label: value for value, label in enumerate(labels, start=1)}


async def _stow(pacs: Pacs, data: bytes) -> tuple[PacsStatus, str | None]:
    try:
        refused = await pacs.store([data])
    except Unavailable as error:
        # The adapter's texts carry no UIDs; a 4xx says the PACS refused, not that it was away.
        if error.message.startswith("refused by the PACS"):
            return PacsStatus.FAILED, f"{error.message}; export again to retry"
        return PacsStatus.FAILED, _UNREACHABLE
    except Exception as error:  # noqa: BLE001 - the SEG is stored: record the PACS's failure
        # A reply we cannot read (or any other PACS-side surprise) is the PACS's answer, not
        # a fault of this server; its text may quote UIDs, so only its type is logged.
        _log.warning("STOW-RS failed unexpectedly: %s", type(error).__name__)
        return PacsStatus.FAILED, _UNEXPECTED
    if refused:
        return PacsStatus.FAILED, _REFUSED[:MAX_REASON_LENGTH]
    return PacsStatus.STORED, None


async def build_holding(
    permits: asyncio.Semaphore,
    prepare: Callable[[], Awaitable[_In]],
    work: Callable[[_In], _Out],
) -> _Out:
    """``work(await prepare())`` in a worker thread, holding one of ``permits`` until the thread
    is done. A thread cannot be stopped: were the permit released when the caller is cancelled,
    cancelled calls would start builds beyond the bound while earlier ones still run."""
    await permits.acquire()
    try:
        argument = await prepare()
        running = asyncio.ensure_future(asyncio.to_thread(work, argument))
    except BaseException:
        permits.release()
        raise

    def done(future: asyncio.Future[_Out]) -> None:
        permits.release()
        if not future.cancelled():
            # Retrieved, so a build nobody awaits any more is not logged as "never retrieved".
            future.exception()

    running.add_done_callback(done)
    return await asyncio.shield(running)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), _UPLOAD_CHUNK):
        yield data[start : start + _UPLOAD_CHUNK]


def _person_name(username: str) -> str:
    # A PN with no component separator is the retired single-name form (dciodvfy warns):
    # the user name becomes the family name.
    return (_PN_UNSAFE.sub("_", username)[:63] or "pacs-grpc") + "^"
