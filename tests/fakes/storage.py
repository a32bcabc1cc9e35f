"""An in-memory versioned bucket with the semantics of pacs_grpc.adapters.storage.objects.

Objects keep every version (version ids "v1", "v2", ... or None when the bucket is not
versioned) with storage's ETag: the MD5 of the bytes, except for an object put_stream sent in
parts (more than PART_SIZE bytes), whose ETag is S3's multipart one, "<md5 of the parts'
md5s>-<parts>". Listings carry no content type; read and read_head honour a version id;
put_stream consumes its iterator (and closes it), stores nothing when it raises or carries
another length than declared, and, as the adapter does, returns as etag the MD5 of the bytes
it read, never storage's ETag; delete removes every version and returns the keys it was told
to refuse, and makes no call at all for no keys. Signing is local and deterministic: fake
URLs that name key, version and lifetime.

Tests act as clients and as storage's own enforcement with `post`, `put` (a ticket's upload,
refused once the FakeClock passes its expiry, or when it breaks the POST policy) and
`overwrite` (any other writer). Switches: `down` makes every call to storage raise Unavailable;
`delete_error` makes delete raise (TimeoutError: what asyncio.wait_for raises); `refuse_delete`
lists keys a delete leaves; `hold_puts` makes put_stream wait, after reading its stream, until
the event is set (a slice "in flight"); `put_error` makes put_stream raise once it has read
its stream, after `puts_before_error` puts have succeeded (storage failing mid-import).
Not modelled: multipart parts (only their ETag), the circuit breaker, policy signatures, S3
error codes.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from pacs_grpc.domain.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from pacs_grpc.domain.objects import ObjectInfo, PostTicket, PutTicket
from tests.fakes.clock import FakeClock

ENDPOINT = "https://storage.test/pacs-masks"
UPLOAD_ID_FIELD = "x-amz-meta-upload-id"
# The adapter's multipart part size: put_stream sends a larger object in parts of this size.
PART_SIZE = 5 * 1024 * 1024


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def multipart_etag(data: bytes, part_size: int = PART_SIZE) -> str:
    """S3's ETag of an object uploaded in parts: not the MD5 of its bytes."""
    parts = [data[i : i + part_size] for i in range(0, len(data), part_size)]
    digests = b"".join(hashlib.md5(p, usedforsecurity=False).digest() for p in parts)
    return f"{md5(digests)}-{len(parts)}"


@dataclass(frozen=True)
class StoredVersion:
    version_id: str | None
    data: bytes
    content_type: str
    upload_id: str | None
    # Storage's ETag, as stat and listings report it.
    etag: str


class PostForm(Protocol):
    """A POST ticket as a client holds it (PostTicket, or a use case's Ticket)."""

    @property
    def fields(self) -> dict[str, str]: ...
    @property
    def expires_at(self) -> datetime: ...


