"""A mask group's stored PNG slices as one DICOM Segmentation (ExportMaskGroup's build)."""

from __future__ import annotations

import numpy as np

from pacs_grpc.adapters.dicom.segmentation import build_segmentation
from pacs_grpc.adapters.images import decode_png_label_map
from pacs_grpc.domain.errors import FailedPrecondition
from pacs_grpc.domain.exports import SegmentationBuild

CONTENT_LABEL = "SEGMENTATION"


def write_segmentation(build: SegmentationBuild) -> bytes:
    """Decode every slice into its label map and build the SEG; CPU-bound, for a worker thread.

    A slice may hold no more pixels than the voxel limit, checked before it is decoded.
    """
    label_maps: dict[str, np.ndarray] = {}
    for item in build.slices:
        pixels = decode_png_label_map(
            item.png, slice_index=item.slice_index, max_pixels=build.max_voxels
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
        content_label=CONTENT_LABEL,
        content_creator=build.content_creator,
        model_name=build.model_name,
        model_version=build.model_version,
        max_voxels=build.max_voxels,
    )
