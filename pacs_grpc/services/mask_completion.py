"""CompleteUpload: the slices uploaded through tickets, checked in storage and recorded as
masks, all or nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Generic

from pacs_grpc.domain.errors import FailedPrecondition, NotFound, Unavailable
from pacs_grpc.domain.masks import (
    PNG_SIGNATURE,
    CompletedSlice,
    Mask,
    MaskGroup,
    MaskLimits,
    NewMask,
    PendingUpload,
    UploadMethod,
    completions,
    listing_prefix,
    slice_list,
    uploads_prefix,
)
from pacs_grpc.domain.objects import ObjectInfo
from pacs_grpc.services.context import AuditedTransactions, CallContext
from pacs_grpc.services.mask_access import authorized_group
from pacs_grpc.services.pacs_checks import PacsChecks, bind_masks
from pacs_grpc.services.ports import Clock, MaskStore, ObjectStorage, Transactions, TxT

_log = logging.getLogger(__name__)

# CompleteUpload's uploads as the client reported them: (upload_id, width, height, md5).
ReportedUpload = tuple[str, int, int, str]


class UploadCompletion(Generic[TxT]):
    """Checks each ticket's object against what the ticket declared, then records them all."""

    def __init__(
        self,
        transaction: AuditedTransactions[TxT],
        *,
        masks: MaskStore[TxT],
        storage: ObjectStorage,
        database: Transactions[TxT],
        limits: MaskLimits,
        pacs_checks: PacsChecks,
        clock: Clock,
    ) -> None:
        self._transaction = transaction
        self._masks = masks
        self._storage = storage
        # Unaudited: the read before storage is asked, outside the one audited transaction.
        self._database = database
        self._limits = limits
        self._pacs_checks = pacs_checks
        self._clock = clock

    async def complete_upload(
        self,
        call: CallContext,
        annotation_id: int,
        group_id: int,
        reported: list[ReportedUpload],
    ) -> tuple[MaskGroup, list[Mask]]:
        """Verify the uploaded objects and record them as masks, all or nothing."""
        completed = completions(reported, self._limits.max_slices_per_call)
        wanted = {c.upload_id: c for c in completed}
        async with self._database.transaction() as conn:
            access = await authorized_group(self._masks, conn, call, annotation_id, group_id)
            uploads = await self._masks.uploads(conn, group_id, list(wanted))
        unknown = len(wanted) - len(uploads)
        if unknown:
            raise FailedPrecondition(f"{unknown} upload id(s) are not tickets of this group")
        pending = [u for u in uploads if u.completed_at is None]
        now = self._clock.now()
        expired = [u.slice_index for u in pending if u.expires_at <= now]
        if expired:
            raise FailedPrecondition(
                f"tickets expired for slices {slice_list(expired)}; ask for new ones"
            )
        listed: dict[str, ObjectInfo] = {}
        posted = [u.object_key for u in pending if u.method == UploadMethod.POST.value]
        if posted:
            listed = await self._storage.latest_versions(
                listing_prefix(
                    posted, within=uploads_prefix(access.project_id, annotation_id, group_id)
                )
            )
        checked = await asyncio.gather(
            *(self._check(u, wanted[u.upload_id], listed) for u in pending)
        )
        problems = [
            f"slice {u.slice_index}: {problem}"
            for u, (_, problem) in sorted(
                zip(pending, checked, strict=True), key=lambda pair: pair[0].slice_index
            )
            if problem
        ]
        if problems:
            raise FailedPrecondition("uploads not accepted: " + "; ".join(problems))
        new = [m for m, _ in checked if m is not None]
        if self._pacs_checks.active and new:
            source = await self._pacs_checks.slice_source(access.study_uid, access.series_uid)
            new = await bind_masks(self._pacs_checks, source, new)
        async with self._transaction(call) as conn:
            await authorized_group(self._masks, conn, call, annotation_id, group_id)
            # Uploads a concurrent completion recorded meanwhile keep the masks it recorded.
            masks = (
                await self._masks.record_masks(conn, group_id, new, recorded_by=call.caller.user_id)
                if new
                else []
            )
            if len(masks) < len(wanted):
                masks = await self._masks.masks_by_upload(conn, list(wanted))
            group = await self._masks.get_group(conn, group_id)
            call.audit.returned("mask", [m.id for m in masks])
        if group is None:
            raise NotFound("mask group not found")
        return group, masks

    async def _check(
        self, upload: PendingUpload, reported: CompletedSlice, listed: dict[str, ObjectInfo]
    ) -> tuple[NewMask | None, str | None]:
        """The upload as a mask of exactly the version checked, or why it is refused.

        The bucket is versioned, so recording the version checked is what makes a later
        overwrite through a still-valid ticket change nothing recorded: it only adds a version,
        and downloads are signed for the recorded one. A POST ticket's policy made storage
        enforce key, content type and exact size, so the group's listing (size, ETag, version
        of every upload at once) is all it needs; a PUT upload is examined on its own.
        """
        if upload.method == UploadMethod.POST.value:
            info = listed.get(upload.object_key)
            if info is not None:
                info = dataclasses.replace(info, content_type=upload.content_type)
        else:
            info = await self._storage.stat(upload.object_key)
            if info is not None and info.upload_id not in (None, str(upload.upload_id)):
                # Stored with another ticket's id: a server-side copy of someone else's
                # object (x-amz-copy-source keeps the source's metadata), never this upload.
                return None, "the object was not uploaded through this ticket"
        problem = _mismatch(info, upload, reported)
        if problem is None and info is not None and info.version_id is None:
            _log.error("object storage bucket is not versioned; completions are refused")
            raise Unavailable("object storage is misconfigured; retry later")
        if (
            problem is None
            and info is not None
            and self._limits.check_png_signature
            and upload.content_type == "image/png"
        ):
            try:
                # The version checked above, which is the one recorded: the latest may already
                # be another upload through the same still-valid ticket.
                head = await self._storage.read_head(
                    upload.object_key, len(PNG_SIGNATURE), version_id=info.version_id
                )
            except NotFound:
                head = b""
            if head != PNG_SIGNATURE:
                problem = "content is not a PNG image"
        if problem is not None or info is None:
            return None, problem
        return NewMask(
            upload=upload, file_path=upload.object_key, file_size=info.size, checksum=info.etag,
            width=reported.width, height=reported.height, object_version=info.version_id,
        ), None  # fmt: skip


def _mismatch(
    info: ObjectInfo | None, upload: PendingUpload, reported: CompletedSlice
) -> str | None:
    """How the stored object differs from what the ticket declared, if it does."""
    if info is None:
        return "no object was uploaded"
    if info.size != upload.size_bytes:
        return f"size is {info.size} bytes, {upload.size_bytes} were declared"
    if (info.content_type or "") != upload.content_type:
        return "content type differs from the declared one"
    expected_md5 = upload.md5 or reported.md5
    if expected_md5 is not None and info.etag != expected_md5:
        return "checksum differs from the declared MD5"
    return None
