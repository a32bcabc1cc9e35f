"""WADO-RS instance bodies: the multipart envelope split off byte for byte, and the preamble."""

from __future__ import annotations

import random

import pytest

from pacs_grpc.adapters.pacs.dicomweb import _with_preamble, first_part


def _multipart(part: bytes, boundary: str = "b0und4ry-x") -> tuple[str, bytes]:
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return content_type, body


@pytest.mark.parametrize("seed", range(20))
def test_binary_parts_come_back_unchanged_whatever_line_endings_they_hold(seed: int) -> None:
    generator = random.Random(seed)
    # Pixel data is full of CR and LF bytes, alone and in pairs, and may end with them.
    part = bytes(generator.choice(b"\r\n\x00ab\xff") for _ in range(generator.randint(1, 5000)))
    part += generator.choice([b"", b"\r", b"\n", b"\r\n", b"\r\n\r\n"])
    assert first_part(*_multipart(part)) == part


def test_a_bare_file_is_taken_as_it_is_and_an_empty_multipart_is_refused() -> None:
    assert first_part("application/dicom", b"\x02\x00abc") == b"\x02\x00abc"
    with pytest.raises(ValueError, match="no part"):
        first_part("multipart/related; boundary=x", b"--x--\r\n")


def test_a_file_without_preamble_gets_one_and_others_are_left_alone() -> None:
    meta_first = b"\x02\x00\x02\x00UI\x04\x001.2\x00"
    assert _with_preamble(meta_first) == bytes(128) + b"DICM" + meta_first
    part10 = bytes(128) + b"DICM" + meta_first
    assert _with_preamble(part10) == part10
    assert _with_preamble(b"random bytes") == b"random bytes"
