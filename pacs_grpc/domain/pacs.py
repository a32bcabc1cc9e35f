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
    """A series as the PACS describes it: its images with what binding mask slices needs, in the
    PACS's order (`along_normal` puts them in slice order).
    """

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str | None
    modality: str | None
    instances: tuple[SourceInstance, ...]


def along_normal(instances: tuple[SourceInstance, ...]) -> tuple[SourceInstance, ...] | None:
    """The series' images in slice order: by ImagePositionPatient along the slice normal
    (the cross product of ImageOrientationPatient's row and column directions), else by
    InstanceNumber; None when the images carry neither, so no order can be trusted.

    Ties (two images at one position) keep a stable order, by InstanceNumber then UID, so
    that every replica binds a slice_index to the same image.
    """
    reference = next((i.orientation for i in instances if i.orientation is not None), None)
    if reference is not None and all(i.position is not None for i in instances):
        normal = _cross(reference[:3], reference[3:])

        def distance(instance: SourceInstance) -> float:
            assert instance.position is not None
            return sum(p * n for p, n in zip(instance.position, normal, strict=True))

        return tuple(
            sorted(
                instances,
                key=lambda i: (distance(i), i.instance_number or 0, i.sop_instance_uid),
            )
        )
    if all(i.instance_number is not None for i in instances):
        return tuple(sorted(instances, key=lambda i: (i.instance_number or 0, i.sop_instance_uid)))
    return None


def _cross(
    a: tuple[float, float, float] | tuple[float, ...],
    b: tuple[float, float, float] | tuple[float, ...],
) -> tuple[float, float, float]:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])
