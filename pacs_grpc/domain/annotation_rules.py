"""What a valid annotation is. Every failure names the field and never echoes the value."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pacs_grpc.domain import validation
from pacs_grpc.domain.errors import InvalidArgument

# PS3.5 §9.1: components of digits without leading zeros (a lone 0 is fine), dot-separated,
# at most 64 characters. The database checks the same rule.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
MAX_UID_LENGTH = 64

# The shapes viewers draw and the results models produce. Anything else must be a vendor
# extension spelled `x-<name>` (lowercase letters, digits, `.`, `_`, `-`), so two tools never
# mean different things by one word.
ANNOTATION_TYPES = frozenset(
    {
        "point", "line", "polyline", "polygon", "rectangle", "ellipse", "circle", "angle",
        "cobb_angle", "arrow", "bidirectional", "freehand", "spline", "probe", "measurement",
        "segmentation", "text", "bounding_box",
    }
)  # fmt: skip
_EXTENSION_TYPE = re.compile(r"^x-[a-z0-9][a-z0-9._-]{0,61}$")
MAX_VIEWER_SOFTWARE = 128
MUTABLE_FIELDS = frozenset(
    {"annotation_type", "annotation_data", "measurement_values", "viewer_software"}
)


def changed_fields(current: object, changes: Mapping[str, Any]) -> tuple[str, ...]:
    """The content fields among `changes` whose value differs from the same-named attribute of
    `current` (an Annotation), in a fixed order. JSON compares by value, so writing equal JSON
    back changes nothing."""
    return tuple(
        name
        for name in sorted(MUTABLE_FIELDS)
        if name in changes and changes[name] != getattr(current, name)
    )


def created_fields(content: AnnotationContent) -> tuple[str, ...]:
    """The content fields a creation set: the required ones and those given a value."""
    return tuple(name for name in sorted(MUTABLE_FIELDS) if getattr(content, name) is not None)


def dicom_uid(field: str, value: str, *, required: bool) -> str | None:
    if not value:
        if required:
            raise InvalidArgument(field, "is required")
        return None
    if len(value) > MAX_UID_LENGTH:
        raise InvalidArgument(field, f"must be a DICOM UID of at most {MAX_UID_LENGTH} characters")
    if not _UID.match(value):
        raise InvalidArgument(
            field, "must be a DICOM UID: digits in dot-separated components, no leading zeros"
        )
    return value


def annotation_type(field: str, value: str) -> str:
    if value in ANNOTATION_TYPES or _EXTENSION_TYPE.match(value):
        return value
    raise InvalidArgument(
        field, "must be a documented type (point, line, polygon, ...) or an x-<name> extension"
    )


def json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


@dataclass(frozen=True)
class JsonLimits:
    """What an annotation's JSON may cost: its bytes, and what parsing them builds.

    Bytes alone do not bound memory: a megabyte of `[{},{},...]` is hundreds of
    thousands of Python objects on every read. Depth and element count do.
    """

    max_bytes: int
    max_depth: int = 32
    max_elements: int = 100_000


def json_shape(field: str, value: Any, limits: JsonLimits) -> None:
    """Refuse JSON nested deeper, or holding more values, than `limits` allow, and any
    number JSON cannot carry (NaN, Infinity). Iterative, so depth costs no stack."""
    elements = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        elements += 1
        if elements > limits.max_elements:
            raise InvalidArgument(field, f"must hold at most {limits.max_elements} JSON values")
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            if isinstance(item, float) and not math.isfinite(item):
                raise InvalidArgument(field, "must not contain NaN or Infinity")
            continue
        if depth > limits.max_depth:
            raise InvalidArgument(field, f"must be nested at most {limits.max_depth} levels deep")
        pending.extend((child, depth + 1) for child in children)


def json_fits(field: str, data: dict[str, Any], measurements: Any, limits: JsonLimits) -> None:
    """`annotation_data` and `measurement_values` together within `limits`."""
    json_shape(field, data, limits)
    if measurements is not None:
        json_shape(field.replace("annotation_data", "measurement_values"), measurements, limits)
    if json_size(data) + json_size(measurements) > limits.max_bytes:
        raise InvalidArgument(
            field, f"with measurement_values must be at most {limits.max_bytes} bytes of JSON"
        )


@dataclass(frozen=True)
class AnnotationContent:
    """The validated, mutable part of an annotation."""

    annotation_type: str
    annotation_data: dict[str, Any]
    measurement_values: Any
    viewer_software: str | None
    # As the edge encoded them, kept with the row (see Annotation); None: none supplied.
    annotation_data_encoded: bytes | None = None
    measurement_values_encoded: bytes | None = None


def content(
    *,
    prefix: str,
    annotation_type_value: str,
    data: dict[str, Any] | None,
    measurements: Any,
    viewer_software: str,
    limits: JsonLimits,
    data_encoded: bytes | None = None,
    measurements_encoded: bytes | None = None,
) -> AnnotationContent:
    kind = annotation_type(f"{prefix}.annotation_type", annotation_type_value)
    if data is None:
        raise InvalidArgument(f"{prefix}.annotation_data", "is required (a JSON object)")
    json_fits(f"{prefix}.annotation_data", data, measurements, limits)
    software = validation.text(
        f"{prefix}.viewer_software", viewer_software, max_length=MAX_VIEWER_SOFTWARE
    )
    return AnnotationContent(
        kind, data, measurements, software, data_encoded,
        measurements_encoded if measurements is not None else None,
    )  # fmt: skip


@dataclass(frozen=True)
class Location:
    """Where on the imaging an annotation sits."""

    study_uid: str
    series_uid: str | None
    instance_uid: str | None


def location(prefix: str, study: str, series: str, instance: str) -> Location:
    study_uid = dicom_uid(f"{prefix}.study_uid", study, required=True)
    series_uid = dicom_uid(f"{prefix}.series_uid", series, required=False)
    instance_uid = dicom_uid(f"{prefix}.instance_uid", instance, required=False)
    if instance_uid is not None and series_uid is None:
        raise InvalidArgument(f"{prefix}.series_uid", "is required when instance_uid is given")
    assert study_uid is not None
    return Location(study_uid, series_uid, instance_uid)


def etag(field: str, value: str) -> int | None:
    """The row version an etag names; None when the client sent none."""
    if not value:
        return None
    if not re.fullmatch(r"v[1-9][0-9]{0,18}", value):
        raise InvalidArgument(field, "is not an etag this service issued")
    return int(value[1:])


def expected_version(request_etag: str, resource_etag: str) -> int | None:
    """The row version a write is conditional on, from the request's or the resource's etag.

    Both given and different is a client bug that must not pick one silently.
    """
    if request_etag and resource_etag and request_etag != resource_etag:
        raise InvalidArgument("annotation.etag", "differs from the request's etag; send one")
    if resource_etag:
        return etag("annotation.etag", resource_etag)
    return etag("etag", request_etag)
