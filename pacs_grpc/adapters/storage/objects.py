"""Masks in S3-compatible storage through the minio SDK: upload tickets, checks, versions.

Clients upload straight to storage with presigned tickets; the server signs them, and at
completion inspects what arrived and records the exact version it checked (the bucket must be
versioned), so a later overwrite through a still-valid ticket changes nothing recorded. Mask
bytes pass through the server only in put_stream (PushMasks, imports, exports) and read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, BinaryIO, TypeVar, cast
from xml.etree import ElementTree

import urllib3
from minio.datatypes import PostPolicy
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import DictType

from pacs_grpc.adapters.storage.breaker import CircuitBreaker, run_admitted
from pacs_grpc.adapters.storage.s3 import create_client
from pacs_grpc.config import StorageSettings
from pacs_grpc.domain.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from pacs_grpc.domain.objects import ObjectInfo, PostTicket, PutTicket

_log = logging.getLogger(__name__)
_READ_PIECE = 1024 * 1024
_T = TypeVar("_T")

_UNAVAILABLE = "object storage unavailable, retry shortly"
# User metadata naming the ticket (or push) that stored an object: a POST form field and a header.
UPLOAD_ID_FIELD = "x-amz-meta-upload-id"
_UPLOAD_ID_META = "upload-id"
# S3's smallest multipart part; one part at a time is what put_stream holds in memory.
_PART_SIZE = 5 * 1024 * 1024
_QUEUED_CHUNKS = 4
# Bounds how long a worker thread waits for the next chunk if the event loop is gone.
_STALL_SECONDS = 60.0
# What a request to storage raises when storage (or the way to it) is down.
_OUTAGES = (ServerError, InvalidResponseError, urllib3.exceptions.HTTPError, OSError)
# Codes that mean our own credentials, clock or bucket are wrong: an operator must act.
_MISCONFIGURED = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "RequestTimeTooSkewed",
        "NoSuchBucket",
        "AllAccessDisabled",
    }
)


class ObjectStore:
    """ObjectStorage on one bucket; blocking SDK calls run in a thread pool of their own."""

    def __init__(
        self,
        settings: StorageSettings,
        *,
        max_workers: int = 32,
        public_endpoint: str | None = None,
        breaker: CircuitBreaker | None = None,
        request_timeout_seconds: float = 30.0,
    ) -> None:
        self._bucket = settings.bucket
        self._client = create_client(
            settings,
            connect_timeout=min(3.0, request_timeout_seconds),
            read_timeout=request_timeout_seconds,
        )
        # Signatures cover the host header, so URLs handed to clients must be signed
        # for the host they will connect to. Presigning never uses the network.
        public = (public_endpoint or settings.endpoint).rstrip("/")
        self._signer = (
            self._client
            if public == settings.endpoint
            else create_client(replace(settings, endpoint=public))
        )
        self._post_url = f"{public}/{settings.bucket}"
        # Not the default executor: a flood of storage calls must not starve other
        # to_thread users, and the pool bounds concurrent connections to storage.
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="object-store")
        self._reported: set[str] = set()
        self.breaker = breaker or CircuitBreaker()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._client._http.clear()

    # -- tickets: pure local computation -------------------------------------------------------

    def presign_post(
        self, key: str, *, content_type: str, size: int, ttl: timedelta,
        upload_id: str | None = None,
    ) -> PostTicket:  # fmt: skip
        now = _now()
        policy = PostPolicy(self._bucket, now + ttl)
        policy.add_equals_condition("key", key)
        policy.add_equals_condition("Content-Type", content_type)
        policy.add_content_length_range_condition(size, size)
        fields = {"key": key, "Content-Type": content_type}
        if upload_id is not None:
            # Storage refuses a form without it, so the object carries the ticket's id and
            # completion can tell it from an object that came from anywhere else.
            policy.add_equals_condition(UPLOAD_ID_FIELD, upload_id)
            fields[UPLOAD_ID_FIELD] = upload_id
        signed = self._signer.presigned_post_policy(policy)
        return PostTicket(url=self._post_url, fields={**fields, **signed}, expires_at=now + ttl)

    def presign_put(self, key: str, *, content_type: str, ttl: timedelta) -> PutTicket:
        now = _now()
        url = self._signer.get_presigned_url(
            "PUT", self._bucket, key, expires=ttl, request_date=now
        )
        return PutTicket(url=url, headers={"Content-Type": content_type}, expires_at=now + ttl)

    def presign_get(
        self, key: str, *, content_type: str, ttl: timedelta, version_id: str | None = None
    ) -> tuple[str, datetime]:
        now = _now()
        url = self._signer.get_presigned_url(
            "GET",
            self._bucket,
            key,
            expires=ttl,
            request_date=now,
            response_headers={"response-content-type": content_type},
            version_id=version_id,
        )
        return url, now + ttl

    # -- calls to storage ----------------------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo | None:
        return await self._run(self._stat, key)

    async def read_head(self, key: str, length: int, *, version_id: str | None = None) -> bytes:
        return await self._run(self._read_head, key, length, version_id)

    async def read(self, key: str, *, version_id: str | None, max_bytes: int) -> bytes:
        """The whole object; ResourceExhausted past `max_bytes`, which bounds what is held."""
        return await self._run(self._read, key, version_id, max_bytes)

    async def latest_versions(self, prefix: str, *, page_size: int = 1000) -> dict[str, ObjectInfo]:
        """The latest live version of every key under `prefix`."""
        return await self._run(self._latest_versions, prefix, page_size)

    async def delete(self, keys: Sequence[str]) -> list[str]:
        """Remove every version of each key; returns the keys that could not be removed."""
        if not keys:
            return []
        return await self._run(self._delete, list(keys))

    async def versioning_enabled(self) -> bool:
        return await self._run(self._versioning_enabled)

    async def put_stream(
        self, key: str, chunks: AsyncIterator[bytes], *, size: int, content_type: str,
        upload_id: str | None = None,
    ) -> ObjectInfo:  # fmt: skip
        """Upload exactly `size` bytes, or leave nothing under the key.

        A stream of another length raises InvalidArgument; a stream that raises has its
        error re-raised here; the returned etag is the MD5 of the bytes, also for multipart.
        The last chunk goes to storage only after the iterator has ended, which is then closed.
        """
        if size < 0:
            raise InvalidArgument("size", "must not be negative")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | _SourceFailed] = asyncio.Queue(_QUEUED_CHUNKS)
        reader = _QueueReader(loop, queue)
        feeder = asyncio.create_task(_feed(chunks, queue, size))
        try:
            if size == 0:
                # put_object reads nothing for an empty object: hear the verdict first.
                early = await feeder
                if early is not None:
                    raise early
            written = await self._run(
                self._client.put_object,
                self._bucket,
                key,
                cast(BinaryIO, reader),
                size,
                content_type=content_type,
                metadata=cast(DictType, {_UPLOAD_ID_META: upload_id}) if upload_id else None,
                part_size=_PART_SIZE,
                # Parallel parts would each hold 5 MiB and run outside our executor.
                num_parallel_uploads=1,
            )
        except _SourceFailed as failed:
            raise failed.error from None
        finally:
            feeder.cancel()
            reader.abandon()
        return ObjectInfo(
            key=key,
            size=size,
            etag=reader.md5.hexdigest(),
            content_type=content_type,
            version_id=written.version_id,
            upload_id=upload_id,
        )

    # -- blocking halves, run in the executor -------------------------------------------------

    def _stat(self, key: str) -> ObjectInfo | None:
        try:
            found = self._client.stat_object(self._bucket, key)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                return None
            raise
        return ObjectInfo(
            key=key,
            size=found.size or 0,
            etag=_etag(found.etag),
            content_type=found.content_type,
            version_id=found.version_id,
            upload_id=_upload_id(found.metadata),
        )

    def _read_head(self, key: str, length: int, version_id: str | None) -> bytes:
        try:
            response = self._client.get_object(
                self._bucket, key, offset=0, length=length, version_id=version_id
            )
        except S3Error as exc:
            if exc.code == "InvalidRange":  # an empty object has no first bytes
                return b""
            if exc.code in ("NoSuchKey", "NoSuchVersion"):
                raise NotFound("the uploaded object is missing") from None
            raise
        try:
            # A server that ignores Range sends everything; we still take only `length`.
            return bytes(response.read(length))
        finally:
            response.close()
            response.release_conn()

    def _read(self, key: str, version_id: str | None, max_bytes: int) -> bytes:
        try:
            response = self._client.get_object(self._bucket, key, version_id=version_id)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchVersion"):
                raise NotFound("a stored object is missing") from None
            raise
        try:
            # One byte past the bound tells "exactly max_bytes" from "more", whatever the
            # Content-Length said; reads may come back short, so read until the end.
            data = bytearray()
            while len(data) <= max_bytes:
                piece = response.read(min(_READ_PIECE, max_bytes + 1 - len(data)))
                if not piece:
                    break
                data += piece
        finally:
            response.close()
            response.release_conn()
        if len(data) > max_bytes:
            raise ResourceExhausted(f"a stored object is larger than {max_bytes} bytes")
        return bytes(data)

    def _delete(self, keys: list[str]) -> list[str]:
        # In a versioned bucket a plain delete only adds a delete marker: every version is
        # listed and removed, so nothing of a deleted mask stays behind. A listing by prefix
        # also returns longer keys, hence the exact-name filter.
        targets = [
            DeleteObject(key, version.version_id)
            for key in keys
            for version in self._client.list_objects(self._bucket, prefix=key, include_version=True)
            if version.object_name == key
        ]
        if not targets:
            return []
        # remove_objects is lazy: the requests happen while its errors are read.
        errors = self._client.remove_objects(self._bucket, targets)
        return sorted({e.name for e in errors if e.code != "NoSuchKey" and e.name is not None})

    def _latest_versions(self, prefix: str, page_size: int) -> dict[str, ObjectInfo]:
        # One request per thousand objects, where a HEAD each would cost a signed round trip
        # (about a millisecond of this process's CPU) per slice of the series. The pages are
        # read here rather than by list_objects: the SDK's parser spends ~0.12 ms of CPU per
        # entry (a namespaced path lookup per field), which was a tenth of a second for a
        # 1,000-slice completion; walking each entry's children once is ten times cheaper.
        found: dict[str, ObjectInfo] = {}
        query: DictType = {
            "versions": "", "prefix": prefix, "delimiter": "", "max-keys": str(page_size)
        }  # fmt: skip
        while True:
            # minio (pinned) has no public call that returns the raw page.
            response = self._client._execute("GET", self._bucket, query_params=query)
            page = ElementTree.fromstring(response.data)  # noqa: S314 - our own storage
            more = _read_versions_page(page, found)
            if more is None:
                return found
            query = {**query, "key-marker": more[0], "version-id-marker": more[1]}

    def _versioning_enabled(self) -> bool:
        return bool(self._client.get_bucket_versioning(self._bucket).status == "Enabled")

    async def _run(self, call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        trial = self.breaker.before_call()
        try:
            return await run_admitted(
                self.breaker, trial, self._executor, partial(self._observed, call, *args, **kwargs)
            )
        except S3Error as exc:
            status = exc.response.status
            if exc.code in _MISCONFIGURED or status == 403:
                self._report_misconfiguration(exc.code or f"HTTP {status}")
            elif status < 500:
                raise
            raise Unavailable(_UNAVAILABLE) from exc
        except _OUTAGES as exc:
            raise Unavailable(_UNAVAILABLE) from exc

    def _observed(self, call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a blocking call and tell the breaker how storage did. In the worker thread,
        so a call whose caller was cancelled still reports how it ended."""
        try:
            result = call(*args, **kwargs)
        except S3Error as exc:
            if exc.response.status >= 500:
                self.breaker.record_failure()
            else:  # storage answered; the request was wrong
                self.breaker.record_success()
            raise
        except _OUTAGES:
            self.breaker.record_failure()
            raise
        except BaseException:
            self.breaker.release()
            raise
        self.breaker.record_success()
        return result

    def _report_misconfiguration(self, code: str) -> None:
        # Once per code: every request fails the same way until an operator fixes it.
        if code not in self._reported:
            self._reported.add(code)
            _log.error(
                "object storage refused our request (S3 error %s); check S3_* settings", code
            )


