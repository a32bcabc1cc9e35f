"""A mask group's segments, and label maps: slices whose pixel values name those segments.

    liver = segment(1, "Liver", type=("10200004", "SCT", "Liver"), color=(221, 130, 101))
    lesion = segment(2, "Lesion", category=("49755003", "SCT", "Morphologically Altered Structure"),
                     type=("52988006", "SCT", "Lesion"))
    pacs.upload_mask_group(annotation_id, segments=[liver, lesion], label_maps=volume)

`volume` is a (slices, rows, cols) uint8 array: each slice is sent as an 8-bit greyscale PNG,
pixel value = the segment's pixel_value, 0 = background. The server validates the codes (and
fills the defaults: category and type SCT 85756007 "Tissue"); this module checks only what it
can say better here, such as a pixel value that no segment declares.

A segment can also come from a spec (JSON or TOML, see `segments_from_spec`), which is what
`pacs masks push --segments FILE` reads.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pacs.client.png import PNG_SIGNATURE, _numpy
from pacs.v1 import mask_pb2

if TYPE_CHECKING:
    import numpy.typing as npt

Code = mask_pb2.CodedConcept | tuple[str, str, str] | Mapping[str, str]
"""A coded concept: the message, (code_value, scheme, meaning), or a mapping with the proto's
field names (code_value, coding_scheme_designator, code_meaning) or short ones (value, scheme,
meaning)."""

Color = mask_pb2.RgbColor | tuple[int, int, int] | Sequence[int] | Mapping[str, int] | str
"""A display colour: the message, (red, green, blue) each 0-255, a mapping with red, green and
blue, or "#rrggbb"."""

ALGORITHM_TYPES: Mapping[str, mask_pb2.SegmentAlgorithmType.ValueType] = {
    "automatic": mask_pb2.SEGMENT_ALGORITHM_TYPE_AUTOMATIC,
    "semiautomatic": mask_pb2.SEGMENT_ALGORITHM_TYPE_SEMIAUTOMATIC,
    "manual": mask_pb2.SEGMENT_ALGORITHM_TYPE_MANUAL,
}

_HEX_COLOR = re.compile(r"^#([0-9a-fA-F]{6})$")
_SPEC_KEYS = {
    "pixel_value", "label", "category", "type", "segmented_property_category",
    "segmented_property_type", "color", "display_color", "algorithm", "algorithm_type",
    "description",
}  # fmt: skip


def segment(
    pixel_value: int,
    label: str,
    *,
    category: Code | None = None,
    type: Code | None = None,
    color: Color | None = None,
    algorithm: str | mask_pb2.SegmentAlgorithmType.ValueType | None = None,
    description: str = "",
) -> mask_pb2.Segment:
    """One declared segment. `algorithm` is "automatic", "semiautomatic" or "manual" (default:
    automatic when the group names a model, else manual, decided by the server)."""
    if isinstance(pixel_value, bool) or not isinstance(pixel_value, int):
        raise TypeError(f"pixel_value must be an int, not {pixel_value!r}")
    if not 1 <= pixel_value <= 255:
        raise ValueError(f"segment {label!r}: pixel_value must be between 1 and 255")
    if not label:
        raise ValueError(f"segment {pixel_value}: a label is required")
    declared = mask_pb2.Segment(pixel_value=pixel_value, label=label, description=description)
    if category is not None:
        declared.segmented_property_category.CopyFrom(coded(category))
    if type is not None:
        declared.segmented_property_type.CopyFrom(coded(type))
    if color is not None:
        declared.display_color.CopyFrom(rgb(color))
    if algorithm is not None:
        declared.algorithm_type = algorithm_type(algorithm)
    return declared


def coded(value: Code) -> mask_pb2.CodedConcept:
    if isinstance(value, mask_pb2.CodedConcept):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - {
            "code_value", "coding_scheme_designator", "code_meaning", "value", "scheme", "meaning",
        }  # fmt: skip
        if unknown:
            raise ValueError(f"unknown code field(s): {', '.join(sorted(unknown))}")
        return mask_pb2.CodedConcept(
            code_value=str(value.get("code_value", value.get("value", ""))),
            coding_scheme_designator=str(
                value.get("coding_scheme_designator", value.get("scheme", ""))
            ),
            code_meaning=str(value.get("code_meaning", value.get("meaning", ""))),
        )
    if isinstance(value, str) or len(value) != 3:
        raise ValueError(f"a code is (code_value, scheme, meaning), not {value!r}")
    code_value, scheme, meaning = value
    return mask_pb2.CodedConcept(
        code_value=str(code_value), coding_scheme_designator=str(scheme), code_meaning=str(meaning)
    )


def rgb(value: Color) -> mask_pb2.RgbColor:
    if isinstance(value, mask_pb2.RgbColor):
        return value
    if isinstance(value, str):
        match = _HEX_COLOR.match(value)
        if match is None:
            raise ValueError(f"a colour is #rrggbb or (red, green, blue), not {value!r}")
        red, green, blue = bytes.fromhex(match.group(1))
        return mask_pb2.RgbColor(red=red, green=green, blue=blue)
    if isinstance(value, Mapping):
        parts = [value.get(name, 0) for name in ("red", "green", "blue")]
    else:
        parts = list(value)
    if len(parts) != 3 or not all(
        isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 255 for p in parts
    ):
        raise ValueError(f"a colour is three integers 0-255, not {value!r}")
    return mask_pb2.RgbColor(red=parts[0], green=parts[1], blue=parts[2])


def algorithm_type(
    value: str | mask_pb2.SegmentAlgorithmType.ValueType,
) -> mask_pb2.SegmentAlgorithmType.ValueType:
    if isinstance(value, int):
        return mask_pb2.SegmentAlgorithmType.ValueType(value)
    name = value.strip().lower().removeprefix("segment_algorithm_type_")
    if name not in ALGORITHM_TYPES:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHM_TYPES)}, not {value!r}")
    return ALGORITHM_TYPES[name]


def segments_from_spec(
    spec: Mapping[str, Any] | Sequence[Mapping[str, Any]],
) -> list[mask_pb2.Segment]:
    """Segments from parsed JSON or TOML: a list of tables, or a table with `segments` (TOML's
    `[[segments]]`). Each has pixel_value and label, and optionally category and type (a code
    as [code_value, scheme, meaning] or a table), color ([r, g, b] or "#rrggbb"), algorithm
    and description. The proto's own JSON field names are accepted too."""
    items = spec.get("segments") if isinstance(spec, Mapping) else spec
    if not isinstance(items, Sequence) or isinstance(items, str) or not items:
        raise ValueError("a segment spec is a non-empty list of segments (or [[segments]])")
    declared = []
    for position, item in enumerate(items):
        if not isinstance(item, Mapping):
            # A spec is data from a file: its mistakes are ValueErrors, as for the JSON itself.
            raise ValueError(f"segment {position}: must be a table of fields")  # noqa: TRY004
        unknown = set(item) - _SPEC_KEYS
        if unknown:
            raise ValueError(f"segment {position}: unknown field(s) {', '.join(sorted(unknown))}")
        try:
            declared.append(
                segment(
                    item.get("pixel_value"),  # type: ignore[arg-type]
                    str(item.get("label", "")),
                    category=_spec_code(item, "category", "segmented_property_category"),
                    type=_spec_code(item, "type", "segmented_property_type"),
                    color=item.get("color", item.get("display_color")),
                    algorithm=item.get("algorithm", item.get("algorithm_type")),
                    description=str(item.get("description", "")),
                )
            )
        except (TypeError, ValueError) as error:
            raise ValueError(f"segment {position}: {error}") from None
    check_distinct(declared)
    return declared


