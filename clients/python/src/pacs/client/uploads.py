"""Uploading a mask group's slices: tickets, parallel uploads to storage, one completion.

Per batch of at most 1,000 slices (the server's limit per call): one CreateUploadUrls, the
uploads in parallel on a bounded pool, one CompleteUpload. A slice whose upload fails
transiently (connection errors, 5xx, 429) is retried with backoff; a slice whose ticket storage
refuses (403: expired, or its signature no longer valid) gets a new ticket in a follow-up
CreateUploadUrls for just those slices. Slices that still fail are left out of the completion
and reported together in UploadError; the rest are recorded, so uploading to the same group
again sends only the missing ones.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Protocol

from pacs.client.slices import Slice
from pacs.client.transfer import TransferFailed
from pacs.v1 import mask_pb2

ProgressCallback = Callable[[int, int], None]
"""progress(done, total): slices uploaded so far, of those being uploaded. Called on the
thread that called the upload, never concurrently."""

MAX_SLICES_PER_CALL = 1000


class MaskCalls(Protocol):
    """The two MaskService calls an upload needs (the generated stub has them)."""

    @property
    def CreateUploadUrls(  # noqa: N802 - the RPC's name
        self,
    ) -> Callable[[mask_pb2.CreateUploadUrlsRequest], mask_pb2.CreateUploadUrlsResponse]: ...

    @property
    def CompleteUpload(  # noqa: N802 - the RPC's name
        self,
    ) -> Callable[[mask_pb2.CompleteUploadRequest], mask_pb2.CompleteUploadResponse]: ...


class Transport(Protocol):
    def upload(self, ticket: mask_pb2.UploadTicket, body: bytes, content_type: str) -> None: ...


@dataclass(frozen=True)
class UploadOptions:
    concurrency: int = 8
    method: mask_pb2.UploadMethod.ValueType = mask_pb2.UPLOAD_METHOD_POST
    # 0: the server's default ticket lifetime.
    ttl_seconds: int = 0
    # Attempts per slice and ticket against transient failures.
    attempts: int = 4
    # Ticket requests per slice, the first included, against refused (expired) tickets.
    ticket_rounds: int = 3
    batch_size: int = MAX_SLICES_PER_CALL
    initial_backoff: float = 0.2
    max_backoff: float = 5.0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not 1 <= self.batch_size <= MAX_SLICES_PER_CALL:
            raise ValueError(f"batch_size must be between 1 and {MAX_SLICES_PER_CALL}")
        if self.attempts < 1 or self.ticket_rounds < 1:
            raise ValueError("attempts and ticket_rounds must be at least 1")


@dataclass(frozen=True)
class UploadStats:
    uploaded: int
    bytes_sent: int
    # Upload attempts repeated after a transient failure, and tickets asked for again.
    retries: int
    # The group as the last completion returned it; None when nothing was completed.
    group: mask_pb2.MaskGroup | None


class UploadError(Exception):
    """Some slices could not be uploaded; those uploaded were recorded all the same."""

    def __init__(self, group_id: int, failed: dict[int, str], stats: UploadStats) -> None:
        self.group_id = group_id
        self.failed = dict(sorted(failed.items()))
        self.stats = stats
        shown = "; ".join(f"slice {i}: {reason}" for i, reason in list(self.failed.items())[:5])
        more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
        super().__init__(
            f"{len(failed)} slice(s) not uploaded ({shown}{more}); {stats.uploaded} recorded; "
            f"upload to group {group_id} again to send only the missing ones"
        )


@dataclass
class _Run:
    """One upload call's shared state; touched only by the calling thread."""

    annotation_id: int
    group_id: int
    pool: ThreadPoolExecutor
    total: int
    progress: ProgressCallback | None
    done: int = 0
    failed: dict[int, str] = field(default_factory=dict)

    def tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


class _Failed:
    def __init__(self, reason: str, *, refused: bool = False) -> None:
        self.reason = reason
        self.refused = refused


