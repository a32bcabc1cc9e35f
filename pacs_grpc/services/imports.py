"""ImportSegmentation: a DICOM Segmentation (SEG) becomes a COMPLETE mask group.

The SEG comes from the PACS (WADO-RS) or from an object uploaded with a
CreateSegmentationUpload ticket. It becomes one 8-bit label-map PNG per source image it
references (pixel value = segment number), its segments with their codes, and model and version
from its Algorithm Identification; each slice is bound to its source image.

Decisions:
* Upload tickets need no table of their own: a ticket's key is made by the server from the
  annotation and a fresh upload id (segmentation_upload_key), its POST policy pins that
  key, Content-Type application/dicom, the exact size and the upload id as object metadata.
  An object at that key carrying that id came through a ticket issued, after the access check,
  for this annotation. The ticket also schedules the object's deletion in the storage outbox
  for after its expiry, so a file uploaded and never imported does not stay; an import queues
  it at once.
* Slices are stored before any row is written, under keys named by the import
  (imported_key), then the group and its masks are recorded in one transaction: no
  database connection waits on storage, and a refusal or failure leaves no row. Every object
  written is deleted and queued for the sweeper on any failure, as PushMasks does.
* Slice order: along the slice normal of the PACS's own metadata for the source series when the
  server checks against a PACS (PACS_VALIDATE enforce or warn, the series found), which also
  checks that every source image is in that series and of the SEG's size; otherwise the order
  in which the SEG references its sources.
* Codes are validated with the domain's rules (pacs_grpc.domain.segments): a SEG coded with the
  retired SNOMED RT designator SRT is refused (INVALID_ARGUMENT naming the segment), not
  mapped. SNOMED RT codes (such as T-62000) are not SNOMED CT identifiers, and a mapping table
  would be a second, partial terminology service; the client can re-code and re-upload.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic

from pacs_grpc.domain import paging, validation
from pacs_grpc.domain.annotation import Annotation
from pacs_grpc.domain.annotation_rules import dicom_uid
from pacs_grpc.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from pacs_grpc.domain.masks import (
    GroupFields,
    MaskGroup,
    NewMask,
    PendingUpload,
    group_fields,
    imported_key,
    segmentation_upload_key,
)
from pacs_grpc.domain.pacs import PacsValidation, along_normal
from pacs_grpc.domain.segments import SegmentationRead
from pacs_grpc.domain.segments import segments as validated_segments
from pacs_grpc.services.context import AuditedTransactions, CallContext
from pacs_grpc.services.idempotency import create_once
from pacs_grpc.services.mask_access import authorized_annotation, discard_objects
from pacs_grpc.services.pacs_checks import PacsChecks, SliceFacts
from pacs_grpc.services.ports import (
    AnnotationAccessLookup,
    Clock,
    IdempotencyStore,
    MaskStore,
    ObjectStorage,
    Pacs,
    ScheduledDeletions,
    SegmentationReader,
    Transactions,
    TxT,
)

_log = logging.getLogger(__name__)
_OPERATION = "ImportSegmentation"
SEG_CONTENT_TYPE = "application/dicom"
_PNG = "image/png"
_DEFAULT_GROUP_NAME = "imported segmentation"


@dataclass(frozen=True)
class ImportLimits:
    """What an import may read and build, from Settings: SEG file bytes, decoded voxels, ticket
    lifetimes, and how much runs at once.
    """

    max_bytes: int
    max_voxels: int
    upload_ttl: timedelta
    max_ttl: timedelta
    # Imports decoding and encoding at once, each in a worker thread with its arrays in memory.
    max_concurrency: int = 2
    # Slices of one import being written to storage at once.
    parallel_writes: int = 8
    # How long after its ticket expires an uploaded SEG that was never imported is deleted.
    upload_retention: timedelta = timedelta(hours=1)


@dataclass(frozen=True)
class FromPacs:
    """A SEG to import from the PACS, by its study, series and SOP instance UIDs (validated)."""

    study_uid: str
    series_uid: str
    instance_uid: str


@dataclass(frozen=True)
class FromUpload:
    """A SEG to import from an object uploaded through a CreateSegmentationUpload ticket."""

    upload_id: uuid.UUID


Source = FromPacs | FromUpload


@dataclass(frozen=True)
class SegmentationTicket:
    """A signed POST for one SEG file; its `fields` pin the key, application/dicom, the exact size
    and the upload id. Import it by `upload_id`; the object is deleted when imported, and at
    the latest a grace period after `expires_at`.
    """

    upload_id: uuid.UUID
    url: str
    fields: dict[str, str]
    object_key: str
    expires_at: datetime


@dataclass(frozen=True)
class SourceRequest:
    """ImportSegmentation's `source` oneof as the client sent it: `kind` names the field set
    (None: neither)."""

    kind: str | None
    seg_study_uid: str = ""
    seg_series_uid: str = ""
    seg_instance_uid: str = ""
    upload_id: str = ""


def source_from_request(requested: SourceRequest) -> Source:
    """The request's oneof, validated; errors name its fields."""
    if requested.kind == "pacs":
        return FromPacs(
            dicom_uid("pacs.seg_study_uid", requested.seg_study_uid, required=True) or "",
            dicom_uid("pacs.seg_series_uid", requested.seg_series_uid, required=True) or "",
            dicom_uid("pacs.seg_instance_uid", requested.seg_instance_uid, required=True) or "",
        )
    if requested.kind == "upload_id":
        try:
            return FromUpload(uuid.UUID(requested.upload_id))
        except ValueError:
            raise InvalidArgument("upload_id", "is not an upload id") from None
    raise InvalidArgument("source", "name the SEG: pacs or upload_id")


