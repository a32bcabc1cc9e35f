"""The hospital's PACS, and the DICOM Segmentation codec."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from pacs_grpc.domain.exports import SegmentationBuild
from pacs_grpc.domain.pacs import SourceSeries
from pacs_grpc.domain.segments import LabelMap, SegmentationRead

# Decodes the slices and builds the SEG (pacs_grpc.adapters.dicom.export.write_segmentation).
SegmentationWriter = Callable[[SegmentationBuild], bytes]


class SegmentationReader(Protocol):
    """Reads DICOM Segmentation files and encodes their label maps as mask slices
    (pacs_grpc.adapters.dicom.segmentation). CPU-bound: callers run it in a worker thread."""

    def read(self, data: bytes, *, max_voxels: int, field: str) -> SegmentationRead:
        """What a Part-10 SEG holds. Malformed or unsupported input raises InvalidArgument on
        `field`; more than `max_voxels` decoded pixels raises ResourceExhausted."""
        ...

    def encode_label_maps(self, maps: Sequence[LabelMap]) -> list[bytes]:
        """Each label map as an 8-bit greyscale PNG (pixel value = segment number)."""
        ...


class Pacs(Protocol):
    """The hospital's PACS over DICOMweb (pacs_grpc.adapters.pacs).

    Every method raises Unavailable when the PACS cannot be reached or answers with a
    server error, so callers can tell "not there" (False / None) from "cannot tell".
    """

    async def study_exists(self, study_uid: str) -> bool: ...
    async def series_exists(self, study_uid: str, series_uid: str) -> bool: ...
    async def instance_exists(self, study_uid: str, series_uid: str, sop_uid: str) -> bool: ...
    async def source_series(
        self, study_uid: str, series_uid: str, *, fresh: bool = False
    ) -> SourceSeries | None:
        """The series' instances (no pixel data), or None when the PACS has no such series.

        A series found is remembered for a while; `fresh` asks the PACS again, for when a
        slice names an image the remembered answer lacks (the series may still be arriving).
        """
        ...

    async def series_metadata(self, study_uid: str, series_uid: str) -> list[dict[str, Any]]:
        """WADO-RS metadata of every instance, as DICOM JSON, for building a Segmentation."""
        ...

    async def retrieve_instance(
        self, study_uid: str, series_uid: str, sop_uid: str, *, max_bytes: int
    ) -> bytes | None:
        """WADO-RS of one instance: its DICOM Part-10 file, or None when the PACS has no such
        instance. More than `max_bytes` raises ResourceExhausted, read no further."""
        ...

    async def store(self, parts: list[bytes]) -> list[str]:
        """STOW-RS of DICOM Part-10 files; the SOP Instance UIDs the PACS refused."""
        ...
