"""DICOM Segmentations exported from mask groups, and what the PACS said about them."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pacs_grpc.domain.segments import Segment

# The SEG's SeriesNumber: well above the scanner's own series, one more per export of a group.
SERIES_NUMBER_BASE = 9000
# What the PACS's refusal may say in a record; longer texts are cut.
MAX_REASON_LENGTH = 500


class PacsStatus(enum.Enum):
    """What became of an export's STOW-RS: NOT_REQUESTED (not sent), STORED, or FAILED, with the
    reason in pacs_failure_reason; a new export is the retry.
    """

    NOT_REQUESTED = "NOT_REQUESTED"
    STORED = "STORED"
    FAILED = "FAILED"


@dataclass(frozen=True)
class MaskGroupExport:
    """A recorded SEG built from a mask group. `object_key` and `object_version` name the exact
    stored bytes (downloads are signed for that version); the SEG's UIDs are the server's own;
    `series_number` is SERIES_NUMBER_BASE plus its place among the group's exports.
    """

    id: int
    mask_group_id: int
    object_key: str
    object_version: str | None
    size_bytes: int
    seg_series_uid: str
    seg_sop_instance_uid: str
    series_number: int
    segment_count: int
    pacs_status: PacsStatus
    pacs_failure_reason: str | None
    created_by: int | None
    created_at: datetime


@dataclass(frozen=True)
class NewExport:
    """A stored SEG and the PACS's answer, to record; the store adds id, group, creator and time."""

    object_key: str
    object_version: str | None
    size_bytes: int
    seg_series_uid: str
    seg_sop_instance_uid: str
    series_number: int
    segment_count: int
    pacs_status: PacsStatus
    pacs_failure_reason: str | None


def export_key(project_id: int, annotation_id: int, group_id: int, export_id: uuid.UUID) -> str:
    """Where an exported SEG is stored: server-made ids only, never a UID or patient data."""
    return f"exports/p{project_id}/a{annotation_id}/g{group_id}/{export_id}.dcm"


@dataclass(frozen=True)
class SliceImage:
    """One stored slice, bound to its source image."""

    slice_index: int
    sop_instance_uid: str
    png: bytes
    # Groups without declared segments: the pixel value its nonzero pixels become (the
    # segment of its label_name). None: the PNG is a label map already.
    label_value: int | None = None


@dataclass(frozen=True)
class SegmentationBuild:
    """Everything one SEG is built from; built in a worker thread."""

    source_metadata: list[dict[str, Any]]
    slices: list[SliceImage]
    segments: tuple[Segment, ...]
    series_uid: str
    sop_uid: str
    series_number: int
    content_creator: str
    model_name: str | None
    model_version: str | None
    max_voxels: int
    # The group's review state as exported (the SEG's content label and series description
    # say it), and its name.
    review_state: str
    group_name: str | None
    # The version's inference parameters: the SEG's AlgorithmParameters.
    inference_parameters: dict[str, Any] | None = None
