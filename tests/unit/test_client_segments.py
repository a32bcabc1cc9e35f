"""Declared segments and label maps in the Python client: building, spec files and encoding."""

from __future__ import annotations

import struct
import tomllib
from pathlib import Path

import numpy as np
import pytest
from pacs.client.client import _slices
from pacs.client.png import encode_png
from pacs.client.segments import (
    coded,
    label_map_slices,
    png_is_label_map,
    rgb,
    segment,
    segments_from_spec,
)
from pacs.v1 import mask_pb2

from tests.unit.test_client_png import decode

LIVER = ("10200004", "SCT", "Liver")
ANATOMY = ("123037004", "SCT", "Anatomical Structure")


def test_a_segment_carries_its_codes_colour_and_algorithm() -> None:
    made = segment(
        3, "Liver", category=ANATOMY, type=LIVER, color="#dd8265", algorithm="semiautomatic",
        description="left lobe included",
    )  # fmt: skip
    assert made == mask_pb2.Segment(
        pixel_value=3,
        label="Liver",
        segmented_property_category=mask_pb2.CodedConcept(
            code_value="123037004", coding_scheme_designator="SCT",
            code_meaning="Anatomical Structure",
        ),
        segmented_property_type=mask_pb2.CodedConcept(
            code_value="10200004", coding_scheme_designator="SCT", code_meaning="Liver"
        ),
        display_color=mask_pb2.RgbColor(red=221, green=130, blue=101),
        algorithm_type=mask_pb2.SEGMENT_ALGORITHM_TYPE_SEMIAUTOMATIC,
        description="left lobe included",
    )  # fmt: skip