class _SourceFailed(Exception):
    """Carries the stream's own error through put_object, which aborts and re-raises it."""

    def __init__(self, error: BaseException) -> None:
        super().__init__("the source stream failed")
        self.error = error


async def _feed(
    chunks: AsyncIterator[bytes], queue: asyncio.Queue[bytes | _SourceFailed], size: int
) -> _SourceFailed | None:
    """Pass chunks to the reader and return the stream's failure, if any.

    put_object stops reading once `size` bytes arrived and then completes the upload,
    so the latest chunk is held back until the next one (or the end) proves the total
    is not exceeded: the last bytes reach storage only when the stream is known good.
    """
    total, held = 0, b""
    problem: BaseException | None = None
    try:
        async for chunk in chunks:
            if not chunk:
                continue
            total += len(chunk)
            if total > size:
                break
            if held:
                await queue.put(held)
            held = chunk
    except Exception as exc:  # noqa: BLE001 - handed to the upload, which aborts and re-raises
        problem = exc
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
    if problem is None and total != size:
        longer = "is longer than" if total > size else f"ended after {total} of"
        problem = InvalidArgument("size", f"the stream {longer} {size} bytes")
    if problem is not None:
        failed = _SourceFailed(problem)
        await queue.put(failed)
        return failed
    if held:
        await queue.put(held)
    return None


