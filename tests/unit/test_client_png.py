"""PNG encoding of mask arrays and the slices made from folders and arrays."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from pacs.client.png import PNG_SIGNATURE, encode_png, png_dimensions
from pacs.client.slices import from_arrays, from_bytes, from_directory

from tests.support.png import png


def decode(data: bytes) -> tuple[int, list[list[int]]]:
    """(bit depth, rows of values) of a greyscale PNG without interlace, checking every CRC."""
    assert data.startswith(PNG_SIGNATURE)
    position = len(PNG_SIGNATURE)
    chunks: dict[bytes, bytes] = {}
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks[kind] = chunks.get(kind, b"") + body
        position += 12 + length
    assert set(chunks) == {b"IHDR", b"IDAT", b"IEND"}
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (colour, interlace) == (0, 0)
    raw = zlib.decompress(chunks[b"IDAT"])
    sample = depth // 8
    stride = 1 + width * sample
    assert len(raw) == height * stride
    rows = []
    for y in range(height):
        line = raw[y * stride : (y + 1) * stride]
        assert line[0] == 0, "filter type none"
        rows.append(
            [
                int.from_bytes(line[1 + x * sample : 1 + (x + 1) * sample], "big")
                for x in range(width)
            ]
        )
    return depth, rows


def test_uint8_round_trips_as_8_bit_greyscale() -> None:
    image = (np.arange(12 * 5, dtype=np.uint8) * 4).reshape(5, 12)
    data = encode_png(image)
    depth, rows = decode(data)
    assert depth == 8
    assert rows == image.tolist()
    assert png_dimensions(data) == (12, 5)


def test_uint16_round_trips_as_16_bit_big_endian() -> None:
    image = np.array([[0, 1, 256], [65535, 4096, 258]], dtype=np.uint16)
    depth, rows = decode(encode_png(image))
    assert depth == 16
    assert rows == image.tolist()


def test_a_non_contiguous_view_encodes_what_it_shows() -> None:
    base = np.arange(64, dtype=np.uint8).reshape(8, 8)
    view = base[::2, 1::3]
    assert decode(encode_png(view))[1] == view.tolist()


def test_bool_masks_are_stored_as_0_and_1() -> None:
    image = np.array([[True, False], [False, True]])
    depth, rows = decode(encode_png(image))
    assert (depth, rows) == (8, [[1, 0], [0, 1]])


@pytest.mark.parametrize(
    ("image", "error"),
    [
        (np.zeros((2, 2), dtype=np.float32), TypeError),
        (np.zeros((2, 2), dtype=np.int64), TypeError),
        (np.zeros((2, 2, 3), dtype=np.uint8), ValueError),
        (np.zeros(4, dtype=np.uint8), ValueError),
        (np.zeros((0, 3), dtype=np.uint8), ValueError),
    ],
)
def test_other_arrays_are_refused(image: np.ndarray, error: type[Exception]) -> None:
    with pytest.raises(error):
        encode_png(image)


def test_png_dimensions_reads_the_header_and_refuses_other_bytes() -> None:
    assert png_dimensions(png(31, 17, seed=1)) == (31, 17)
    assert png_dimensions(b"GIF89a" + b"\0" * 30) is None
    assert png_dimensions(PNG_SIGNATURE) is None


def test_slices_from_arrays_are_numbered_in_order_or_by_mapping() -> None:
    volume = np.zeros((3, 4, 5), dtype=np.uint8)
    volume[1, 2, 3] = 1
    slices = from_arrays(volume, label_name="liver")
    assert [s.index for s in slices] == [0, 1, 2]
    assert [(s.width, s.height) for s in slices] == [(5, 4)] * 3
    assert all(s.label_name == "liver" and s.content_type == "image/png" for s in slices)
    assert decode(slices[1].read())[1][2][3] == 1
    assert slices[1].md5 == hashlib.md5(slices[1].read()).hexdigest()
    sparse = from_arrays({7: volume[0], 2: volume[1]})
    assert sorted(s.index for s in sparse) == [2, 7]


def test_slices_from_a_directory_take_the_index_from_the_name(tmp_path: Path) -> None:
    images = {"0002.png": png(4, 3, 2), "slice_10.png": png(8, 6, 10), "7.png": png(2, 2, 7)}
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "notes.txt").write_text("not a slice")
    slices = from_directory(tmp_path)
    assert [s.index for s in slices] == [2, 7, 10]
    by_index = {s.index: s for s in slices}
    assert by_index[10].read() == images["slice_10.png"]
    assert (by_index[10].width, by_index[10].height) == (8, 6)
    assert by_index[10].size == len(images["slice_10.png"])
    assert by_index[10].md5 == hashlib.md5(images["slice_10.png"]).hexdigest()


def test_a_directory_with_two_files_for_one_slice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0003.png").write_bytes(png(2, 2, 3))
    (tmp_path / "slice3.png").write_bytes(png(2, 2, 3))
    with pytest.raises(ValueError, match="both slice 3"):
        from_directory(tmp_path)


def test_a_file_name_without_an_index_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mask.png").write_bytes(png(2, 2, 0))
    with pytest.raises(ValueError, match="must end with the slice index"):
        from_directory(tmp_path)


def test_an_empty_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no files matching \*\.png"):
        from_directory(tmp_path)


def test_from_bytes_measures_the_image() -> None:
    data = png(9, 4, 0)
    item = from_bytes(5, data)
    assert (item.index, item.size, item.width, item.height) == (5, len(data), 9, 4)
    assert item.read() is data
