"""An in-memory PACS for the Pacs port: series with their instances, metadata, files, STOW-RS;
and the SEG codec (SegmentationReader) as a table of files to what reading them yields.

`unreachable` makes every call raise Unavailable, as the DICOMweb adapter does when the PACS
cannot be reached. `store` answers with `refuse` (the SOP Instance UIDs it refused), or raises
`store_error`. Not modelled: the adapter's cache of series (`fresh` only counts the calls),
QIDO-RS paging, WADO-RS byte limits beyond `max_bytes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pacs_grpc.domain.errors import InvalidArgument, ResourceExhausted, Unavailable
from pacs_grpc.domain.masks import PNG_SIGNATURE
from pacs_grpc.domain.pacs import SourceInstance, SourceSeries
from pacs_grpc.domain.segments import LabelMap, SegmentationRead

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass
class FakePacs:
    unreachable: bool = False
    series: dict[tuple[str, str], SourceSeries] = field(default_factory=dict)
    files: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    refuse: list[str] = field(default_factory=list)
    store_error: Exception | None = None
    stored: list[bytes] = field(default_factory=list)
    # (method, fresh) of every call.
    calls: list[tuple[str, bool]] = field(default_factory=list)

    def add_series(
        self, study_uid: str, series_uid: str, *, images: int, rows: int = 8, columns: int = 8,
        modality: str = "CT",
    ) -> SourceSeries:  # fmt: skip
        """A series of `images` axial slices, stored in reverse order of their position."""
        instances = tuple(
            SourceInstance(
                sop_instance_uid=f"{series_uid}.{n}",
                sop_class_uid=CT_IMAGE,
                rows=rows,
                columns=columns,
                instance_number=n + 1,
                position=(0.0, 0.0, float(n)),
                orientation=AXIAL,
            )
            for n in reversed(range(images))
        )
        found = SourceSeries(study_uid, series_uid, f"{series_uid}.0", modality, instances)
        self.series[(study_uid, series_uid)] = found
        return found

    async def study_exists(self, study_uid: str) -> bool:
        self._call("study_exists")
        return any(study == study_uid for study, _ in self.series)

    async def series_exists(self, study_uid: str, series_uid: str) -> bool:
        self._call("series_exists")
        return (study_uid, series_uid) in self.series

    async def instance_exists(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        self._call("instance_exists")
        found = self.series.get((study_uid, series_uid))
        return found is not None and any(i.sop_instance_uid == sop_uid for i in found.instances)

    async def source_series(
        self, study_uid: str, series_uid: str, *, fresh: bool = False
    ) -> SourceSeries | None:
        self._call("source_series", fresh=fresh)
        return self.series.get((study_uid, series_uid))

    async def series_metadata(self, study_uid: str, series_uid: str) -> list[dict[str, Any]]:
        self._call("series_metadata")
        found = self.series.get((study_uid, series_uid))
        if found is None:
            return []
        # SOPInstanceUID (0008,0018) and Rows/Columns, as DICOM JSON.
        return [
            {
                "00080018": {"vr": "UI", "Value": [i.sop_instance_uid]},
                "00280010": {"vr": "US", "Value": [i.rows]},
                "00280011": {"vr": "US", "Value": [i.columns]},
            }
            for i in found.instances
        ]

    async def retrieve_instance(
        self, study_uid: str, series_uid: str, sop_uid: str, *, max_bytes: int
    ) -> bytes | None:
        self._call("retrieve_instance")
        data = self.files.get((study_uid, series_uid, sop_uid))
        if data is not None and len(data) > max_bytes:
            raise ResourceExhausted(f"the instance is larger than {max_bytes} bytes")
        return data

    async def store(self, parts: list[bytes]) -> list[str]:
        self._call("store")
        if self.store_error is not None:
            raise self.store_error
        self.stored.extend(parts)
        return list(self.refuse)

    def _call(self, method: str, *, fresh: bool = False) -> None:
        self.calls.append((method, fresh))
        if self.unreachable:
            raise Unavailable("the PACS could not be reached")


@dataclass(frozen=True)
class FakeLabelMap:
    """A label map as the use cases see one: a shape, and a name to tell it by."""

    name: str
    shape: tuple[int, int] = (8, 8)


@dataclass
class FakeSegmentationReader:
    """The SEG codec: `files` maps a file's bytes to what reading it yields; other bytes are
    refused as the real reader refuses a malformed file. Label maps encode as PNG-signed bytes
    carrying their name."""

    files: dict[bytes, SegmentationRead] = field(default_factory=dict)
    reads: int = 0

    def read(self, data: bytes, *, max_voxels: int, field: str) -> SegmentationRead:
        self.reads += 1
        found = self.files.get(data)
        if found is None:
            raise InvalidArgument(field, "is not a DICOM Segmentation this server can read")
        voxels = sum(m.shape[0] * m.shape[1] for m in found.label_maps.values())
        if voxels > max_voxels:
            raise ResourceExhausted(f"the segmentation holds more than {max_voxels} voxels")
        return found

    def encode_label_maps(self, maps: Sequence[LabelMap]) -> list[bytes]:
        return [PNG_SIGNATURE + f" {getattr(m, 'name', '?')}".encode() for m in maps]