class ImportUseCases(Generic[TxT]):
    """SEG files into mask groups: from the PACS or through an upload ticket of their own."""

    def __init__(
        self,
        transaction: AuditedTransactions[TxT],
        *,
        masks: MaskStore[TxT],
        annotations: AnnotationAccessLookup[TxT],
        idempotency: IdempotencyStore[TxT],
        storage: ObjectStorage,
        database: Transactions[TxT],
        deletions: ScheduledDeletions[TxT],
        segmentations: SegmentationReader,
        limits: ImportLimits,
        clock: Clock,
        pacs: Pacs | None = None,
        pacs_checks: PacsChecks | None = None,
    ) -> None:
        self._transaction = transaction
        self._masks = masks
        self._annotations = annotations
        self._idempotency = idempotency
        self._storage = storage
        self._database = database
        self._deletions = deletions
        self._segmentations = segmentations
        self._clock = clock
        self.limits = limits
        self._pacs = pacs
        self._pacs_checks = pacs_checks or PacsChecks(None, PacsValidation.OFF)
        self._building = asyncio.Semaphore(limits.max_concurrency)

    # -- upload tickets -----------------------------------------------------------------------

    async def create_upload(
        self, call: CallContext, annotation_id: int, size_bytes: int, ttl_seconds: int
    ) -> SegmentationTicket:
        validation.positive_id("annotation_id", annotation_id)
        if size_bytes <= 0:
            raise InvalidArgument("size_bytes", "must be positive")
        if size_bytes > self.limits.max_bytes:
            raise ResourceExhausted(
                f"size_bytes is above the import limit of {self.limits.max_bytes} bytes"
            )
        ttl = self._ttl(ttl_seconds)
        upload_id = uuid.uuid4()
        expires_at = self._clock.now() + ttl
        call.audit.touch(resource_ids=[annotation_id])
        async with self._transaction(call) as conn:
            annotation = await self._annotation(conn, call, annotation_id)
            key = segmentation_upload_key(annotation.project_id, annotation_id, upload_id)
            # Queued now, due after the ticket and a grace period: whatever the client does.
            await self._deletions.enqueue_at(conn, [key], expires_at + self.limits.upload_retention)
        post = self._storage.presign_post(
            key, content_type=SEG_CONTENT_TYPE, size=size_bytes, ttl=ttl,
            upload_id=str(upload_id),
        )  # fmt: skip
        return SegmentationTicket(upload_id, post.url, post.fields, key, post.expires_at)

    # -- import -------------------------------------------------------------------------------

    async def import_segmentation(
        self,
        call: CallContext,
        annotation_id: int,
        requested: SourceRequest,
        *,
        group_name: str,
        description: str,
        request_id: str,
    ) -> MaskGroup:
        source = source_from_request(requested)
        validation.positive_id("annotation_id", annotation_id)
        key, name, about = (
            validation.request_id("request_id", request_id),
            validation.text("group_name", group_name, max_length=200),
            validation.text("description", description, max_length=2000),
        )
        fingerprint = paging.filters_fingerprint(
            annotation_id, repr(source), name or "", about or ""
        )
        async with self._database.transaction() as conn:
            annotation = await self._annotation(conn, call, annotation_id)
            earlier = (
                await self._idempotency.lock_and_find(conn, call.caller.user_id, _OPERATION, key)
                if key is not None
                else None
            )
        if earlier is not None and key is not None:
            # A retry: answered from the first call, without reading the SEG again.
            return await self._earlier(call, annotation_id, key, fingerprint)

        field = "pacs" if isinstance(source, FromPacs) else "upload_id"
        async with self._building:
            # Read inside the bound: a SEG's bytes are as large as its decoded arrays.
            data = await self._read_source(annotation, source)
            seg = await asyncio.to_thread(
                self._segmentations.read, data, max_voxels=self.limits.max_voxels, field=field
            )
            del data
            if seg.study_instance_uid != annotation.study_uid:
                raise FailedPrecondition(
                    f"{field}: the segmentation belongs to another study than the annotation's"
                )
            if annotation.series_uid is not None and seg.source_series_uid != annotation.series_uid:
                raise FailedPrecondition(
                    f"{field}: the segmentation was drawn on another series than the annotation's"
                )
            segments = validated_segments(
                f"{field}.segments", seg.segments, has_model=seg.algorithm_name is not None
            )
            fields = group_fields(
                group_name=name or seg.content_label or _DEFAULT_GROUP_NAME,
                model_name=seg.algorithm_name or "",
                version=seg.algorithm_version or "",
                modality="",
                slice_count=len(seg.label_maps),
                mask_type="segmentation",
                description=about or "",
            )
            values = dataclasses.replace(fields, segments=segments)
            order, modality = await self._slice_order(annotation, seg)
            if modality:
                values = _with_modality(values, modality)
            pngs = await asyncio.to_thread(
                self._segmentations.encode_label_maps, [seg.label_maps[uid] for uid in order]
            )
        rows, columns = next(iter(seg.label_maps.values())).shape
        del seg

        import_id = uuid.uuid4()
        written: list[str] = []
        try:
            new = await self._store(
                annotation, import_id, order, pngs, written, width=columns, height=rows
            )
            del pngs

            async def create() -> MaskGroup:
                group = await self._masks.insert_group(
                    conn, annotation_id, values, call.caller.user_id
                )
                await self._masks.record_masks(
                    conn, group.id, new, from_tickets=False, recorded_by=call.caller.user_id
                )
                if isinstance(source, FromUpload):
                    await self._masks.enqueue_deletions(
                        conn,
                        [
                            segmentation_upload_key(
                                annotation.project_id, annotation_id, source.upload_id
                            )
                        ],
                    )
                found = await self._masks.get_group(conn, group.id)
                assert found is not None
                return found

            async with self._transaction(call) as conn:
                await self._annotation(conn, call, annotation_id)
                group, created = await create_once(
                    self._idempotency, conn, call, operation=_OPERATION, request_id=key,
                    fingerprint=fingerprint, create=create,
                    find=lambda group_id: self._masks.get_group(conn, group_id),
                    id_of=lambda g: g.id,
                )  # fmt: skip
                call.audit.touch(resource_ids=[group.id])
            if not created:
                # A concurrent retry recorded its own copy first: ours is not needed.
                await asyncio.shield(self._discard(written))
        except BaseException:
            if written:
                await asyncio.shield(self._discard(written))
            raise
        return group

    async def _earlier(
        self, call: CallContext, annotation_id: int, key: str, fingerprint: str
    ) -> MaskGroup:
        async with self._transaction(call) as conn:
            await self._annotation(conn, call, annotation_id)
            group, _ = await create_once(
                self._idempotency, conn, call, operation=_OPERATION, request_id=key,
                fingerprint=fingerprint, create=_refuse_create,
                find=lambda group_id: self._masks.get_group(conn, group_id),
                id_of=lambda g: g.id,
            )  # fmt: skip
            call.audit.touch(resource_ids=[group.id])
        return group

    async def _read_source(self, annotation: Annotation, source: Source) -> bytes:
        limit = self.limits.max_bytes
        if isinstance(source, FromPacs):
            if source.study_uid != annotation.study_uid:
                # Refused before anything is fetched; the file's own study is checked too.
                raise FailedPrecondition(
                    "pacs.seg_study_uid: is not the annotation's study; a segmentation is "
                    "imported into an annotation of the study it segments"
                )
            if self._pacs is None:
                raise FailedPrecondition("pacs: this server has no PACS link (PACS_DICOMWEB_URL)")
            data = await self._pacs.retrieve_instance(
                source.study_uid, source.series_uid, source.instance_uid, max_bytes=limit
            )
            if data is None:
                raise FailedPrecondition("pacs.seg_instance_uid: not found in the PACS")
            return data
        key = segmentation_upload_key(annotation.project_id, annotation.id, source.upload_id)
        info = await self._storage.stat(key)
        if info is None or info.upload_id != str(source.upload_id):
            # Either no ticket of this annotation has that id, or nothing came through it.
            raise FailedPrecondition(
                "upload_id: no file was uploaded with a segmentation ticket of this annotation"
            )
        if info.size > limit:
            raise ResourceExhausted(f"the uploaded file is larger than {limit} bytes")
        try:
            return await self._storage.read(key, version_id=info.version_id, max_bytes=limit)
        except NotFound:
            raise FailedPrecondition(
                "upload_id: the uploaded file is gone; upload it again"
            ) from None

    async def _slice_order(
        self, annotation: Annotation, seg: SegmentationRead
    ) -> tuple[list[str], str | None]:
        """The SEG's source images in slice order, checked against the PACS when it is asked,
        and the source series' modality when known."""
        in_seg = list(seg.label_maps)
        if not self._pacs_checks.active:
            return in_seg, None
        source = await self._pacs_checks.slice_source(annotation.study_uid, seg.source_series_uid)
        if source.series is None:
            return in_seg, None
        rows, columns = next(iter(seg.label_maps.values())).shape
        bound = await self._pacs_checks.bind(
            source,
            [SliceFacts(i, uid, int(columns), int(rows)) for i, uid in enumerate(in_seg)],
        )
        # Warn mode records refused slices anyway; they keep the SEG's order at the end.
        ordered = along_normal(source.series.instances) or source.series.instances
        wanted = {uid for uid in bound.values() if uid is not None}
        order = [i.sop_instance_uid for i in ordered if i.sop_instance_uid in wanted]
        placed = set(order)
        order += [uid for uid in in_seg if uid not in placed]
        return order, source.series.modality

    async def _store(
        self,
        annotation: Annotation,
        import_id: uuid.UUID,
        order: list[str],
        pngs: list[bytes],
        written: list[str],
        *,
        width: int,
        height: int,
    ) -> list[NewMask]:
        gate = asyncio.Semaphore(self.limits.parallel_writes)
        now = self._clock.now()

        async def one(slice_index: int, sop_uid: str, png: bytes) -> NewMask:
            upload_id = uuid.uuid4()
            key = imported_key(annotation.project_id, annotation.id, import_id, upload_id)
            md5 = hashlib.md5(png, usedforsecurity=False).hexdigest()
            async with gate:
                written.append(key)
                info = await self._storage.put_stream(
                    key, _once(png), size=len(png), content_type=_PNG, upload_id=str(upload_id)
                )
            # put_stream's etag is the MD5 of the bytes it read from `png`: equal to `md5`.
            return NewMask(
                upload=PendingUpload(
                    upload_id, 0, slice_index, sop_uid, None, _PNG, len(png), md5, "IMPORT",
                    key, now, now,
                ),
                file_path=key, file_size=info.size, checksum=info.etag, width=width,
                height=height, object_version=info.version_id,
            )  # fmt: skip

        tasks = [
            asyncio.create_task(one(i, uid, png))
            for i, (uid, png) in enumerate(zip(order, pngs, strict=True))
        ]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            # Let every write end, so that the objects exist when the caller deletes them.
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))
            raise

    async def _discard(self, keys: list[str]) -> None:
        await discard_objects(
            self._storage, self._database, self._masks, keys, what="a failed import"
        )

    async def _annotation(self, conn: TxT, call: CallContext, annotation_id: int) -> Annotation:
        return await authorized_annotation(self._annotations, conn, call, annotation_id)

    def _ttl(self, seconds: int) -> timedelta:
        return validation.url_ttl(
            "ttl_seconds", seconds, default=self.limits.upload_ttl, longest=self.limits.max_ttl
        )


async def _refuse_create() -> MaskGroup:
    raise FailedPrecondition("what this request_id created no longer exists")


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _with_modality(values: GroupFields, modality: str) -> GroupFields:
    return dataclasses.replace(values, modality=modality[:16])
