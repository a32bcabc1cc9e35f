"""WADO-RS instance bodies: the multipart envelope split off byte for byte, and the preamble."""

from __future__ import annotations

import os
import random
import tracemalloc
from collections.abc import Iterator
from types import TracebackType
from typing import Any, cast

import pytest
import requests

from pacs_grpc.adapters.pacs.dicomweb import _retrieve, _with_preamble, first_part


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


def test_a_preamble_before_the_first_part_and_a_part_without_headers_are_split() -> None:
    body = b"ignored preamble\r\n--xyz\r\n\r\nDATA\r\n--xyz\r\nsecond\r\n--xyz--\r\n"
    assert first_part('multipart/related; boundary="xyz"', body) == b"DATA"
    with pytest.raises(ValueError, match="no complete part"):
        first_part("multipart/related; boundary=xyz", b"--xyz\r\n\r\ncut short")


class _Response:
    """A streamed WADO-RS answer, without a socket."""

    def __init__(self, content_type: str, body: bytes) -> None:
        self.headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
        self._body = body

    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        pass

    def raise_for_status(self) -> None:
        pass

    def iter_content(self, size: int) -> Iterator[bytes]:
        with memoryview(self._body) as view:
            for start in range(0, len(self._body), size):
                yield bytes(view[start : start + size])


class _Session:
    def __init__(self, response: _Response) -> None:
        self._response = response

    def get(self, url: str, **kwargs: Any) -> _Response:
        return self._response


def test_a_large_answer_is_split_holding_at_most_the_body_and_one_copy() -> None:
    size = 32 * 1024 * 1024
    part = bytes(128) + b"DICM" + os.urandom(size)
    session = cast(requests.Session, _Session(_Response(*_multipart(part))))
    tracemalloc.start()
    try:
        data = _retrieve(session, "http://pacs/x", (1.0, 1.0), max_bytes=len(part))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert data == part
    # The body as read (a bytearray grows with some slack) plus the part's copy; the stdlib
    # MIME parser took about ten times the body.
    assert peak < 2.5 * size, f"peak {peak / size:.2f}x the body"
