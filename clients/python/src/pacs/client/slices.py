"""The slices of a mask group about to be uploaded: from a folder of images, arrays or bytes.

A slice is declared before it is uploaded (size and MD5 go into the ticket request, and storage
and the server hold the upload to them), so each source is read once up front to measure it.
Files are read again when they are uploaded, so a series never has to fit in memory.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pacs.client.png import encode_png, png_dimensions

if TYPE_CHECKING:
    import numpy.typing as npt

PNG = "image/png"
_TRAILING_NUMBER = re.compile(r"(\d+)$")
_READ_CHUNK = 1 << 20
_HEAD = 64


@dataclass(frozen=True)
class Slice:
    """One slice image: what the ticket request declares, and how to get its bytes."""

    index: int
    size: int
    md5: str
    width: int
    height: int
    read: Callable[[], bytes] = field(repr=False)
    content_type: str = PNG
    label_name: str = ""
    sop_instance_uid: str = ""
    # The first bytes, enough for a PNG's header (IHDR), to check a slice without reading it.
    head: bytes = field(default=b"", repr=False)


def from_bytes(index: int, data: bytes, *, content_type: str = PNG, label_name: str = "") -> Slice:
    width, height = png_dimensions(data) or (0, 0)
    return Slice(
        index=index, size=len(data), md5=hashlib.md5(data).hexdigest(),  # noqa: S324 - storage's ETag
        width=width, height=height, read=lambda: data, content_type=content_type,
        label_name=label_name, head=data[:_HEAD],
    )  # fmt: skip


def from_arrays(
    arrays: Iterable[npt.ArrayLike] | Mapping[int, npt.ArrayLike], *, label_name: str = ""
) -> list[Slice]:
    """Slices encoded as PNG from 2-D arrays: a sequence (or a 3-D array) is slices 0, 1, …;
    a mapping gives each array its slice index."""
    items = arrays.items() if isinstance(arrays, Mapping) else enumerate(arrays)
    return [from_bytes(index, encode_png(array), label_name=label_name) for index, array in items]


def from_directory(directory: Path | str, *, pattern: str = "*.png") -> list[Slice]:
    """The images in `directory` matching `pattern`, each the slice its name ends with:
    `0007.png`, `slice_7.png` and `7.png` are all slice 7."""
    folder = Path(directory)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a directory: {folder}")
    slices: dict[int, Slice] = {}
    names: dict[int, str] = {}
    for path in sorted(folder.glob(pattern)):
        if not path.is_file():
            continue
        index = slice_index_of(path)
        if index in names:
            raise ValueError(f"{names[index]} and {path.name} are both slice {index}")
        names[index] = path.name
        slices[index] = _file_slice(path, index)
    if not slices:
        raise ValueError(f"no files matching {pattern} in {folder}")
    return [slices[i] for i in sorted(slices)]


def slice_index_of(path: Path) -> int:
    match = _TRAILING_NUMBER.search(path.stem)
    if match is None:
        raise ValueError(f"{path.name}: the file name must end with the slice index (0007.png)")
    return int(match.group(1))


def _file_slice(path: Path, index: int) -> Slice:
    digest = hashlib.md5()  # noqa: S324 - storage's ETag, not security
    size = 0
    head = b""
    with path.open("rb") as file:
        while chunk := file.read(_READ_CHUNK):
            if not head:
                head = chunk[:_HEAD]
            digest.update(chunk)
            size += len(chunk)
    width, height = png_dimensions(head) or (0, 0)
    content_type = PNG if path.suffix.lower() == ".png" else "application/octet-stream"
    return Slice(
        index=index, size=size, md5=digest.hexdigest(), width=width, height=height,
        read=path.read_bytes, content_type=content_type, head=head[:_HEAD],
    )  # fmt: skip
