"""PNG slices as label maps: the 8-bit greyscale images a mask group stores, as arrays.

Pure library code on Pillow and NumPy; CPU-bound, so callers run it in a worker thread.
Errors are domain errors naming the slice by its index, never by a UID.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from pacs_grpc.domain.errors import FailedPrecondition

# Greyscale 8-bit, and 1-bit (its pixels become 0 and 1). Palette, colour and 16-bit images
# are not label maps: their values would not be segment numbers.
_LABEL_MODES = frozenset({"L", "1"})


def decode_png_label_map(
    data: bytes,
    *,
    slice_index: int,
    max_pixels: int,
    expected_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """A stored slice as a (rows, columns) uint8 array; FailedPrecondition for anything that
    is not a greyscale PNG of at most `max_pixels` pixels, or (given `expected_size`, as
    (rows, columns)) not of exactly that size. Both are checked on the PNG header, before any
    pixel is decompressed: a small PNG may inflate to gigabytes."""
    where = f"slice {slice_index}"
    try:
        with warnings.catch_warnings():
            # Pillow warns before it refuses a decompression bomb; the bound is ours.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=["PNG"])
    except Exception:  # noqa: BLE001 - Pillow raises many types for broken files
        raise FailedPrecondition(f"{where} is not a readable PNG image") from None
    width, height = image.size
    if width * height > max_pixels:
        raise FailedPrecondition(f"{where} has more than {max_pixels} pixels")
    if expected_size is not None and (height, width) != expected_size:
        rows, columns = expected_size
        raise FailedPrecondition(
            f"{where} is {width}x{height} pixels; its source image is {columns}x{rows}"
        )
    if image.mode not in _LABEL_MODES:
        raise FailedPrecondition(
            f"{where} is not an 8-bit greyscale PNG (its mode is {image.mode})"
        )
    try:
        image.load()
    except Exception:  # noqa: BLE001 - truncated or corrupt image data
        raise FailedPrecondition(f"{where} is not a readable PNG image") from None
    array = np.asarray(image, dtype=np.uint8)
    return np.ascontiguousarray(array)


def encode_png_label_map(array: np.ndarray) -> bytes:
    """A (rows, columns) uint8 label map as an 8-bit greyscale PNG: pixel value = segment."""
    if array.ndim != 2 or array.dtype != np.uint8:
        raise ValueError("a label map is a two-dimensional uint8 array")
    buffer = io.BytesIO()
    # Level 6 (zlib's default): label maps are mostly background and compress well at once;
    # higher levels cost several times the CPU for a few percent.
    Image.fromarray(np.ascontiguousarray(array), mode="L").save(
        buffer, format="PNG", compress_level=6
    )
    return buffer.getvalue()
