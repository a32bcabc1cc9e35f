"""Object storage (MinIO, AWS S3, SeaweedFS) through the minio SDK."""

from __future__ import annotations

import asyncio
import logging

import urllib3
from minio import Minio

from pacs_grpc.adapters.storage.breaker import BreakerState, CircuitBreaker
from pacs_grpc.config import StorageSettings

_log = logging.getLogger(__name__)


def create_client(
    settings: StorageSettings,
    *,
    connect_timeout: float = 3.0,
    read_timeout: float = 30.0,
    retry: bool = True,
) -> Minio:
    """A client whose every request is bounded in time.

    The region is given so the SDK never asks the server for the bucket's
    location, which would add a network round trip to every presign.
    """
    retries: urllib3.Retry | bool = (
        urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(502, 503, 504))
        if retry
        else False
    )
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        retries=retries,
        maxsize=32,
    )
    return Minio(
        settings.host,
        access_key=settings.access_key,
        secret_key=settings.secret_key,
        secure=settings.secure,
        region=settings.region,
        http_client=http,
    )


class StorageBreakerOpenError(RuntimeError):
    """Recent calls to storage failed; the breaker refuses new ones for a while."""


class BucketMissingError(RuntimeError):
    """The configured bucket does not exist."""


class BucketNotVersionedError(RuntimeError):
    """The configured bucket does not keep versions, which mask completion relies on."""


class StorageProbe:
    """Answers whether the configured bucket is reachable with our credentials."""

    name = "object_storage"

    def __init__(
        self,
        settings: StorageSettings,
        timeout_seconds: float,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._bucket = settings.bucket
        self._breaker = breaker
        # A client of its own without retries, so a probe never outlives its
        # timeout in a worker thread that cannot be cancelled.
        self._client = create_client(
            settings, connect_timeout=timeout_seconds, read_timeout=timeout_seconds, retry=False
        )
        self._versioned = False

    async def check(self) -> None:
        if self._breaker is not None and self._breaker.state is BreakerState.OPEN:
            # Requests are being refused: the instance must not receive more.
            raise StorageBreakerOpenError("calls to object storage are failing fast")
        exists = await asyncio.to_thread(self._client.bucket_exists, self._bucket)
        if not exists:
            raise BucketMissingError("the configured S3_BUCKET does not exist")
        if not self._versioned:
            # Checked until it holds: a recorded mask names the object version it verified.
            config = await asyncio.to_thread(self._client.get_bucket_versioning, self._bucket)
            if config.status != "Enabled":
                _log.error("S3_BUCKET must have versioning enabled; reporting NOT_SERVING")
                raise BucketNotVersionedError("the configured S3_BUCKET is not versioned")
            self._versioned = True