def test_unset_parts_stay_unset_for_the_server_defaults() -> None:
    made = segment(1, "Tumour")
    assert not made.HasField("segmented_property_category")
    assert not made.HasField("segmented_property_type")
    assert not made.HasField("display_color")
    assert made.algorithm_type == mask_pb2.SEGMENT_ALGORITHM_TYPE_UNSPECIFIED


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((0, "x"), "between 1 and 255"),
        ((256, "x"), "between 1 and 255"),
        ((1, ""), "label is required"),
    ],
)
def test_impossible_segments_are_refused_before_any_call(
    arguments: tuple[int, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        segment(*arguments)


def test_codes_and_colours_take_several_spellings() -> None:
    liver = mask_pb2.CodedConcept(
        code_value="10200004", coding_scheme_designator="SCT", code_meaning="Liver"
    )
    assert coded(LIVER) == liver
    assert coded({"value": "10200004", "scheme": "SCT", "meaning": "Liver"}) == liver
    assert coded({"code_value": "10200004", "coding_scheme_designator": "SCT",
                  "code_meaning": "Liver"}) == liver  # fmt: skip
    with pytest.raises(ValueError, match="unknown code field"):
        coded({"code": "10200004"})
    with pytest.raises(ValueError, match="code_value, scheme, meaning"):
        coded(("SCT", "10200004"))  # type: ignore[arg-type]
    assert rgb((1, 2, 3)) == rgb("#010203") == rgb({"red": 1, "green": 2, "blue": 3})
    for wrong in ((1, 2), (1, 2, 256), "#12345", (1.0, 2, 3)):
        with pytest.raises(ValueError, match="colour"):
            rgb(wrong)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="algorithm must be one of"):
        segment(1, "x", algorithm="robotic")


def test_a_toml_spec_gives_the_same_segments_as_the_calls() -> None:
    spec = tomllib.loads(
        """
        [[segments]]
        pixel_value = 1
        label = "Liver"
        category = ["123037004", "SCT", "Anatomical Structure"]
        type = ["10200004", "SCT", "Liver"]
        color = [221, 130, 101]
        algorithm = "automatic"

        [[segments]]
        pixel_value = 2
        label = "Lesion"
        type = { value = "52988006", scheme = "SCT", meaning = "Lesion" }
        """
    )
    assert segments_from_spec(spec) == [
        segment(1, "Liver", category=ANATOMY, type=LIVER, color=(221, 130, 101),
                algorithm="automatic"),
        segment(2, "Lesion", type=("52988006", "SCT", "Lesion")),
    ]  # fmt: skip
    # The same as a JSON list, with the proto's own field names.
    assert segments_from_spec(
        [{"pixel_value": 2, "label": "Lesion", "segmented_property_type": {
            "code_value": "52988006", "coding_scheme_designator": "SCT", "code_meaning": "Lesion"
        }}]
    ) == [segment(2, "Lesion", type=("52988006", "SCT", "Lesion"))]  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([], "non-empty list"),
        ({"segment": []}, "non-empty list"),
        ([{"pixel_value": 1, "label": "a", "colour": [1, 2, 3]}], "segment 0: unknown field"),
        ([{"label": "a"}], "segment 0: pixel_value must be an int"),
        ([{"pixel_value": 1, "label": "a"}, {"pixel_value": 1, "label": "b"}], "pixel_value 1"),
        ([{"pixel_value": 1, "label": "a", "type": "10200004"}], "segment 0: a code is"),
    ],
)
def test_a_wrong_spec_names_the_segment(spec: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        segments_from_spec(spec)  # type: ignore[arg-type]


def test_a_label_map_volume_becomes_one_8_bit_png_per_slice() -> None:
    volume = np.zeros((3, 5, 7), dtype=np.uint8)
    volume[0, 1:3, 2:5] = 1
    volume[1, 0, 0] = 2
    volume[2, 4, 6] = 2
    volume[2, 0, 0] = 1
    declared = [segment(1, "Liver"), segment(2, "Lesion")]
    items = _slices(None, None, None, volume, label_name="", segments=declared)
    assert [s.index for s in items] == [0, 1, 2]
    for item in items:
        depth, rows = decode(item.read())
        assert depth == 8
        assert rows == volume[item.index].tolist()
        assert (item.width, item.height) == (7, 5)
        assert item.label_name == ""
    # A mapping keeps its slice indexes; bool arrays are label maps of value 1.
    sparse = _slices(None, None, None, {4: volume[0] > 0}, label_name="", segments=declared)
    assert [s.index for s in sparse] == [4]
    assert decode(sparse[0].read())[1] == (volume[0] > 0).astype(np.uint8).tolist()


def test_label_maps_with_values_no_segment_declares_are_refused() -> None:
    volume = np.zeros((2, 4, 4), dtype=np.uint8)
    volume[1, 2, 2] = 7
    volume[1, 3, 3] = 9
    with pytest.raises(ValueError, match=r"slice 1: pixel value\(s\) 7, 9 belong to no segment"):
        label_map_slices(volume, [segment(1, "Liver")])


@pytest.mark.parametrize(
    ("maps", "error", "message"),
    [
        (np.zeros((2, 4, 4), dtype=np.uint16), TypeError, "slice 0: a label map must be uint8"),
        (np.zeros((4, 4), dtype=np.uint8), ValueError, r"\(slices, rows, cols\)"),
        ({0: np.zeros((2, 2, 2), dtype=np.uint8)}, ValueError, "slice 0: a label map is 2-D"),
    ],
)
def test_label_maps_of_the_wrong_type_or_shape_are_refused(
    maps: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        label_map_slices(maps, [segment(1, "Liver")])  # type: ignore[arg-type]


def test_arrays_with_segments_are_checked_as_label_maps() -> None:
    declared = [segment(1, "Liver")]
    with pytest.raises(ValueError, match="slice 0: pixel value"):
        _slices(
            None, [np.full((2, 2), 3, dtype=np.uint8)], None, None, label_name="", segments=declared
        )


def test_a_folder_of_slices_with_segments_must_hold_8_bit_greyscale(tmp_path: Path) -> None:
    declared = [segment(1, "Liver")]
    (tmp_path / "0000.png").write_bytes(encode_png(np.ones((4, 4), dtype=np.uint8)))
    assert [
        s.index for s in _slices(tmp_path, None, None, None, label_name="", segments=declared)
    ] == [0]
    (tmp_path / "0001.png").write_bytes(encode_png(np.ones((4, 4), dtype=np.uint16)))
    with pytest.raises(ValueError, match=r"slice\(s\) 1 are not"):
        _slices(tmp_path, None, None, None, label_name="", segments=declared)


def test_the_png_header_check_reads_depth_and_colour_type() -> None:
    eight = encode_png(np.zeros((2, 2), dtype=np.uint8))
    assert png_is_label_map(eight[:64])
    rgb_header = eight[:24] + struct.pack(">BB", 8, 2) + eight[26:]
    assert not png_is_label_map(rgb_header)
    assert not png_is_label_map(b"GIF89a" + b"\x00" * 40)
    assert not png_is_label_map(eight[:20])


def test_exactly_one_source_of_slices() -> None:
    volume = np.zeros((1, 2, 2), dtype=np.uint8)
    with pytest.raises(ValueError, match="exactly one of"):
        _slices(None, volume, None, volume, label_name="", segments=[segment(1, "a")])
