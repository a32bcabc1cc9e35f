"""PNG encoding of mask arrays (8- and 16-bit greyscale), with zlib and nothing else.

numpy is optional: `encode_png` needs it only because it takes numpy arrays
(`pip install 'pacs-extension-client[numpy]'`); `png_dimensions` never does.
"""

from __future__ import annotations

import struct
import zlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy.typing as npt

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GREYSCALE = 0


def encode_png(image: npt.ArrayLike, *, compression: int = 6) -> bytes:
    """A greyscale PNG of a 2-D array: uint8 → 8-bit, uint16 → 16-bit, bool → 8-bit 0/1.

    Values are stored as they are (label values, not display levels). Any other dtype is
    refused rather than silently converted: cast it first, knowing the range it needs.
    """
    np = _numpy()
    array = np.asarray(image)
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"a mask slice must be a non-empty 2-D array, not shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.uint8:
        depth, raw = 8, np.ascontiguousarray(array)
    elif array.dtype == np.uint16:
        # PNG stores 16-bit samples big-endian.
        depth, raw = 16, np.ascontiguousarray(array.astype(">u2")).view(np.uint8)
    else:
        raise TypeError(f"mask slices must be uint8, uint16 or bool, not {array.dtype}")
    height, width = array.shape
    rows = raw.reshape(height, -1)
    # Each scanline starts with its filter type; 0 (none) compresses masks' flat areas well.
    filtered = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1)
    header = struct.pack(">IIBBBBB", width, height, depth, _GREYSCALE, 0, 0, 0)
    return b"".join(
        (
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(filtered.tobytes(), compression)),
            _chunk(b"IEND", b""),
        )
    )


def png_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's header, or None when `data` does not start like a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:  # pragma: no cover - depends on the installation
        raise ImportError(
            "encoding arrays needs numpy: pip install 'pacs-extension-client[numpy]'"
        ) from None
    return numpy
