"""DICOM Segmentation (SEG) files: export records and saving the .dcm they point at, and the
errors of moving a SEG file to or from storage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pacs.client.downloads import _write
from pacs.client.transfer import SignedUrlTransport, TransferFailed
from pacs.v1 import mask_pb2

DICOM_PREAMBLE = 128
_DICM = b"DICM"


@dataclass(frozen=True)
class ExportResult:
    """An export's record, a signed URL of its .dcm (empty when the server gave none), and
    where the .dcm was saved, if it was."""

    export: mask_pb2.MaskGroupExport
    download_url: str
    saved: Path | None = None

    @property
    def stored_in_pacs(self) -> bool:
        return self.export.pacs_status == mask_pb2.PACS_STORE_STATUS_STORED


class ExportDownloadError(Exception):
    """The export's .dcm could not be fetched, or is not the file the record describes."""


class SegmentationUploadError(Exception):
    """A local SEG file could not be uploaded for import; nothing was imported."""


def export_file_name(export: mask_pb2.MaskGroupExport) -> str:
    # From ids only, like the server's object keys: a file name shows up in listings and logs.
    return f"seg-group{export.mask_group_id}-export{export.id}.dcm"


def save_export(result: ExportResult, save_to: Path | str) -> Path:
    """The .dcm at `save_to`, or inside it when it is a folder; written whole or not at all."""
    if not result.download_url:
        raise ExportDownloadError(f"export {result.export.id}: the server gave no download URL")
    target = Path(save_to)
    if target.is_dir():
        target = target / export_file_name(result.export)
    transport = SignedUrlTransport(concurrency=1)
    try:
        data = transport.download(result.download_url)
    except TransferFailed as failure:
        raise ExportDownloadError(
            f"export {result.export.id}: download failed ({failure.reason})"
        ) from None
    finally:
        transport.close()
    expected = result.export.size_bytes
    if expected and len(data) != expected:
        raise ExportDownloadError(
            f"export {result.export.id}: got {len(data)} bytes, the record says {expected}"
        )
    if data[DICOM_PREAMBLE : DICOM_PREAMBLE + 4] != _DICM:
        raise ExportDownloadError(f"export {result.export.id}: not a DICOM Part-10 file")
    return _write(target, data)
