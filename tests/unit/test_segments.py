"""Segments with codes: validation, defaults, the stored form, and new DICOM UIDs."""

from __future__ import annotations

import re

import pytest

from pacs_grpc.domain import masks
from pacs_grpc.domain.errors import InvalidArgument
from pacs_grpc.domain.segments import (
    TISSUE,
    AlgorithmType,
    CodedConcept,
    Segment,
    SegmentInput,
    new_uid,
    segments,
)

LIVER = CodedConcept("10200004", "SCT", "Liver")
ANATOMY = CodedConcept("123037004", "SCT", "Anatomical Structure")
FIELD = "mask_group.segments"


def _refused(items: list[SegmentInput], *, has_model: bool = True) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as raised:
        segments(FIELD, items, has_model=has_model)
    return raised.value


def test_defaults_are_tissue_and_the_algorithm_type_follows_the_model() -> None:
    (automatic,) = segments(FIELD, [SegmentInput(1, " Liver ")], has_model=True)
    assert automatic.label == "Liver"
    assert automatic.segmented_property_category == TISSUE
    assert automatic.segmented_property_type == TISSUE
    assert CodedConcept("85756007", "SCT", "Tissue") == TISSUE
    assert automatic.algorithm_type is AlgorithmType.AUTOMATIC
    (manual,) = segments(FIELD, [SegmentInput(1, "Liver")], has_model=False)
    assert manual.algorithm_type is AlgorithmType.MANUAL


def test_declared_values_are_kept() -> None:
    (segment,) = segments(
        FIELD,
        [
            SegmentInput(
                7, "Liver", ANATOMY, LIVER, AlgorithmType.SEMIAUTOMATIC, (255, 128, 0), "left"
            )
        ],
        has_model=True,
    )
    assert segment == Segment(
        7, "Liver", ANATOMY, LIVER, AlgorithmType.SEMIAUTOMATIC, (255, 128, 0), "left"
    )


@pytest.mark.parametrize("value", [0, 256, -1])
def test_pixel_values_outside_1_to_255_are_refused(value: int) -> None:
    error = _refused([SegmentInput(1, "a"), SegmentInput(value, "b")])
    assert error.field == f"{FIELD}[1].pixel_value"


def test_a_repeated_pixel_value_is_refused() -> None:
    error = _refused([SegmentInput(3, "a"), SegmentInput(4, "b"), SegmentInput(3, "c")])
    assert error.field == f"{FIELD}[2].pixel_value"


def test_at_most_255_segments() -> None:
    many = [SegmentInput(v, f"s{v}") for v in range(1, 256)]
    assert len(segments(FIELD, many, has_model=False)) == 255
    error = _refused([*many, SegmentInput(1, "extra")])
    assert error.field == FIELD


@pytest.mark.parametrize(
    ("label", "problem"),
    [("", "required"), ("x" * 65, "at most 64"), ("a\\b", "backslash"), ("a\nb", "control")],
)
def test_labels_are_bounded_dicom_text(label: str, problem: str) -> None:
    error = _refused([SegmentInput(1, label)])
    assert error.field == f"{FIELD}[0].label"
    assert problem in error.message


def test_the_retired_srt_scheme_points_to_sct() -> None:
    old = CodedConcept("T-62000", "SRT", "Liver")
    error = _refused([SegmentInput(1, "a"), SegmentInput(2, "b"), SegmentInput(3, "c", None, old)])
    assert error.field == f"{FIELD}[2].segmented_property_type.coding_scheme_designator"
    assert "retired" in error.message
    assert "SCT" in error.message


def test_unknown_schemes_are_refused_and_a_miscased_one_is_named() -> None:
    error = _refused([SegmentInput(1, "a", CodedConcept("1", "XYZ", "x"))])
    assert error.field == f"{FIELD}[0].segmented_property_category.coding_scheme_designator"
    assert "SCT" in error.message
    error = _refused([SegmentInput(1, "a", CodedConcept("C12345", "ncit", "x"))])
    assert "NCIt" in error.message