class PutRequest(Protocol):
    @property
    def url(self) -> str: ...
    @property
    def headers(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class _Policy:
    """What storage lets through a ticket: the POST policy's conditions, or a PUT's lifetime."""

    key: str
    content_type: str
    size: int | None
    upload_id: str | None
    expires_at: datetime


@dataclass
class FakeObjectStorage:
    clock: FakeClock
    versioned: bool = True
    down: bool = False
    delete_error: BaseException | None = None
    refuse_delete: set[str] = field(default_factory=set)
    hold_puts: asyncio.Event | None = None
    put_error: Exception | None = None
    puts_before_error: int = 0
    objects: dict[str, list[StoredVersion]] = field(default_factory=dict)
    # Every call to storage (signing is not one), by method name.
    calls: list[str] = field(default_factory=list)
    # (key, version_id) of each read_head and read.
    reads: list[tuple[str, str | None]] = field(default_factory=list)
    # The keys of each delete call.
    deletes: list[list[str]] = field(default_factory=list)
    # Each runs once, after a listing is taken and before it is returned: what another
    # client or call does meanwhile.
    after_listing: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _policies: dict[str, _Policy] = field(default_factory=dict)
    _version_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # -- signing ----------------------------------------------------------------------------

    def presign_post(
        self, key: str, *, content_type: str, size: int, ttl: timedelta,
        upload_id: str | None = None,
    ) -> PostTicket:  # fmt: skip
        expires_at = self.clock.now() + ttl
        fields = {"key": key, "Content-Type": content_type, "policy": f"expires {expires_at}"}
        if upload_id is not None:
            fields[UPLOAD_ID_FIELD] = upload_id
        self._policies[f"POST {key} {expires_at}"] = _Policy(
            key, content_type, size, upload_id, expires_at
        )
        return PostTicket(ENDPOINT, fields, expires_at)

    def presign_put(self, key: str, *, content_type: str, ttl: timedelta) -> PutTicket:
        expires_at = self.clock.now() + ttl
        url = f"{ENDPOINT}/{key}?X-Amz-Expires={int(ttl.total_seconds())}"
        self._policies[f"PUT {url}"] = _Policy(key, content_type, None, None, expires_at)
        return PutTicket(url, {"Content-Type": content_type}, expires_at)

    def presign_get(
        self, key: str, *, content_type: str, ttl: timedelta, version_id: str | None = None
    ) -> tuple[str, datetime]:
        url = (
            f"{ENDPOINT}/{key}?versionId={version_id or ''}"
            f"&response-content-type={content_type}&X-Amz-Expires={int(ttl.total_seconds())}"
        )
        return url, self.clock.now() + ttl

    # -- the port's calls -------------------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo | None:
        self._call("stat")
        latest = self.latest(key)
        return None if latest is None else self._info(key, latest)

    async def latest_versions(self, prefix: str) -> dict[str, ObjectInfo]:
        self._call("latest_versions")
        found = {
            key: ObjectInfo(key, len(versions[-1].data), versions[-1].etag, None,
                            versions[-1].version_id)
            for key, versions in self.objects.items()
            if key.startswith(prefix) and versions
        }  # fmt: skip
        if self.after_listing:
            await self.after_listing.pop(0)()
        return found

    async def read_head(self, key: str, length: int, *, version_id: str | None = None) -> bytes:
        self._call("read_head")
        self.reads.append((key, version_id))
        found = self._version(key, version_id)
        if found is None:
            raise NotFound("the uploaded object is missing")
        return found.data[:length]

    async def read(self, key: str, *, version_id: str | None, max_bytes: int) -> bytes:
        self._call("read")
        self.reads.append((key, version_id))
        found = self._version(key, version_id)
        if found is None:
            raise NotFound("a stored object is missing")
        if len(found.data) > max_bytes:
            raise ResourceExhausted(f"a stored object is larger than {max_bytes} bytes")
        return found.data

    async def put_stream(
        self, key: str, chunks: AsyncIterator[bytes], *, size: int, content_type: str,
        upload_id: str | None = None,
    ) -> ObjectInfo:  # fmt: skip
        if size < 0:
            raise InvalidArgument("size", "must not be negative")
        self._call("put_stream")
        received = bytearray()
        try:
            async for chunk in chunks:
                received += chunk
                if len(received) > size:
                    break
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()
        if len(received) != size:
            raise InvalidArgument("size", f"the stream carried other than {size} bytes")
        if self.hold_puts is not None:
            await self.hold_puts.wait()
        self._check_up()
        if self.put_error is not None:
            if self.puts_before_error <= 0:
                raise self.put_error
            self.puts_before_error -= 1
        data = bytes(received)
        etag = multipart_etag(data) if size > PART_SIZE else md5(data)
        stored = self._store(key, data, content_type, upload_id, etag=etag)
        # The MD5 of the bytes read and sent, as the adapter hashes them: never storage's ETag.
        return ObjectInfo(key, size, md5(data), content_type, stored.version_id, upload_id)

    async def delete(self, keys: Sequence[str]) -> list[str]:
        if not keys:
            return []
        self._call("delete")
        self.deletes.append(list(keys))
        if self.delete_error is not None:
            raise self.delete_error
        refused = sorted({k for k in keys if k in self.refuse_delete})
        for key in keys:
            if key not in self.refuse_delete:
                self.objects.pop(key, None)
        return refused

    async def versioning_enabled(self) -> bool:
        self._call("versioning_enabled")
        return self.versioned

    # -- clients and other writers ----------------------------------------------------------

    def post(self, ticket: PostForm, data: bytes, *, content_type: str | None = None) -> int:
        """A client's form upload through a POST ticket: 204, or 403 as storage refuses it."""
        key = ticket.fields["key"]
        policy = self._policies.get(f"POST {key} {ticket.expires_at}")
        if (
            self.down
            or policy is None
            or self.clock.now() >= policy.expires_at
            or len(data) != policy.size
            or (content_type or ticket.fields["Content-Type"]) != policy.content_type
            or ticket.fields.get(UPLOAD_ID_FIELD) != policy.upload_id
        ):
            return 403
        self._store(key, data, policy.content_type, policy.upload_id)
        return 204

    def put(self, ticket: PutRequest, data: bytes, *, content_type: str | None = None) -> int:
        """A client's PUT through a PUT ticket (only the host is signed: any size or type)."""
        policy = self._policies.get(f"PUT {ticket.url}")
        if self.down or policy is None or self.clock.now() >= policy.expires_at:
            return 403
        self._store(policy.key, data, content_type or ticket.headers["Content-Type"], None)
        return 200

    def overwrite(
        self, key: str, data: bytes, *, content_type: str = "image/png",
        upload_id: str | None = None,
    ) -> StoredVersion:  # fmt: skip
        """Another writer stores a new version, whatever any ticket says."""
        return self._store(key, data, content_type, upload_id)

    def latest(self, key: str) -> StoredVersion | None:
        versions = self.objects.get(key)
        return versions[-1] if versions else None

    def stored_keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    # -- inside -----------------------------------------------------------------------------

    def _store(
        self, key: str, data: bytes, content_type: str, upload_id: str | None, *,
        etag: str | None = None,
    ) -> StoredVersion:  # fmt: skip
        version_id = f"v{next(self._version_ids)}" if self.versioned else None
        stored = StoredVersion(version_id, data, content_type, upload_id, etag or md5(data))
        if self.versioned:
            self.objects.setdefault(key, []).append(stored)
        else:
            self.objects[key] = [stored]
        return stored

    def _version(self, key: str, version_id: str | None) -> StoredVersion | None:
        versions = self.objects.get(key, [])
        if version_id is None:
            return versions[-1] if versions else None
        return next((v for v in versions if v.version_id == version_id), None)

    def _info(self, key: str, version: StoredVersion) -> ObjectInfo:
        return ObjectInfo(
            key, len(version.data), version.etag, version.content_type, version.version_id,
            version.upload_id,
        )  # fmt: skip

    def _call(self, name: str) -> None:
        self.calls.append(name)
        self._check_up()

    def _check_up(self) -> None:
        if self.down:
            raise Unavailable("object storage unavailable, retry shortly")
