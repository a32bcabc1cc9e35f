"""PushMasks: a series of slices streamed in one call, stored as they arrive and recorded all
together, or nothing left behind.

Flow control: reading the stream stays in order, but each slice's storage upload runs on while
the next one is read, up to `push_parallel_slices` at a time, and the bytes in flight are
charged to a per-user and a per-process memory budget (pacs_grpc.services.push_memory).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic

from pacs_grpc.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from pacs_grpc.domain.masks import (
    PNG_SIGNATURE,
    GroupAccess,
    Mask,
    MaskGroup,
    MaskLimits,
    NewMask,
    PendingUpload,
    SliceDeclaration,
    declaration,
    pushed_key,
)
from pacs_grpc.services.context import AuditedTransactions, CallContext
from pacs_grpc.services.mask_access import authorized_group, discard_objects
from pacs_grpc.services.pacs_checks import PacsChecks, bind_masks
from pacs_grpc.services.ports import Clock, MaskStore, ObjectStorage, Transactions, TxT
from pacs_grpc.services.push_memory import PushMemoryBudget

# What one pushed slice can hold in memory at once, whatever its size: the chunks queued for
# its storage worker and the part the SDK sends (pacs_grpc.adapters.storage.objects).
_PUSH_SLICE_MEMORY_MAX = 12 * 1024 * 1024
# A push refused for memory can retry once slices in flight have been stored.
_PUSH_MEMORY_RETRY_SECONDS = 2.0


class MaskPush(Generic[TxT]):
    """Receives PushMasks streams."""

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
        # Unaudited: the read before the stream is taken in, and cleanup after a failure.
        self._database = database
        self._limits = limits
        self._pacs_checks = pacs_checks
        self._clock = clock
        self._push_memory = PushMemoryBudget(
            per_process=limits.push_memory_per_process, per_user=limits.push_memory_per_user
        )

    async def push(
        self, call: CallContext, messages: AsyncIterator[PushMessage]
    ) -> tuple[MaskGroup, list[Mask], int]:
        """Stream slices to storage and record them all, or leave nothing behind."""
        first = await anext(messages, None)
        if not isinstance(first, PushTarget):
            raise InvalidArgument("target", "the first message must name the group")
        async with self._database.transaction() as conn:
            access = await authorized_group(
                self._masks, conn, call, first.annotation_id, first.group_id
            )
        # Before any slice is stored: a PACS that is down, or a series it lacks, refuses the
        # push at once rather than after the whole stream has been uploaded.
        source = await self._pacs_checks.slice_source(access.study_uid, access.series_uid)
        written: list[str] = []
        try:
            new, received = await self._receive(
                access, first, messages, written, user=call.caller.user_id
            )
            new = await bind_masks(self._pacs_checks, source, new)
            async with self._transaction(call) as conn:
                # Locked, so a concurrent DeleteMaskGroup either waits or has already made
                # this NOT_FOUND: the masks never meet a group deleted under them.
                await authorized_group(
                    self._masks, conn, call, first.annotation_id, first.group_id, for_update=True
                )
                masks = await self._masks.record_masks(
                    conn, first.group_id, new, from_tickets=False,
                    recorded_by=call.caller.user_id,
                )  # fmt: skip
                group = await self._masks.get_group(conn, first.group_id)
                call.audit.returned("mask", [m.id for m in masks])
        except BaseException:
            # Broken off, refused or failed: nothing may stay behind. Shielded, because a
            # cancelled call may be cancelled again while it cleans up.
            if written:
                await asyncio.shield(self._discard(written))
            raise
        if group is None:
            raise NotFound("mask group not found")
        return group, masks, received

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
            key = pushed_key(access.project_id, target.annotation_id, target.group_id, upload_id)
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
            png = self._limits.check_png_signature and declared.content_type == "image/png"
            chunks = _SliceChunks(
                messages, declared.size_bytes, f"slice[{len(stored)}]",
                signature=PNG_SIGNATURE if png else b"",
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
            while len(running) >= self._limits.push_parallel_slices:
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
        if position >= self._limits.max_slices_per_call:
            raise InvalidArgument("slice", f"at most {self._limits.max_slices_per_call} per push")
        declared = declaration(
            field,
            message.declaration,
            slice_count=access.group.slice_count,
            max_bytes=self._limits.max_mask_bytes,
            allowed_types=self._limits.allowed_content_types,
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
                "PUSH", key, self._clock.now(), None,
            ),
            file_path=key, file_size=info.size, checksum=info.etag,
            width=header.width, height=header.height, object_version=info.version_id,
        )  # fmt: skip


MAX_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class PushTarget:
    """The first message of a PushMasks stream: the group every slice of the stream goes to."""

    annotation_id: int
    group_id: int


@dataclass(frozen=True)
class PushedSlice:
    """A PushMasks slice header: what the slice declares (its MD5 required) and the image's size.
    Chunks of exactly `declaration.size_bytes` bytes follow it.
    """

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