@pytest.mark.parametrize("scheme", ["SCT", "DCM", "LN", "UCUM", "FMA", "RADLEX", "NCIt"])
def test_documented_schemes_are_accepted(scheme: str) -> None:
    code = CodedConcept("123456", scheme, "Something")
    (segment,) = segments(FIELD, [SegmentInput(1, "a", code, code)], has_model=True)
    assert segment.segmented_property_type == code


@pytest.mark.parametrize(
    ("code", "part"),
    [
        (CodedConcept("", "SCT", "Liver"), "code_value"),
        (CodedConcept("10200004", "SCT", ""), "code_meaning"),
        (CodedConcept("10200004", "", "Liver"), "coding_scheme_designator"),
        (CodedConcept("T-62000", "SCT", "Liver"), "code_value"),
        (CodedConcept("1" * 65, "DCM", "Liver"), "code_value"),
        (CodedConcept("10200004", "SCT", "L" * 65), "code_meaning"),
    ],
)
def test_codes_need_value_scheme_and_meaning_within_bounds(code: CodedConcept, part: str) -> None:
    error = _refused([SegmentInput(1, "a", None, code)])
    assert error.field == f"{FIELD}[0].segmented_property_type.{part}"


def test_an_all_empty_code_means_the_default() -> None:
    (segment,) = segments(
        FIELD, [SegmentInput(1, "a", CodedConcept("", "", ""), None)], has_model=False
    )
    assert segment.segmented_property_category == TISSUE


def test_a_colour_component_outside_0_to_255_is_refused() -> None:
    error = _refused([SegmentInput(1, "a", display_color=(0, 256, 0))])
    assert error.field == f"{FIELD}[0].display_color.green"


def test_named_algorithm_types_need_a_model() -> None:
    error = _refused(
        [SegmentInput(1, "a", algorithm_type=AlgorithmType.SEMIAUTOMATIC)], has_model=False
    )
    assert error.field == f"{FIELD}[0].algorithm_type"
    (manual,) = segments(
        FIELD, [SegmentInput(1, "a", algorithm_type=AlgorithmType.MANUAL)], has_model=True
    )
    assert manual.algorithm_type is AlgorithmType.MANUAL


def test_group_fields_validate_segments_against_the_model_name() -> None:
    values = masks.group_fields(
        group_name="g", model_name="", version="", modality="CT", slice_count=3, mask_type="",
        description="", segments=[SegmentInput(2, "Liver")],
    )  # fmt: skip
    assert values.segments[0].algorithm_type is AlgorithmType.MANUAL
    with pytest.raises(InvalidArgument) as raised:
        masks.group_fields(
            group_name="g", model_name="m", version="", modality="CT", slice_count=3,
            mask_type="", description="", segments=[SegmentInput(0, "Liver")],
        )  # fmt: skip
    assert raised.value.field == "mask_group.segments[0].pixel_value"


def test_the_stored_form_round_trips() -> None:
    (segment,) = segments(
        FIELD, [SegmentInput(9, "Liver", ANATOMY, LIVER, None, (1, 2, 3), "d")], has_model=True
    )
    assert Segment.from_json(segment.to_json()) == segment
    (plain,) = segments(FIELD, [SegmentInput(9, "Liver")], has_model=False)
    assert Segment.from_json(plain.to_json()) == plain


_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def test_new_uids_are_valid_unique_and_under_the_root() -> None:
    default = new_uid()
    assert default.startswith("2.25.")
    assert _UID.match(default)
    assert len(default) <= 64
    assert new_uid() != default
    root = "1.2.826.0.1.3680043.10.999"
    rooted = [new_uid(root) for _ in range(200)]
    assert len(set(rooted)) == 200
    for value in rooted:
        assert value.startswith(root + ".")
        assert _UID.match(value)
        assert len(value) <= 64
    longest = "1." + "2" * 37
    assert len(new_uid(longest)) <= 64


@pytest.mark.parametrize("root", ["1.02.3", "1..2", "abc", "1." + "2" * 38])
def test_bad_or_too_long_uid_roots_are_refused(root: str) -> None:
    with pytest.raises(ValueError, match="UID root"):
        new_uid(root)