class _QueueReader:
    """The file-like object put_object reads from its worker thread; hashes what it hands out."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes | _SourceFailed]
    ) -> None:
        self._loop = loop
        self._queue = queue
        self._pending = b""
        self.md5 = hashlib.md5(usedforsecurity=False)

    def read(self, size: int = -1) -> bytes:
        if not self._pending:
            waiting = asyncio.run_coroutine_threadsafe(self._queue.get(), self._loop)
            try:
                item = waiting.result(_STALL_SECONDS)
            except TimeoutError:
                waiting.cancel()
                raise _SourceFailed(TimeoutError("no chunk arrived in time")) from None
            if isinstance(item, _SourceFailed):
                raise item
            self._pending = item
        if 0 <= size < len(self._pending):
            data, self._pending = self._pending[:size], self._pending[size:]
        else:
            data, self._pending = self._pending, b""
        self.md5.update(data)
        return data

    def abandon(self) -> None:
        """On the loop: make a worker still waiting for chunks give up (the caller left)."""
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_SourceFailed(asyncio.CancelledError()))


_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_VERSION_FIELDS = {
    f"{_S3_NS}{name}": name for name in ("Key", "VersionId", "IsLatest", "Size", "ETag")
}


def _read_versions_page(
    page: ElementTree.Element, found: dict[str, ObjectInfo]
) -> tuple[str, str] | None:
    """Add a ListObjectVersions page's latest versions to `found`; the next page's markers.

    A deleted key's latest entry is a DeleteMarker, not a Version, so it is left out.
    """
    for entry in page.iter(f"{_S3_NS}Version"):
        values = {
            _VERSION_FIELDS[child.tag]: child.text or ""
            for child in entry
            if child.tag in _VERSION_FIELDS
        }
        if values.get("IsLatest") == "true" and values.get("Key"):
            key = values["Key"]
            found[key] = ObjectInfo(
                key=key,
                size=int(values.get("Size") or 0),
                etag=_etag(values.get("ETag")),
                content_type=None,
                version_id=values.get("VersionId") or None,
            )
    if page.findtext(f"{_S3_NS}IsTruncated") != "true":
        return None
    key_marker = page.findtext(f"{_S3_NS}NextKeyMarker") or ""
    return key_marker, page.findtext(f"{_S3_NS}NextVersionIdMarker") or ""


def _now() -> datetime:
    # Whole seconds: X-Amz-Date has no fraction, so expires_at matches the signature.
    return datetime.now(UTC).replace(microsecond=0)


def _upload_id(metadata: Any) -> str | None:
    """The x-amz-meta-upload-id of a HEAD answer; header names arrive in any case."""
    for name, value in (metadata or {}).items():
        if str(name).lower() == UPLOAD_ID_FIELD:
            return str(value)
    return None


def _etag(value: str | None) -> str:
    return (value or "").strip('"').lower()
