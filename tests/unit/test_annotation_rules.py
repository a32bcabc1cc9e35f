from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacs_grpc.domain import annotation_rules as rules
from pacs_grpc.domain.errors import InvalidArgument

component = st.one_of(st.just("0"), st.from_regex(r"[1-9][0-9]{0,8}", fullmatch=True))
uid = st.lists(component, min_size=1, max_size=12).map(".".join).filter(lambda u: len(u) <= 64)


@given(uid)
def test_valid_uids_are_accepted(value: str) -> None:
    assert rules.dicom_uid("study_uid", value, required=True) == value


def _rejected(value: str) -> bool:
    """Rejected naming the field, without echoing the value."""
    with pytest.raises(InvalidArgument) as raised:
        rules.dicom_uid("study_uid", value, required=True)
    assert raised.value.field == "study_uid"
    assert value not in raised.value.message
    return True


@given(uid, st.data())
def test_a_leading_zero_is_rejected(value: str, data: st.DataObject) -> None:
    parts = value.split(".")
    index = data.draw(st.integers(0, len(parts) - 1))
    parts[index] = "0" + parts[index]
    mutated = ".".join(parts)
    if len(mutated) <= 64:
        assert _rejected(mutated)


@given(uid, st.data())
def test_an_empty_component_is_rejected(value: str, data: st.DataObject) -> None:
    parts = value.split(".")
    parts.insert(data.draw(st.integers(0, len(parts))), "")
    assert _rejected(".".join(parts))


@given(uid)
def test_a_trailing_or_leading_dot_is_rejected(value: str) -> None:
    assert _rejected(value + ".")
    assert _rejected("." + value)


@given(uid, st.data())
def test_a_letter_anywhere_is_rejected(value: str, data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(value)))
    letter = data.draw(st.sampled_from("aZx^ -_/"))
    assert _rejected(value[:position] + letter + value[position:])


def test_65_characters_are_rejected_64_accepted() -> None:
    accepted = "1." + "2" * 62
    assert len(accepted) == 64
    assert rules.dicom_uid("study_uid", accepted, required=True) == accepted
    assert _rejected(accepted + "3")


def test_an_instance_needs_its_series() -> None:
    with pytest.raises(InvalidArgument) as raised:
        rules.location("annotation", "1.2.3", "", "1.2.3.4")
    assert raised.value.field == "annotation.series_uid"


@pytest.mark.parametrize("kind", ["polygon", "segmentation", "x-vendor.thing", "x-ai_v2"])
def test_documented_types_and_extensions_are_accepted(kind: str) -> None:
    assert rules.annotation_type("annotation.annotation_type", kind) == kind


@pytest.mark.parametrize("kind", ["", "Polygon", "blob", "x-", "x-UPPER", "x-" + "a" * 70])
def test_other_types_are_rejected(kind: str) -> None:
    with pytest.raises(InvalidArgument):
        rules.annotation_type("annotation.annotation_type", kind)


def test_data_over_the_limit_is_rejected() -> None:
    with pytest.raises(InvalidArgument) as raised:
        rules.content(
            prefix="annotation",
            annotation_type_value="point",
            data={"x": "a" * 2000},
            measurements=None,
            viewer_software="",
            limits=rules.JsonLimits(max_bytes=1000),
        )
    assert raised.value.field == "annotation.annotation_data"


def _nested(depth: int) -> dict[str, Any]:
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return {"k": value}


LIMITS = rules.JsonLimits(max_bytes=1 << 20, max_depth=8, max_elements=1000)


def test_json_at_the_depth_limit_passes_and_one_deeper_is_refused() -> None:
    rules.json_shape("annotation.annotation_data", _nested(8), LIMITS)
    with pytest.raises(InvalidArgument) as raised:
        rules.json_shape("annotation.annotation_data", _nested(9), LIMITS)
    assert raised.value.field == "annotation.annotation_data"
    assert "8 levels" in raised.value.message


def test_deep_nesting_costs_no_stack() -> None:
    deep = rules.JsonLimits(max_bytes=1 << 20, max_depth=10_000, max_elements=100_000)
    rules.json_shape("annotation.annotation_data", _nested(5000), deep)


def test_json_with_more_values_than_allowed_is_refused() -> None:
    # The issue's example: cheap in bytes, hundreds of thousands of objects once parsed.
    rules.json_shape("f", {"k": [{}] * 998}, LIMITS)
    with pytest.raises(InvalidArgument) as raised:
        rules.json_shape("f", {"k": [{}] * 999}, LIMITS)
    assert "1000 JSON values" in raised.value.message


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(number: float) -> None:
    with pytest.raises(InvalidArgument) as raised:
        rules.json_fits("annotation.annotation_data", {"x": 1}, {"m": [number]}, LIMITS)
    assert raised.value.field == "annotation.measurement_values"


@pytest.mark.parametrize(
    ("request_etag", "resource_etag", "version"),
    [("", "", None), ("v3", "", 3), ("", "v4", 4), ("v5", "v5", 5)],
)
def test_the_etag_may_come_on_the_request_or_the_resource(
    request_etag: str, resource_etag: str, version: int | None
) -> None:
    assert rules.expected_version(request_etag, resource_etag) == version


def test_two_different_etags_are_refused() -> None:
    with pytest.raises(InvalidArgument) as raised:
        rules.expected_version("v1", "v2")
    assert raised.value.field == "annotation.etag"


@pytest.mark.parametrize(("etag", "version"), [("", None), ("v1", 1), ("v42", 42)])
def test_etags_parse(etag: str, version: int | None) -> None:
    assert rules.etag("etag", etag) == version


@pytest.mark.parametrize("etag", ["1", "v0", "v-1", "vx", "W/v1"])
def test_foreign_etags_are_rejected(etag: str) -> None:
    with pytest.raises(InvalidArgument):
        rules.etag("etag", etag)


def test_the_deepest_allowed_json_still_parses_as_protobuf() -> None:
    """MAX_ANNOTATION_JSON_DEPTH's ceiling (32) is below what protobuf refuses to parse, so a
    too-deep annotation hears the depth rule, not a bare parse error."""
    from google.protobuf import json_format, struct_pb2

    value: Any = 1
    for _ in range(31):
        value = {"k": value}
    message = struct_pb2.Struct()
    message.update({"k": value})
    parsed = struct_pb2.Struct.FromString(message.SerializeToString())
    limits = rules.JsonLimits(max_bytes=1 << 20, max_depth=32)
    data = json_format.MessageToDict(parsed)
    rules.json_shape("annotation.annotation_data", data, limits)
    with pytest.raises(InvalidArgument):
        rules.json_shape("annotation.annotation_data", {"k": data}, limits)
