"""Use cases of MaskService that sign URLs: upload tickets for slices, and download links."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic

from pacs_grpc.domain import paging, validation
from pacs_grpc.domain.errors import InvalidArgument, NotFound
from pacs_grpc.domain.masks import (
    MAX_SLICE_COUNT,
    Mask,
    MaskLimits,
    SliceDeclaration,
    UploadMethod,
    slices,
    upload_key,
)
from pacs_grpc.domain.paging import Page
from pacs_grpc.services.context import AuditedTransactions, CallContext
from pacs_grpc.services.mask_access import authorized_group
from pacs_grpc.services.ports import Clock, MaskStore, ObjectStorage, TxT

# Download URLs signed on the event loop; a larger page is signed in a worker thread, so a
# thousand signatures (tens of milliseconds of CPU) never hold up other calls.
_SIGN_ON_LOOP_MAX = 50


@dataclass(frozen=True)
class Ticket:
    """One slice's signed upload: a POST policy's fields, or a PUT URL's signed headers."""

    upload_id: uuid.UUID
    slice_index: int
    method: UploadMethod
    url: str
    fields: dict[str, str]
    headers: dict[str, str]
    object_key: str
    expires_at: datetime


@dataclass(frozen=True)
class DownloadLink:
    """A mask with a GET URL signed for its recorded object version, valid until `expires_at`."""

    mask: Mask
    url: str
    expires_at: datetime


class MaskUrlUseCases(Generic[TxT]):
    """Upload tickets (recorded, so that completion can check what arrives against what was
    declared) and download links signed for the exact version recorded."""

    def __init__(
        self,
        transaction: AuditedTransactions[TxT],
        *,
        masks: MaskStore[TxT],
        storage: ObjectStorage,
        limits: MaskLimits,
        clock: Clock,
    ) -> None:
        self._transaction = transaction
        self._masks = masks
        self._storage = storage
        self._limits = limits
        self._clock = clock

    async def create_upload_urls(
        self,
        call: CallContext,
        annotation_id: int,
        group_id: int,
        declared: list[SliceDeclaration],
        *,
        ttl_seconds: int,
        method: UploadMethod,
    ) -> list[Ticket]:
        ttl = self._ttl(ttl_seconds, self._limits.upload_ttl)
        if method is UploadMethod.PUT and not self._limits.allow_put_uploads:
            raise InvalidArgument(
                "method", "PUT tickets are not enabled on this server; use UPLOAD_METHOD_POST"
            )
        async with self._transaction(call) as conn:
            access = await authorized_group(self._masks, conn, call, annotation_id, group_id)
            checked = slices(
                declared,
                slice_count=access.group.slice_count,
                max_slices=self._limits.max_slices_per_call,
                max_bytes=self._limits.max_mask_bytes,
                allowed_types=self._limits.allowed_content_types,
            )
            if method is UploadMethod.PUT:
                _require_md5(checked)
            expires_at = self._clock.now() + ttl
            planned = []
            batch_id = uuid.uuid4()
            for item in checked:
                upload_id = uuid.uuid4()
                key = upload_key(access.project_id, annotation_id, group_id, batch_id, upload_id)
                planned.append((upload_id, key, item))
            await self._masks.insert_uploads(
                conn,
                group_id,
                planned,
                method=method.value,
                created_by=call.caller.user_id,
                expires_at=expires_at,
            )
        # Signing is local computation; it runs after the commit so the transaction stays short.
        return [
            self._ticket(upload_id, key, item, method=method, ttl=ttl)
            for upload_id, key, item in planned
        ]

    def _ticket(
        self,
        upload_id: uuid.UUID,
        key: str,
        item: SliceDeclaration,
        *,
        method: UploadMethod,
        ttl: timedelta,
    ) -> Ticket:
        if method is UploadMethod.POST:
            post = self._storage.presign_post(
                key, content_type=item.content_type, size=item.size_bytes, ttl=ttl,
                upload_id=str(upload_id),
            )  # fmt: skip
            return Ticket(upload_id, item.slice_index, method, post.url, post.fields, {}, key,
                          post.expires_at)  # fmt: skip
        put = self._storage.presign_put(key, content_type=item.content_type, ttl=ttl)
        return Ticket(upload_id, item.slice_index, method, put.url, {}, put.headers, key,
                      put.expires_at)  # fmt: skip

    async def download_urls(
        self,
        call: CallContext,
        annotation_id: int,
        group_id: int,
        mask_ids: list[int],
        ttl_seconds: int,
        *,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[DownloadLink]:
        """URLs for the listed masks, or for one page of the whole group (by slice_index)."""
        ttl = self._ttl(ttl_seconds, self._limits.download_ttl)
        most = self._limits.max_slices_per_call
        if len(mask_ids) > most:
            raise InvalidArgument("mask_ids", f"must list at most {most} masks")
        for position, mask_id in enumerate(mask_ids):
            validation.positive_id(f"mask_ids[{position}]", mask_id)
        limit = validation.page_size("page_size", page_size or most, most)
        fingerprint = paging.filters_fingerprint("download-urls", group_id)
        if mask_ids and page_token:
            raise InvalidArgument("page_token", "continues a whole group; not with mask_ids")
        after = _slice_position(paging.decode(page_token, fingerprint, arity=1))
        next_page_token = ""
        async with self._transaction.read(call) as conn:
            await authorized_group(self._masks, conn, call, annotation_id, group_id)
            if mask_ids:
                masks = await self._masks.masks_of_group(
                    conn, group_id, mask_ids, limit=MAX_SLICE_COUNT
                )
            else:
                rows = await self._masks.list_masks(
                    conn, group_id, after_slice=after, limit=limit + 1
                )
                page = Page.of(rows, limit, fingerprint, lambda m: [m.slice_index])
                masks, next_page_token = page.items, page.next_page_token
            if mask_ids and len(masks) != len(set(mask_ids)):
                raise NotFound("mask not found")
            call.audit.returned("mask", [m.id for m in masks])
        if len(masks) > _SIGN_ON_LOOP_MAX:
            links = await asyncio.to_thread(self._sign_downloads, masks, ttl)
        else:
            links = self._sign_downloads(masks, ttl)
        return Page(links, next_page_token)

    def _sign_downloads(self, masks: list[Mask], ttl: timedelta) -> list[DownloadLink]:
        links = []
        for mask in masks:
            url, expires_at = self._storage.presign_get(
                mask.file_path, content_type=mask.mime_type, ttl=ttl, version_id=mask.object_version
            )
            links.append(DownloadLink(mask, url, expires_at))
        return links

    def _ttl(self, seconds: int, default: timedelta) -> timedelta:
        return validation.url_ttl(
            "ttl_seconds", seconds, default=default, longest=self._limits.max_ttl
        )


def _require_md5(checked: list[SliceDeclaration]) -> None:
    """A PUT ticket's object is accepted only with the MD5 declared before the upload.

    If storage ever let such a URL copy another object (x-amz-copy-source), the copy would
    carry the source's checksum, which a caller who could not read the source cannot have
    declared in advance; a checksum reported at completion could be read off the copy.
    """
    for position, item in enumerate(checked):
        if item.md5 is None:
            raise InvalidArgument(f"slices[{position}].md5", "is required for PUT tickets")


def _slice_position(position: list[Any] | None) -> int:
    """The slice_index a download page token continues after; -1 for the first page."""
    if position is None:
        return -1
    (value,) = position
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
        raise InvalidArgument("page_token", "is not a token this service issued")
    return value
