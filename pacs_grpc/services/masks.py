"""Use cases of MaskService: groups, signed uploads, verified completion, downloads."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pacs_grpc.domain import masks as rules
from pacs_grpc.domain import paging, validation
from pacs_grpc.domain.annotation import Annotation
from pacs_grpc.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from pacs_grpc.domain.masks import (
    CompletedSlice,
    GroupAccess,
    Mask,
    MaskGroup,
    NewMask,
    PendingUpload,
    SliceDeclaration,
    UploadMethod,
    slice_list,
)
from pacs_grpc.domain.pacs import PacsValidation
from pacs_grpc.domain.paging import Page
from pacs_grpc.services.context import AuditedTransactions, CallContext
from pacs_grpc.services.idempotency import create_once
from pacs_grpc.services.mask_access import (
    AnnotationAccessLookup,
    authorized_annotation,
    authorized_group,
    discard_objects,
)
from pacs_grpc.services.pacs_checks import PacsChecks, SliceFacts, SliceSource
from pacs_grpc.services.ports import IdempotencyStore, Transactions, Tx
from pacs_grpc.services.push_memory import PushMemoryBudget
from pacs_grpc.services.storage import ObjectInfo, ObjectStorage

_log = logging.getLogger(__name__)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_OPERATION = "CreateMaskGroup"
# Download URLs signed on the event loop; a larger page is signed in a worker thread, so a
# thousand signatures (tens of milliseconds of CPU) never hold up other calls.
_SIGN_ON_LOOP_MAX = 50
# What one pushed slice can hold in memory at once, whatever its size: the chunks queued for
# its storage worker and the part the SDK sends (pacs_grpc.adapters.storage.objects).
_PUSH_SLICE_MEMORY_MAX = 12 * 1024 * 1024
# A push refused for memory can retry once slices in flight have been stored.
_PUSH_MEMORY_RETRY_SECONDS = 2.0


@dataclass(frozen=True)
class MaskLimits:
    max_slices_per_call: int
    max_mask_bytes: int
    allowed_content_types: frozenset[str]
    upload_ttl: timedelta
    download_ttl: timedelta
    max_ttl: timedelta
    max_page_size: int
    check_png_signature: bool
    # Slices of one push stored at once; each holds at most a few MiB of chunks in memory.
    push_parallel_slices: int = 8
    # PUT tickets sign only the host, so storage that honours unsigned headers would let
    # one become a server-side copy (x-amz-copy-source); an operator must opt in.
    allow_put_uploads: bool = False
    # Bytes of pushed slices in flight (declared size, at most 12 MiB a slice).
    push_memory_per_process: int = 256 * 1024 * 1024
    push_memory_per_user: int = 128 * 1024 * 1024


@dataclass(frozen=True)
class Ticket:
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
    mask: Mask
    url: str
    expires_at: datetime


class MaskStore(Protocol):
    async def group_with_access(
        self, conn: Tx, annotation_id: int, group_id: int, user_id: int, *, for_update: bool = False
    ) -> GroupAccess | None: ...
    async def insert_group(
        self, conn: Tx, annotation_id: int, values: rules.GroupFields, created_by: int
    ) -> MaskGroup: ...
    async def get_group(self, conn: Tx, group_id: int) -> MaskGroup | None: ...
    async def list_groups(
        self, conn: Tx, annotation_id: int, *, after_id: int, limit: int
    ) -> list[MaskGroup]: ...
    async def delete_group(self, conn: Tx, group_id: int) -> int: ...
    async def insert_uploads(
        self, conn: Tx, group_id: int, declared: Sequence[tuple[uuid.UUID, str, SliceDeclaration]],
        *, method: str, created_by: int, expires_at: datetime,
    ) -> None: ...  # fmt: skip
    async def uploads(
        self, conn: Tx, group_id: int, upload_ids: Sequence[uuid.UUID]
    ) -> list[PendingUpload]: ...
    async def masks_by_upload(self, conn: Tx, upload_ids: Sequence[uuid.UUID]) -> list[Mask]: ...
    async def record_masks(
        self, conn: Tx, group_id: int, new: Sequence[NewMask], *, from_tickets: bool = True
    ) -> list[Mask]: ...
    async def list_masks(
        self, conn: Tx, group_id: int, *, after_slice: int, limit: int
    ) -> list[Mask]: ...
    async def get_mask(self, conn: Tx, group_id: int, mask_id: int) -> Mask | None: ...
    async def masks_of_group(
        self, conn: Tx, group_id: int, mask_ids: Sequence[int] | None, *, limit: int
    ) -> list[Mask]: ...
    async def enqueue_deletions(self, conn: Tx, keys: Sequence[str]) -> None: ...


class MaskUseCases:
    def __init__(
        self,
        transaction: AuditedTransactions,
        *,
        masks: MaskStore,
        annotations: AnnotationAccessLookup,
        idempotency: IdempotencyStore,
        storage: ObjectStorage,
        database: Transactions,
        limits: MaskLimits,
        pacs_checks: PacsChecks | None = None,
    ) -> None:
        self._transaction = transaction
        self._pacs_checks = pacs_checks or PacsChecks(None, PacsValidation.OFF)
        self._masks = masks
        self._annotations = annotations
        self._idempotency = idempotency
        self._storage = storage
        # Unaudited: for reads that precede the use case's one audited transaction, and
        # for cleanup after a failure, whose audit row the edge writes.
        self._database = database
        self.limits = limits
        self._push_memory = PushMemoryBudget(
            per_process=limits.push_memory_per_process, per_user=limits.push_memory_per_user
        )

    # -- groups -----------------------------------------------------------------------------

    async def create_group(
        self, call: CallContext, annotation_id: int, values: rules.GroupFields, request_id: str
    ) -> MaskGroup:
        validation.positive_id("annotation_id", annotation_id)
        key = validation.request_id("request_id", request_id)
        call.audit.touch(resource_type="mask_group")
        fingerprint = paging.filters_fingerprint(annotation_id, values.__dict__)
        if self._pacs_checks.active:
            # The annotation's images must still be in the PACS. Read (and authorised) first,
            # and the PACS asked outside any transaction, so a slow PACS holds no connection.
            async with self._database.transaction() as conn:
                annotation = await self._annotation(conn, call, annotation_id)
            lookup = await self._pacs_checks.look_up(
                annotation.study_uid, annotation.series_uid, annotation.instance_uid
            )
            self._pacs_checks.settle(lookup, "annotation", whose=" (the group's annotation)")
        async with self._transaction(call) as conn:
            await self._annotation(conn, call, annotation_id)
            group, _ = await create_once(
                self._idempotency,
                conn,
                call,
                operation=_OPERATION,
                request_id=key,
                fingerprint=fingerprint,
                create=lambda: self._masks.insert_group(
                    conn, annotation_id, values, call.caller.user_id
                ),
                find=lambda group_id: self._masks.get_group(conn, group_id),
                id_of=lambda g: g.id,
            )
            call.audit.touch(resource_ids=[group.id])
        return group

    async def list_groups(
        self, call: CallContext, annotation_id: int, page_size: int, page_token: str
    ) -> Page[MaskGroup]:
        validation.positive_id("annotation_id", annotation_id)
        limit = validation.page_size("page_size", page_size, self.limits.max_page_size)
        fingerprint = paging.filters_fingerprint("groups", annotation_id)
        position = paging.decode(page_token, fingerprint, arity=1)
        call.audit.touch(resource_type="mask_group")
        async with self._transaction(call) as conn:
            await self._annotation(conn, call, annotation_id)
            rows = await self._masks.list_groups(
                conn, annotation_id, after_id=int(position[0]) if position else 0, limit=limit + 1
            )
            page = Page.of(rows, limit, fingerprint, lambda g: [g.id])
            call.audit.returned("mask_group", [g.id for g in page.items])
        return page

    async def get_group(self, call: CallContext, annotation_id: int, group_id: int) -> MaskGroup:
        async with self._transaction(call) as conn:
            return (await self._group(conn, call, annotation_id, group_id)).group

    async def delete_group(self, call: CallContext, annotation_id: int, group_id: int) -> None:
        async with self._transaction(call) as conn:
            await self._group(conn, call, annotation_id, group_id, for_update=True)
            await self._masks.delete_group(conn, group_id)

    # -- uploads ----------------------------------------------------------------------------

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
        ttl = self._ttl("ttl_seconds", ttl_seconds, self.limits.upload_ttl)
        if method is UploadMethod.PUT and not self.limits.allow_put_uploads:
            raise InvalidArgument(
                "method", "PUT tickets are not enabled on this server; use UPLOAD_METHOD_POST"
            )
        async with self._transaction(call) as conn:
            access = await self._group(conn, call, annotation_id, group_id)
            checked = rules.slices(
                declared,
                slice_count=access.group.slice_count,
                max_slices=self.limits.max_slices_per_call,
                max_bytes=self.limits.max_mask_bytes,
                allowed_types=self.limits.allowed_content_types,
            )
            if method is UploadMethod.PUT:
                _require_md5(checked)
            expires_at = datetime.now(UTC) + ttl
            planned = []
            for item in checked:
                upload_id = uuid.uuid4()
                key = rules.upload_key(access.project_id, annotation_id, group_id, upload_id)
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

    async def complete_upload(
        self,
        call: CallContext,
        annotation_id: int,
        group_id: int,
        completed: list[CompletedSlice],
    ) -> tuple[MaskGroup, list[Mask]]:
        """Verify the uploaded objects and record them as masks, all or nothing."""
        wanted = {c.upload_id: c for c in completed}
        async with self._database.transaction() as conn:
            access = await self._group(conn, call, annotation_id, group_id)
            uploads = await self._masks.uploads(conn, group_id, list(wanted))
        unknown = len(wanted) - len(uploads)
        if unknown:
            raise FailedPrecondition(f"{unknown} upload id(s) are not tickets of this group")
        pending = [u for u in uploads if u.completed_at is None]
        now = datetime.now(UTC)
        expired = [u.slice_index for u in pending if u.expires_at <= now]
        if expired:
            raise FailedPrecondition(
                f"tickets expired for slices {slice_list(expired)}; ask for new ones"
            )
        listed: dict[str, ObjectInfo] = {}
        if any(u.method == UploadMethod.POST.value for u in pending):
            listed = await self._storage.latest_versions(
                rules.uploads_prefix(access.project_id, annotation_id, group_id)
            )
        checked = await asyncio.gather(
            *(self._check(u, wanted[u.upload_id], listed) for u in pending)
        )
        problems = [
            f"slice {u.slice_index}: {problem}"
            for u, (_, problem) in zip(pending, checked, strict=True)
            if problem
        ]
        if problems:
            raise FailedPrecondition("uploads not accepted: " + "; ".join(problems))
        new = [m for m, _ in checked if m is not None]
        if self._pacs_checks.active and new:
            source = await self._pacs_checks.slice_source(access.study_uid, access.series_uid)
            new = await self._bound(source, new)
        async with self._transaction(call) as conn:
            await self._group(conn, call, annotation_id, group_id)
            # Uploads a concurrent completion recorded meanwhile keep the masks it recorded.
            masks = await self._masks.record_masks(conn, group_id, new) if new else []
            if len(masks) < len(wanted):
                masks = await self._masks.masks_by_upload(conn, list(wanted))
            group = await self._masks.get_group(conn, group_id)
            call.audit.returned("mask", [m.id for m in masks])
        assert group is not None
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
            and self.limits.check_png_signature
            and upload.content_type == "image/png"
        ):
            try:
                # The version checked above, which is the one recorded: the latest may already
                # be another upload through the same still-valid ticket.
                head = await self._storage.read_head(
                    upload.object_key, len(_PNG_SIGNATURE), version_id=info.version_id
                )
            except NotFound:
                head = b""
            if head != _PNG_SIGNATURE:
                problem = "content is not a PNG image"
        if problem is not None or info is None:
            return None, problem
        return NewMask(
            upload=upload, file_path=upload.object_key, file_size=info.size, checksum=info.etag,
            width=reported.width, height=reported.height, object_version=info.version_id,
        ), None  # fmt: skip

    # -- streaming push ---------------------------------------------------------------------

    async def push(
        self, call: CallContext, messages: AsyncIterator[PushMessage]
    ) -> tuple[MaskGroup, list[Mask], int]:
        """Stream slices to storage and record them all, or leave nothing behind."""
        first = await anext(messages, None)
        if not isinstance(first, PushTarget):
            raise InvalidArgument("target", "the first message must name the group")
        async with self._database.transaction() as conn:
            access = await self._group(conn, call, first.annotation_id, first.group_id)
        # Before any slice is stored: a PACS that is down, or a series it lacks, refuses the
        # push at once rather than after the whole stream has been uploaded.
        source = await self._pacs_checks.slice_source(access.study_uid, access.series_uid)
        written: list[str] = []
        try:
            new, received = await self._receive(
                access, first, messages, written, user=call.caller.user_id
            )
            new = await self._bound(source, new)
            async with self._transaction(call) as conn:
                await self._group(conn, call, first.annotation_id, first.group_id)
                masks = await self._masks.record_masks(
                    conn, first.group_id, new, from_tickets=False
                )
                group = await self._masks.get_group(conn, first.group_id)
                call.audit.returned("mask", [m.id for m in masks])
        except BaseException:
            # Broken off, refused or failed: nothing may stay behind. Shielded, because a
            # cancelled call may be cancelled again while it cleans up.
            if written:
                await asyncio.shield(self._discard(written))
            raise
        assert group is not None
        return group, masks, received

    async def _bound(self, source: SliceSource, new: list[NewMask]) -> list[NewMask]:
        """The masks with each slice's image checked, and bound by position where the client
        named none (see PacsChecks.bind); refused (FAILED_PRECONDITION) in enforce mode."""
        if source.series is None:
            return new
        bound = await self._pacs_checks.bind(
            source,
            [
                SliceFacts(m.upload.slice_index, m.upload.sop_instance_uid, m.width, m.height)
                for m in new
            ],
        )
        return [
            dataclasses.replace(
                m,
                upload=dataclasses.replace(
                    m.upload, sop_instance_uid=bound.get(m.upload.slice_index)
                ),
            )
            for m in new
        ]

    async def _discard(self, keys: list[str]) -> None:
        await discard_objects(
            self._storage, self._database, self._masks, keys, what="a broken push"
        )

    async def _receive(
        self,
        access: GroupAccess,
        target: PushTarget,
        messages: AsyncIterator[PushMessage],
        written: list[str],
        *,
        user: int,
    ) -> tuple[list[NewMask], int]:
        """Read the stream slice by slice while earlier slices are still being stored.

        One object PUT per slice, one after another, would make a series cost its slice
        count times the storage round trip. Reading must stay in order (one stream), but each
        slice's upload runs on while the next one is read, up to `push_parallel_slices` at a
        time: memory stays bounded by that window, not by the series.
        """
        stored: list[tuple[asyncio.Task[NewMask], _SliceChunks]] = []
        try:
            received = await self._read_slices(access, target, messages, written, stored, user=user)
            return list(await asyncio.gather(*(task for task, _ in stored))), received
        except BaseException:
            # A slice read in full is finishing its PUT: let it, so that its object exists
            # when the caller deletes what was written. Cancelling it would stop the wait,
            # not the worker thread, whose object would then appear after the delete. A
            # slice still being read is cancelled: its bytes will never all arrive.
            for task, chunks in stored:
                if not chunks.read_through.is_set():
                    task.cancel()
            tasks = [task for task, _ in stored]
            await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))
            raise

    async def _read_slices(
        self,
        access: GroupAccess,
        target: PushTarget,
        messages: AsyncIterator[PushMessage],
        written: list[str],
        stored: list[tuple[asyncio.Task[NewMask], _SliceChunks]],
        *,
        user: int,
    ) -> int:
        running: set[asyncio.Task[NewMask]] = set()
        seen: set[int] = set()
        received = 0
        message = await anext(messages, None)
        while message is not None:
            header, declared = self._pushed_declaration(access, message, len(stored), seen)
            upload_id = uuid.uuid4()
            key = rules.pushed_key(
                access.project_id, target.annotation_id, target.group_id, upload_id
            )
            charge = min(declared.size_bytes, _PUSH_SLICE_MEMORY_MAX)
            while not self._push_memory.try_reserve(user, charge):
                if not running:
                    raise ResourceExhausted(
                        "too many bytes of pushed slices in flight on this server; retry in "
                        f"{_PUSH_MEMORY_RETRY_SECONDS:.0f} s",
                        retry_after_seconds=_PUSH_MEMORY_RETRY_SECONDS,
                    )
                # This stream's own slices still being stored free memory as they finish.
                await _until(None, running)
            written.append(key)
            png = self.limits.check_png_signature and declared.content_type == "image/png"
            chunks = _SliceChunks(
                messages, declared.size_bytes, f"slice[{len(stored)}]",
                signature=_PNG_SIGNATURE if png else b"",
            )  # fmt: skip
            try:
                task = asyncio.create_task(
                    self._store_pushed(
                        target, upload_id=upload_id, key=key, declared=declared, header=header,
                        chunks=chunks,
                    )
                )  # fmt: skip
            except BaseException:
                self._push_memory.release(user, charge)
                raise
            # A done callback, not a finally: a task cancelled before it starts runs no code.
            task.add_done_callback(_give_back(self._push_memory, user, charge))
            stored.append((task, chunks))
            running.add(task)
            await _until(chunks.read_through.wait(), running)
            while len(running) >= self.limits.push_parallel_slices:
                await _until(None, running)
            received += declared.size_bytes
            message = chunks.after
        if not stored:
            raise InvalidArgument("slice", "the stream carried no slices")
        return received

    def _pushed_declaration(
        self, access: GroupAccess, message: PushMessage, position: int, seen: set[int]
    ) -> tuple[PushedSlice, SliceDeclaration]:
        if not isinstance(message, PushedSlice):
            raise InvalidArgument("slice", "chunks must follow a slice header")
        field = f"slice[{position}]"
        if position >= self.limits.max_slices_per_call:
            raise InvalidArgument("slice", f"at most {self.limits.max_slices_per_call} per push")
        (declared,) = rules.slices(
            [message.declaration],
            slice_count=access.group.slice_count,
            max_slices=1,
            max_bytes=self.limits.max_mask_bytes,
            allowed_types=self.limits.allowed_content_types,
        )
        if declared.slice_index in seen:
            raise InvalidArgument(f"{field}.slice_index", "is repeated in this stream")
        seen.add(declared.slice_index)
        if declared.md5 is None:
            raise InvalidArgument(f"{field}.md5", "is required")
        if message.width <= 0 or message.height <= 0:
            raise InvalidArgument(f"{field}.width", "width and height must be positive")
        return message, declared

    async def _store_pushed(
        self,
        target: PushTarget,
        *,
        upload_id: uuid.UUID,
        key: str,
        declared: SliceDeclaration,
        header: PushedSlice,
        chunks: _SliceChunks,
    ) -> NewMask:
        info = await self._storage.put_stream(
            key, chunks, size=declared.size_bytes, content_type=declared.content_type,
            upload_id=str(upload_id),
        )  # fmt: skip
        if info.etag != declared.md5:
            raise FailedPrecondition(f"slice {declared.slice_index}: checksum differs from md5")
        return NewMask(
            upload=PendingUpload(
                upload_id, target.group_id, declared.slice_index, declared.sop_instance_uid,
                declared.label_name, declared.content_type, declared.size_bytes, declared.md5,
                "PUSH", key, datetime.now(UTC), None,
            ),
            file_path=key, file_size=info.size, checksum=info.etag,
            width=header.width, height=header.height, object_version=info.version_id,
        )  # fmt: skip

    # -- masks ------------------------------------------------------------------------------

    async def list_masks(
        self, call: CallContext, annotation_id: int, group_id: int, page_size: int, page_token: str
    ) -> Page[Mask]:
        limit = validation.page_size("page_size", page_size, self.limits.max_page_size)
        fingerprint = paging.filters_fingerprint("masks", group_id)
        position = paging.decode(page_token, fingerprint, arity=1)
        async with self._transaction(call) as conn:
            await self._group(conn, call, annotation_id, group_id)
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
        async with self._transaction(call) as conn:
            await self._group(conn, call, annotation_id, group_id)
            mask = await self._masks.get_mask(conn, group_id, mask_id)
            if mask is None:
                raise NotFound("mask not found")
            call.audit.returned("mask", [mask_id])
        return mask

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
        ttl = self._ttl("ttl_seconds", ttl_seconds, self.limits.download_ttl)
        most = self.limits.max_slices_per_call
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
        async with self._transaction(call) as conn:
            await self._group(conn, call, annotation_id, group_id)
            if mask_ids:
                masks = await self._masks.masks_of_group(
                    conn, group_id, mask_ids, limit=rules.MAX_SLICE_COUNT
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

    # -- shared -----------------------------------------------------------------------------

    async def _annotation(self, conn: Tx, call: CallContext, annotation_id: int) -> Annotation:
        return await authorized_annotation(self._annotations, conn, call, annotation_id)

    async def _group(
        self, conn: Tx, call: CallContext, annotation_id: int, group_id: int, *,
        for_update: bool = False,
    ) -> GroupAccess:  # fmt: skip
        return await authorized_group(
            self._masks, conn, call, annotation_id, group_id, for_update=for_update
        )

    def _ttl(self, field: str, seconds: int, default: timedelta) -> timedelta:
        return validation.url_ttl(field, seconds, default=default, longest=self.limits.max_ttl)


MAX_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class PushTarget:
    annotation_id: int
    group_id: int


@dataclass(frozen=True)
class PushedSlice:
    declaration: SliceDeclaration
    width: int
    height: int


PushMessage = PushTarget | PushedSlice | bytes


class _SliceChunks:
    """One slice's chunks from the push stream, ending exactly at its declared size, and
    starting with `signature` when one is given."""

    def __init__(
        self, messages: AsyncIterator[PushMessage], size: int, field: str, *,
        signature: bytes = b"",
    ) -> None:  # fmt: skip
        self._messages = messages
        self._remaining = size
        self._field = field
        self._signature = signature
        self._head = b""
        # The message after this slice's last chunk: the next header, or None at the end.
        self.after: PushMessage | None = None
        # Set once this slice's reading is over, well or badly: the stream may move on.
        self.read_through = asyncio.Event()

    def __aiter__(self) -> _SliceChunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._next_chunk()
        except BaseException:
            self.read_through.set()
            raise

    async def _next_chunk(self) -> bytes:
        if self._remaining == 0:
            self.after = await anext(self._messages, None)
            if isinstance(self.after, bytes):
                raise InvalidArgument(self._field, "more bytes than size_bytes declared")
            if len(self._head) < len(self._signature):
                raise InvalidArgument(self._field, "content is not a PNG image")
            raise StopAsyncIteration
        chunk = await anext(self._messages, None)
        if not isinstance(chunk, bytes):
            raise InvalidArgument(self._field, "fewer bytes than size_bytes declared")
        if not 0 < len(chunk) <= MAX_CHUNK_BYTES:
            raise InvalidArgument("chunk", f"must be 1 to {MAX_CHUNK_BYTES} bytes")
        if len(chunk) > self._remaining:
            raise InvalidArgument(self._field, "more bytes than size_bytes declared")
        if len(self._head) < len(self._signature):
            # Checked on the bytes as they pass: what is stored is exactly what was read.
            self._head += chunk[: len(self._signature) - len(self._head)]
            if not self._signature.startswith(self._head):
                raise InvalidArgument(self._field, "content is not a PNG image")
        self._remaining -= len(chunk)
        return chunk


async def _until(
    event: Coroutine[Any, Any, Any] | None, running: set[asyncio.Task[NewMask]]
) -> None:
    """Wait for `event` (or, without one, for any upload to end); a failed upload raises.

    Watching the uploads too means a slice refused by storage stops the push at once, not
    only when the stream reaches its end.
    """
    waiter = asyncio.ensure_future(event) if event is not None else None
    try:
        while running:
            done, _ = await asyncio.wait(
                {*running, *([waiter] if waiter else [])}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done & running:
                running.discard(task)
                task.result()
            if waiter is None or waiter in done:
                return
        if waiter is not None:
            await waiter
    finally:
        if waiter is not None and not waiter.done():
            waiter.cancel()


def _give_back(
    budget: PushMemoryBudget, user: int, size: int
) -> Callable[[asyncio.Task[NewMask]], None]:
    return lambda _: budget.release(user, size)


def _require_md5(checked: list[SliceDeclaration]) -> None:
    """A PUT ticket's object is accepted only with the MD5 declared before the upload.

    If storage ever let such a URL copy another object (x-amz-copy-source), the copy would
    carry the source's checksum, which a caller who could not read the source cannot have
    declared in advance; a checksum reported at completion could be read off the copy.
    """
    for position, item in enumerate(checked):
        if item.md5 is None:
            raise InvalidArgument(f"slices[{position}].md5", "is required for PUT tickets")


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


def _slice_position(position: list[Any] | None) -> int:
    """The slice_index a download page token continues after; -1 for the first page."""
    if position is None:
        return -1
    (value,) = position
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
        raise InvalidArgument("page_token", "is not a token this service issued")
    return value
