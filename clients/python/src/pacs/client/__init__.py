"""The hand-written client over the generated pacs.v1 stubs, and the `pacs` CLI (cli.py).

Synchronous, for pipelines and scripts: `PacsClient` sets a deadline on every call, sends a
fresh token from its token provider, retries UNAVAILABLE where that is safe (retry.py), and
uploads or downloads whole mask groups through signed URLs in parallel.

Names are imported on first use, so `pacs --help` does not wait for grpc to load.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pacs.client.client import PacsClient, UploadResult
    from pacs.client.downloads import DownloadError, DownloadResult
    from pacs.client.exports import ExportDownloadError, ExportResult, SegmentationUploadError
    from pacs.client.png import encode_png, png_dimensions
    from pacs.client.retry import METHOD_RETRY, Retry, RetryPolicy
    from pacs.client.segments import segment, segments_from_spec
    from pacs.client.slices import Slice, from_arrays, from_bytes, from_directory
    from pacs.client.tokens import ClientCredentials, StaticToken, TokenError, TokenProvider
    from pacs.client.uploads import ProgressCallback, UploadError

_EXPORTS = {
    "PacsClient": "client",
    "UploadResult": "client",
    "DownloadError": "downloads",
    "DownloadResult": "downloads",
    "ExportDownloadError": "exports",
    "ExportResult": "exports",
    "SegmentationUploadError": "exports",
    "encode_png": "png",
    "png_dimensions": "png",
    "METHOD_RETRY": "retry",
    "Retry": "retry",
    "RetryPolicy": "retry",
    "segment": "segments",
    "segments_from_spec": "segments",
    "Slice": "slices",
    "from_arrays": "slices",
    "from_bytes": "slices",
    "from_directory": "slices",
    "ClientCredentials": "tokens",
    "StaticToken": "tokens",
    "TokenError": "tokens",
    "TokenProvider": "tokens",
    "ProgressCallback": "uploads",
    "UploadError": "uploads",
}

__all__ = [
    "METHOD_RETRY",
    "ClientCredentials",
    "DownloadError",
    "DownloadResult",
    "ExportDownloadError",
    "ExportResult",
    "PacsClient",
    "ProgressCallback",
    "Retry",
    "RetryPolicy",
    "SegmentationUploadError",
    "Slice",
    "StaticToken",
    "TokenError",
    "TokenProvider",
    "UploadError",
    "UploadResult",
    "encode_png",
    "from_arrays",
    "from_bytes",
    "from_directory",
    "png_dimensions",
    "segment",
    "segments_from_spec",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pacs.client' has no attribute {name!r}")
    return getattr(importlib.import_module(f"pacs.client.{module}"), name)
