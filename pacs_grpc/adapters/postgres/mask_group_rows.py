"""A mask group row as every group query reads it: its columns, in order, and the MaskGroup
they make."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg.rows import kwargs_row

from pacs_grpc.domain.masks import MaskGroup
from pacs_grpc.domain.review import Review, ReviewState
from pacs_grpc.domain.segments import Segment

# A group row's columns, in the order _group reads them; every one is annotation_mask_group's but
# completed_slices, counted when read.
GROUP_NAMES = (
    "id", "annotation_id", "group_name", "model_name", "version", "modality", "slice_count",
    "mask_type", "description", "created_by", "created_at", "updated_at", "completed_slices",
    "segments", "review_state", "reviewed_by", "reviewed_at", "review_comment", "lineage_id",
    "version_number", "supersedes_group_id", "is_current", "inference_parameters",
    "input_series_uid", "client_id", "deleted_at",
)  # fmt: skip
_COMPLETED_SLICES = (
    "(select count(*) from annotation_mask m where m.mask_group_id = g.id)::int as completed_slices"
)
GROUP_COLUMNS = ", ".join(
    _COMPLETED_SLICES if name == "completed_slices" else f"g.{name}" for name in GROUP_NAMES
)


def _segments(stored: list[dict[str, Any]]) -> tuple[Segment, ...]:
    return tuple(Segment.from_json(item) for item in stored)


def _group(
    *, segments: list[dict[str, Any]], review_state: str, reviewed_by: int | None,
    reviewed_at: datetime | None, review_comment: str | None, **columns: Any,
) -> MaskGroup:  # fmt: skip
    review = Review(ReviewState(review_state), reviewed_by, reviewed_at, review_comment)
    return MaskGroup(**columns, segments=_segments(segments), review=review)


def group_of_row(row: Sequence[Any]) -> MaskGroup:
    return _group(**dict(zip(GROUP_NAMES, row, strict=True)))


GROUP_ROW = kwargs_row(_group)
