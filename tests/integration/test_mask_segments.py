"""Segments with codes on the real server: created with a group, returned by Get and List,
part of the idempotency fingerprint, and refused naming the field."""

from __future__ import annotations

import uuid

import grpc
import pytest
from grpc import aio
from pacs.v1 import (
    mask_pb2,
    mask_pb2_grpc,
)

from pacs_devstack.stack import LocalStack
from tests.support.projects import ANNOTATOR, create_annotation, new_team
from tests.support.users import ApiUser, unique_name

SCT = "SCT"
ANATOMY = mask_pb2.CodedConcept(
    code_value="123037004", coding_scheme_designator=SCT, code_meaning="Anatomical Structure"
)
TISSUE = mask_pb2.CodedConcept(
    code_value="85756007", coding_scheme_designator=SCT, code_meaning="Tissue"
)


@pytest.fixture(scope="module")
def masks(channel: aio.Channel) -> mask_pb2_grpc.MaskServiceAsyncStub:
    return mask_pb2_grpc.MaskServiceStub(channel)


@pytest.fixture(scope="module")
async def writer_and_annotation(
    live_stack: LocalStack, channel: aio.Channel
) -> tuple[ApiUser, int]:
    assert live_stack.issuer is not None
    team = await new_team(
        channel, live_stack.issuer, unique_name("segments"), {"segmenter": ANNOTATOR}
    )
    writer = team["segmenter"]
    annotation_id = await create_annotation(
        channel, writer, team.project_id, "1.2.840.99", {"model": "organs"},
        series_uid="1.2.840.99.1",
    )  # fmt: skip
    return writer, annotation_id


def _segments() -> list[mask_pb2.Segment]:
    return [
        mask_pb2.Segment(
            pixel_value=1, label="Liver", segmented_property_category=ANATOMY,
            segmented_property_type=mask_pb2.CodedConcept(
                code_value="10200004", coding_scheme_designator=SCT, code_meaning="Liver"
            ),
            display_color=mask_pb2.RgbColor(red=221, green=130, blue=101),
        ),
        mask_pb2.Segment(
            pixel_value=2, label="Spleen", segmented_property_category=ANATOMY,
            segmented_property_type=mask_pb2.CodedConcept(
                code_value="78961009", coding_scheme_designator=SCT, code_meaning="Spleen"
            ),
            algorithm_type=mask_pb2.SEGMENT_ALGORITHM_TYPE_SEMIAUTOMATIC,
            description="corrected by hand",
        ),
        # Category and type left out: Tissue; algorithm type left out: AUTOMATIC (a model).
        mask_pb2.Segment(pixel_value=200, label="Other"),
    ]  # fmt: skip


def _request(annotation_id: int, segments: list[mask_pb2.Segment], **extra: str) -> (
    mask_pb2.CreateMaskGroupRequest
):  # fmt: skip
    return mask_pb2.CreateMaskGroupRequest(
        annotation_id=annotation_id,
        mask_group=mask_pb2.MaskGroup(
            group_name="organs", model_name="TotalSegmentator", version="2.4", modality="CT",
            slice_count=8, segments=segments,
        ),
        **extra,
    )  # fmt: skip


async def test_segments_round_trip_through_create_get_and_list(
    masks: mask_pb2_grpc.MaskServiceAsyncStub, writer_and_annotation: tuple[ApiUser, int]
) -> None:
    writer, annotation_id = writer_and_annotation
    sent = _segments()
    created = await masks.CreateMaskGroup(_request(annotation_id, sent), metadata=writer.metadata())
    got = await masks.GetMaskGroup(
        mask_pb2.GetMaskGroupRequest(annotation_id=annotation_id, group_id=created.mask_group.id),
        metadata=writer.metadata(),
    )
    listed = await masks.ListMaskGroups(
        mask_pb2.ListMaskGroupsRequest(annotation_id=annotation_id, page_size=500),
        metadata=writer.metadata(),
    )
    (in_list,) = [g for g in listed.mask_groups if g.id == created.mask_group.id]

    expected = _segments()
    expected[0].algorithm_type = mask_pb2.SEGMENT_ALGORITHM_TYPE_AUTOMATIC
    expected[2].algorithm_type = mask_pb2.SEGMENT_ALGORITHM_TYPE_AUTOMATIC
    expected[2].segmented_property_category.CopyFrom(TISSUE)
    expected[2].segmented_property_type.CopyFrom(TISSUE)
    for group in (created.mask_group, got.mask_group, in_list):
        assert list(group.segments) == expected
    assert not got.mask_group.segments[1].HasField("display_color")
    assert got.mask_group.segments[0].HasField("display_color")


