"""Mask groups arranged through the API, for tests whose subject is something else."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from pacs.v1 import mask_pb2

from tests.support.png import png

SIDE = 16


def one_slice_push(annotation_id: int, group_id: int) -> Iterator[mask_pb2.PushMasksRequest]:
    """A PushMasks stream storing slice 0 of the group: a 16 x 16 PNG."""
    image = png(SIDE, SIDE, 7)
    yield mask_pb2.PushMasksRequest(
        target=mask_pb2.PushTarget(annotation_id=annotation_id, group_id=group_id)
    )
    yield mask_pb2.PushMasksRequest(
        slice=mask_pb2.PushSliceHeader(
            slice_index=0, content_type="image/png", size_bytes=len(image), width=SIDE,
            height=SIDE, md5=hashlib.md5(image).hexdigest(),
        )
    )  # fmt: skip
    yield mask_pb2.PushMasksRequest(chunk=image)