def check_distinct(declared: Sequence[mask_pb2.Segment]) -> None:
    seen: set[int] = set()
    for item in declared:
        if item.pixel_value in seen:
            raise ValueError(f"two segments have pixel_value {item.pixel_value}")
        seen.add(item.pixel_value)


def _spec_code(item: Mapping[str, Any], short: str, long: str) -> Code | None:
    value = item.get(short, item.get(long))
    if value is None:
        return None
    if isinstance(value, list):
        return tuple(value)
    return value  # type: ignore[no-any-return]


def label_map_slices(
    label_maps: npt.ArrayLike | Iterable[npt.ArrayLike] | Mapping[int, npt.ArrayLike],
    declared: Sequence[mask_pb2.Segment],
) -> Iterable[tuple[int, Any]]:
    """(slice index, 2-D uint8 array) of each label map, every pixel value checked against the
    declared segments. A 3-D array is (slices, rows, cols); a mapping gives slice indexes."""
    np = _numpy()
    allowed = np.zeros(256, dtype=bool)
    allowed[0] = True
    for item in declared:
        allowed[item.pixel_value] = True
    if isinstance(label_maps, Mapping):
        items: Iterable[tuple[int, Any]] = label_maps.items()
    else:
        array = np.asarray(label_maps) if hasattr(label_maps, "__array__") else None
        if array is not None and array.ndim != 3:
            raise ValueError(
                f"label maps must be a (slices, rows, cols) array, not shape {array.shape}"
            )
        items = enumerate(array if array is not None else label_maps)  # type: ignore[arg-type]
    checked = []
    for index, given in items:
        image = np.asarray(given)
        if image.dtype == np.bool_:
            image = image.astype(np.uint8)
        if image.dtype != np.uint8:
            raise TypeError(
                f"slice {index}: a label map must be uint8 (pixel value = segment), "
                f"not {image.dtype}"
            )
        if image.ndim != 2:
            raise ValueError(f"slice {index}: a label map is 2-D, not shape {image.shape}")
        present = np.flatnonzero((np.bincount(image.ravel(), minlength=256) > 0) & ~allowed)
        if present.size:
            values = ", ".join(str(v) for v in present[:5].tolist())
            raise ValueError(f"slice {index}: pixel value(s) {values} belong to no segment")
        checked.append((int(index), image))
    return checked


def png_is_label_map(head: bytes) -> bool:
    """Whether a PNG's header says 8-bit greyscale, the only form a label map slice takes."""
    if len(head) < 26 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return False
    depth, colour = struct.unpack(">BB", head[24:26])
    return bool(depth == 8 and colour == 0)