async def test_a_group_without_segments_keeps_none_and_defaults_follow_the_model(
    masks: mask_pb2_grpc.MaskServiceAsyncStub, writer_and_annotation: tuple[ApiUser, int]
) -> None:
    writer, annotation_id = writer_and_annotation
    plain = await masks.CreateMaskGroup(
        mask_pb2.CreateMaskGroupRequest(
            annotation_id=annotation_id, mask_group=mask_pb2.MaskGroup(slice_count=2)
        ),
        metadata=writer.metadata(),
    )
    assert list(plain.mask_group.segments) == []
    manual = await masks.CreateMaskGroup(
        mask_pb2.CreateMaskGroupRequest(
            annotation_id=annotation_id,
            mask_group=mask_pb2.MaskGroup(
                slice_count=2, segments=[mask_pb2.Segment(pixel_value=3, label="Drawn")]
            ),
        ),
        metadata=writer.metadata(),
    )
    (segment,) = manual.mask_group.segments
    assert segment.algorithm_type == mask_pb2.SEGMENT_ALGORITHM_TYPE_MANUAL
    assert segment.segmented_property_type == TISSUE


async def test_the_idempotency_fingerprint_covers_segments(
    masks: mask_pb2_grpc.MaskServiceAsyncStub, writer_and_annotation: tuple[ApiUser, int]
) -> None:
    writer, annotation_id = writer_and_annotation
    request_id = f"segments-{uuid.uuid4().hex}"
    first = await masks.CreateMaskGroup(
        _request(annotation_id, _segments(), request_id=request_id), metadata=writer.metadata()
    )
    again = await masks.CreateMaskGroup(
        _request(annotation_id, _segments(), request_id=request_id), metadata=writer.metadata()
    )
    assert again.mask_group.id == first.mask_group.id
    assert list(again.mask_group.segments) == list(first.mask_group.segments)
    changed = _segments()
    changed[2].label = "Something else"
    with pytest.raises(aio.AioRpcError) as raised:
        await masks.CreateMaskGroup(
            _request(annotation_id, changed, request_id=request_id), metadata=writer.metadata()
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (raised.value.details() or "").startswith("request_id:")


def _with(position: int, **changes: object) -> list[mask_pb2.Segment]:
    segments = _segments()
    for name, value in changes.items():
        if isinstance(value, mask_pb2.CodedConcept):
            getattr(segments[position], name).CopyFrom(value)
        else:
            setattr(segments[position], name, value)
    return segments


@pytest.mark.parametrize(
    ("segments", "field", "words"),
    [
        (
            _with(2, segmented_property_type=mask_pb2.CodedConcept(
                code_value="T-62000", coding_scheme_designator="SRT", code_meaning="Liver"
            )),
            "mask_group.segments[2].segmented_property_type.coding_scheme_designator",
            "use SCT",
        ),
        (_with(1, pixel_value=1), "mask_group.segments[1].pixel_value", "earlier segment"),
        (_with(0, pixel_value=0), "mask_group.segments[0].pixel_value", "between 1 and 255"),
        (_with(2, pixel_value=256), "mask_group.segments[2].pixel_value", "between 1 and 255"),
        (_with(1, label=""), "mask_group.segments[1].label", "required"),
        (_with(0, algorithm_type=7), "mask_group.segments[0].algorithm_type", "known"),
    ],
)  # fmt: skip
async def test_refusals_name_the_field_and_create_nothing(
    masks: mask_pb2_grpc.MaskServiceAsyncStub,
    writer_and_annotation: tuple[ApiUser, int],
    segments: list[mask_pb2.Segment],
    field: str,
    words: str,
) -> None:
    writer, annotation_id = writer_and_annotation
    before = await masks.ListMaskGroups(
        mask_pb2.ListMaskGroupsRequest(annotation_id=annotation_id, page_size=500),
        metadata=writer.metadata(),
    )
    with pytest.raises(aio.AioRpcError) as raised:
        await masks.CreateMaskGroup(_request(annotation_id, segments), metadata=writer.metadata())
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = raised.value.details() or ""
    assert details.startswith(f"{field}:")
    assert words in details
    after = await masks.ListMaskGroups(
        mask_pb2.ListMaskGroupsRequest(annotation_id=annotation_id, page_size=500),
        metadata=writer.metadata(),
    )
    assert len(after.mask_groups) == len(before.mask_groups)
