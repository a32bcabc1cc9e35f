"""What object storage holds and hands out, as the use cases and the storage adapter see it.

Value types only: the port that produces them is pacs_grpc.services.ports.ObjectStorage.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class PostTicket:
    """A presigned POST policy: form fields to send before the file field."""

    url: str
    fields: dict[str, str]
    expires_at: datetime


@dataclass(frozen=True)
class PutTicket:
    """A presigned PUT URL and the headers its signature covers."""

    url: str
    headers: dict[str, str]
    expires_at: datetime


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object version, as storage describes it."""

    key: str
    size: int
    # Lowercase hex without quotes; the MD5 of the bytes for single-part uploads.
    etag: str
    content_type: str | None
    # Set when the bucket is versioned (required): names exactly these bytes.
    version_id: str | None = None
    # The x-amz-meta-upload-id the object was stored with (only from stat): every ticket and
    # push stores its own id there, so an object carrying another id was not written by it.
    upload_id: str | None = None
