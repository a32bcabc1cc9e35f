"""What the server knows of the PACS's images: the source series a mask is drawn on.

Filled from DICOMweb (QIDO-RS and WADO-RS metadata) by the PACS adapter. Only the attributes
that bind masks to their images live here; building a DICOM Segmentation needs the full
metadata, which the adapter hands over as DICOM JSON (PS3.18 F.2) untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class PacsValidation(Enum):
    """PACS_VALIDATE: what a write does about references the PACS does not know."""

    ENFORCE = "enforce"  # refuse (FAILED_PRECONDITION); PACS down -> UNAVAILABLE
    WARN = "warn"  # log and count, then write
    OFF = "off"  # do not ask


@dataclass(frozen=True)
class SourceInstance:
    """One image of a source series, as far as binding mask slices to it needs."""

    sop_instance_uid: str
    sop_class_uid: str
    rows: int
    columns: int
    instance_number: int | None = None
    # ImagePositionPatient and ImageOrientationPatient: where the slice sits along the normal.
    position: tuple[float, float, float] | None = None
    orientation: tuple[float, float, float, float, float, float] | None = None


@dataclass(frozen=True)
class SourceSeries:
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str | None
    modality: str | None
    instances: tuple[SourceInstance, ...]