class MaskUploader:
    def __init__(
        self,
        masks: MaskCalls,
        transport: Transport,
        options: UploadOptions | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._masks = masks
        self._transport = transport
        self._options = options or UploadOptions()
        self._sleep = sleep
        self._draw = draw
        self._lock = threading.Lock()
        self._retries = 0

    def upload(
        self,
        annotation_id: int,
        group_id: int,
        slices: Sequence[Slice],
        progress: ProgressCallback | None = None,
    ) -> UploadStats:
        """Upload and complete `slices` in batches; raises UploadError if any slice failed."""
        indexes = [s.index for s in slices]
        if len(set(indexes)) != len(indexes):
            raise ValueError("slice indexes must be distinct")
        self._retries = 0
        sent = 0
        group: mask_pb2.MaskGroup | None = None
        size = self._options.batch_size
        workers = self._options.concurrency
        with ThreadPoolExecutor(workers, thread_name_prefix="pacs-upload") as pool:
            run = _Run(annotation_id, group_id, pool, len(slices), progress)
            if progress is not None:
                progress(0, run.total)
            for start in range(0, len(slices), size):
                uploaded = self._upload_batch(run, slices[start : start + size])
                sent += sum(item.size for _, item in uploaded)
                if uploaded:
                    group = self._complete(annotation_id, group_id, uploaded)
        stats = UploadStats(uploaded=run.done, bytes_sent=sent, retries=self._retries, group=group)
        if run.failed:
            raise UploadError(group_id, run.failed, stats)
        return stats

    def _upload_batch(
        self, run: _Run, batch: Sequence[Slice]
    ) -> list[tuple[mask_pb2.UploadTicket, Slice]]:
        uploaded: list[tuple[mask_pb2.UploadTicket, Slice]] = []
        pending = list(batch)
        for round_number in range(self._options.ticket_rounds):
            if round_number:
                self._count_retries(len(pending))
            tickets = self._tickets(run.annotation_id, run.group_id, pending)
            futures: dict[Future[_Failed | None], tuple[mask_pb2.UploadTicket, Slice]] = {
                run.pool.submit(self._send, ticket, item): (ticket, item)
                for ticket, item in zip(tickets, pending, strict=True)
            }
            refused: list[Slice] = []
            for future in as_completed(futures):
                ticket, item = futures[future]
                outcome = future.result()
                if outcome is None:
                    uploaded.append((ticket, item))
                    run.tick()
                elif outcome.refused:
                    refused.append(item)
                else:
                    run.failed[item.index] = outcome.reason
            pending = sorted(refused, key=lambda s: s.index)
            if not pending:
                break
        for item in pending:
            run.failed[item.index] = "storage refused every ticket (HTTP 403)"
        return uploaded

    def _tickets(
        self, annotation_id: int, group_id: int, slices: Sequence[Slice]
    ) -> list[mask_pb2.UploadTicket]:
        reply = self._masks.CreateUploadUrls(
            mask_pb2.CreateUploadUrlsRequest(
                annotation_id=annotation_id,
                group_id=group_id,
                method=self._options.method,
                ttl_seconds=self._options.ttl_seconds,
                slices=[
                    mask_pb2.SliceUpload(
                        slice_index=s.index, content_type=s.content_type, size_bytes=s.size,
                        md5=s.md5, label_name=s.label_name, sop_instance_uid=s.sop_instance_uid,
                    )
                    for s in slices
                ],
            )
        )  # fmt: skip
        by_index = {t.slice_index: t for t in reply.tickets}
        missing = [s.index for s in slices if s.index not in by_index]
        if missing:
            raise RuntimeError(f"the server returned no ticket for slices {missing[:5]}")
        return [by_index[s.index] for s in slices]

    def _send(self, ticket: mask_pb2.UploadTicket, item: Slice) -> _Failed | None:
        try:
            body = item.read()
        except OSError as error:
            return _Failed(f"unreadable ({error.strerror or type(error).__name__})")
        if len(body) != item.size:
            return _Failed("changed since it was measured")
        options = self._options
        for attempt in range(1, options.attempts + 1):
            try:
                self._transport.upload(ticket, body, item.content_type)
                return None
            except TransferFailed as failure:
                if failure.refused:
                    return _Failed(failure.reason, refused=True)
                if not failure.transient or attempt == options.attempts:
                    return _Failed(failure.reason)
            self._count_retries(1)
            ceiling = min(options.max_backoff, options.initial_backoff * 2 ** (attempt - 1))
            self._sleep(self._draw() * ceiling)
        raise AssertionError("unreachable")  # pragma: no cover

    def _complete(
        self,
        annotation_id: int,
        group_id: int,
        uploaded: list[tuple[mask_pb2.UploadTicket, Slice]],
    ) -> mask_pb2.MaskGroup:
        uploaded.sort(key=lambda pair: pair[1].index)
        reply = self._masks.CompleteUpload(
            mask_pb2.CompleteUploadRequest(
                annotation_id=annotation_id,
                group_id=group_id,
                uploads=[
                    mask_pb2.CompletedUpload(
                        upload_id=ticket.upload_id, width=item.width, height=item.height
                    )
                    for ticket, item in uploaded
                ],
            )
        )
        return reply.mask_group

    def _count_retries(self, count: int) -> None:
        with self._lock:
            self._retries += count
