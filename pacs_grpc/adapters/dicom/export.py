"""A mask group's stored PNG slices as one DICOM Segmentation (ExportMaskGroup's build)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pacs_grpc.adapters.dicom.segmentation import build_segmentation
from pacs_grpc.adapters.images import decode_png_label_map
from pacs_grpc.domain.errors import FailedPrecondition, ResourceExhausted
from pacs_grpc.domain.exports import SegmentationBuild

CONTENT_LABEL = "SEGMENTATION"


def content_label(review_state: str) -> str:
    """The SEG's Content Label (CS, at most 16 characters) says which review state was exported,
    so a PACS viewer shows a draft as a draft: SEG_APPROVED, SEG_DRAFT, ..."""
    return f"SEG_{review_state.upper()}"[:16]


def algorithm_parameters(inference: Mapping[str, Any] | None) -> dict[str, str] | None:
    """Inference parameters as the SEG's AlgorithmParameters: text values as they are, others
    as compact JSON (highdicom writes them as `name=value` pairs)."""
    if not inference:
        return None
    return {
        name: value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        for name, value in inference.items()
    }


def series_description(group_name: str | None, review_state: str) -> str:
    """The SEG's Series Description (LO, at most 64 characters), ending in its review state.
    A backslash would split the value in two (LO's value separator), hiding the state from
    viewers that show the first value only."""
    suffix = f" ({review_state.upper()})"
    name = (group_name or "Segmentation").replace("\\", "/")
    return name[: 64 - len(suffix)] + suffix


def write_segmentation(build: SegmentationBuild) -> bytes:
    """Decode every slice into its label map and build the SEG; CPU-bound, for a worker thread.

    Each slice must be exactly its source image's size (Rows x Columns from the PACS, not the
    width and height the client recorded), and all of them together within the voxel limit,
    both checked on the PNG headers before any slice is decoded.
    """
    sizes = _sizes(build.source_metadata)
    expected: list[tuple[int, int]] = []
    for item in build.slices:
        size = sizes.get(item.sop_instance_uid)
        if size is None:
            raise FailedPrecondition(
                f"slice {item.slice_index} is bound to an image not in the series, "
                "or one whose metadata lacks its size (Rows, Columns)"
            )
        expected.append(size)
    voxels = max(len(build.segments), 1) * sum(r * c for r, c in expected)
    if voxels > build.max_voxels:
        raise ResourceExhausted(
            f"the segmentation would hold {voxels} voxels (slices x rows x columns x "
            f"segments); the limit is {build.max_voxels}"
        )
    label_maps: dict[str, np.ndarray] = {}
    for item, size in zip(build.slices, expected, strict=True):
        pixels = decode_png_label_map(
            item.png,
            slice_index=item.slice_index,
            max_pixels=build.max_voxels,
            expected_size=size,
        )
        if item.label_value is not None:
            pixels = (pixels != 0).astype(np.uint8) * np.uint8(item.label_value)
        if item.sop_instance_uid in label_maps:
            raise FailedPrecondition(
                f"slice {item.slice_index} is bound to the same image as another slice"
            )
        label_maps[item.sop_instance_uid] = pixels
    return build_segmentation(
        build.source_metadata,
        label_maps,
        build.segments,
        series_uid=build.series_uid,
        sop_uid=build.sop_uid,
        series_number=build.series_number,
        content_label=content_label(build.review_state),
        series_description=series_description(build.group_name, build.review_state),
        content_creator=build.content_creator,
        model_name=build.model_name,
        model_version=build.model_version,
        model_parameters=algorithm_parameters(build.inference_parameters),
        max_voxels=build.max_voxels,
    )


def _sizes(metadata: Sequence[Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """SOP Instance UID -> (Rows, Columns) of each instance in the series' DICOM JSON."""
    sizes: dict[str, tuple[int, int]] = {}
    for item in metadata:
        uid, rows, columns = (_first(item, tag) for tag in ("00080018", "00280010", "00280011"))
        try:
            size = (int(str(rows)), int(str(columns)))
        except (TypeError, ValueError):
            continue
        if uid is not None and size[0] > 0 and size[1] > 0:
            sizes[str(uid)] = size
    return sizes


def _first(item: Mapping[str, Any], tag: str) -> object:
    element = item.get(tag)
    if isinstance(element, Mapping):
        values = element.get("Value")
        if isinstance(values, list) and values:
            return values[0]
    return None
