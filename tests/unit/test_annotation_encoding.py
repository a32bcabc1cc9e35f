"""convert.write_annotation answers with the bytes kept from the write, else encodes the JSON; its
timestamps are protobuf's own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from pacs.v1 import annotation_pb2

from pacs_grpc.api import convert
from pacs_grpc.domain.annotation import Annotation

_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _annotation(data: dict[str, Any], measurements: Any, **encoded: bytes | None) -> Annotation:
    return Annotation(
        id=1, project_id=2, user_id=3, study_uid="1.2.3", series_uid=None, instance_uid=None,
        annotation_type="point", annotation_data=data, measurement_values=measurements,
        viewer_software=None, row_version=1, created_at=_AT, updated_at=_AT,
        annotation_data_encoded=encoded.get("annotation_data_encoded"),
        measurement_values_encoded=encoded.get("measurement_values_encoded"),
    )  # fmt: skip


def _written(value: Annotation) -> annotation_pb2.Annotation:
    message = annotation_pb2.Annotation()
    convert.write_annotation(message, value)
    return message


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def test_the_kept_bytes_are_what_a_read_answers_with() -> None:
    kept = _struct({"label": "as sent", "points": [[1, 2]]})
    value = struct_pb2.Value(number_value=4.5)
    message = _written(
        _annotation(
            {"label": "the json"}, 9,
            annotation_data_encoded=kept.SerializeToString(),
            measurement_values_encoded=value.SerializeToString(),
        )
    )  # fmt: skip
    # Different from the JSON on purpose: the bytes, not the JSON, were used.
    assert message.annotation_data == kept
    assert message.measurement_values == value


def test_without_kept_bytes_the_json_is_encoded() -> None:
    message = _written(_annotation({"label": "the json", "n": None}, [1, "a"]))
    assert message.annotation_data == _struct({"label": "the json", "n": None})
    assert [v.WhichOneof("kind") for v in message.measurement_values.list_value.values] == [
        "number_value",
        "string_value",
    ]
    assert not _written(_annotation({}, None)).HasField("measurement_values")


def test_encoded_gives_the_fields_as_received_or_none() -> None:
    given = annotation_pb2.Annotation(annotation_data=_struct({"a": [True, None]}))
    data = convert.encoded(given, "annotation_data")
    assert data is not None
    assert struct_pb2.Struct.FromString(data) == given.annotation_data
    assert convert.encoded(given, "measurement_values") is None


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 12, 2, 11, 0, 0, 123456, tzinfo=UTC),
        datetime(1960, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(2026, 6, 1, 5, 4, 3, 999999, tzinfo=timezone(timedelta(hours=-5))),
        datetime(2020, 1, 1, 1, 1, 1, 5),
    ],
)
def test_timestamps_are_what_protobuf_makes_of_them(value: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(value)
    assert convert.timestamp(value) == expected


def test_fields_unknown_to_struct_and_value_are_not_kept() -> None:
    known = _struct({"a": [1, {"b": "c"}]})
    # Field 99 (varint) at the top and inside a nested Value: invisible to the JSON checks.
    hidden = b"\x98\x06\x01"
    data = struct_pb2.Struct.FromString(known.SerializeToString() + hidden)
    nested = data.fields["a"].list_value.values[1]
    nested.MergeFromString(hidden)
    given = annotation_pb2.Annotation(annotation_data=data)
    given.measurement_values.MergeFromString(
        struct_pb2.Value(number_value=2).SerializeToString() + hidden
    )

    assert len(given.annotation_data.SerializeToString()) > len(known.SerializeToString())

    kept = convert.encoded(given, "annotation_data")
    kept_measurements = convert.encoded(given, "measurement_values")
    assert kept == known.SerializeToString()
    assert kept_measurements == struct_pb2.Value(number_value=2).SerializeToString()
