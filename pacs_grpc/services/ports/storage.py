"""Object storage (S3): where mask slices, SEG files and uploads live."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from pacs_grpc.domain.objects import ObjectInfo, PostTicket, PutTicket


class ObjectStorage(Protocol):
    """Objects in one bucket (versioned), and signed URLs to them.

    Implemented by pacs_grpc.adapters.storage.objects.ObjectStore (minio SDK). Every method
    raises the domain's Unavailable when storage cannot be reached, so callers can report a
    retryable outage. Signing is local computation and does no I/O.
    """

    def presign_post(
        self,
        key: str,
        *,
        content_type: str,
        size: int,
        ttl: timedelta,
        upload_id: str | None = None,
    ) -> PostTicket:
        """With `upload_id`, the policy also requires it as the object's upload-id metadata."""
        ...

    def presign_put(self, key: str, *, content_type: str, ttl: timedelta) -> PutTicket: ...
    def presign_get(
        self, key: str, *, content_type: str, ttl: timedelta, version_id: str | None = None
    ) -> tuple[str, datetime]: ...
    async def stat(self, key: str) -> ObjectInfo | None: ...
    async def latest_versions(self, prefix: str) -> dict[str, ObjectInfo]:
        """Every live object under a prefix (its latest version), from one listing; listings
        carry no content type, so `content_type` is None."""
        ...

    async def read_head(self, key: str, length: int, *, version_id: str | None = None) -> bytes:
        """The first `length` bytes of the key's latest version, or of `version_id`."""
        ...

    async def read(self, key: str, *, version_id: str | None, max_bytes: int) -> bytes:
        """The whole object (of `version_id` when given). NotFound when it is missing;
        ResourceExhausted when it holds more than `max_bytes`, read no further than that."""
        ...

    async def put_stream(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        size: int,
        content_type: str,
        upload_id: str | None = None,
    ) -> ObjectInfo: ...
    async def delete(self, keys: Sequence[str]) -> list[str]:
        """Remove every version of each key; returns the keys that could not be removed."""
        ...

    async def versioning_enabled(self) -> bool: ...


class DeletesObjects(Protocol):
    """The part of ObjectStorage the sweeper needs."""

    async def delete(self, keys: Sequence[str]) -> list[str]:
        """Delete the keys; return those that failed (a missing key counts as deleted)."""
        ...
