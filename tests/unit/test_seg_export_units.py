"""The parts of ExportMaskGroup that need no server: the PACS's answer as a record, segments of a
group without declared ones, PNG slices as label maps, and the export settings."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pacs_grpc.adapters.images import decode_png_label_map
from pacs_grpc.config import ConfigError, Settings
from pacs_grpc.domain.errors import FailedPrecondition, Unavailable
from pacs_grpc.domain.exports import PacsStatus, export_key
from pacs_grpc.domain.masks import Mask
from pacs_grpc.domain.segments import TISSUE, AlgorithmType
from pacs_grpc.services.exports import _segments, _stow
from tests.unit.test_config import VALID


class _Pacs:
    def __init__(self, refused: list[str] | None = None, *, down: bool = False) -> None:
        self._refused = refused or []
        self._down = down
        self.sent: list[bytes] = []

    async def store(self, parts: list[bytes]) -> list[str]:
        if self._down:
            raise Unavailable("the PACS is not answering")
        self.sent.extend(parts)
        return self._refused

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"an export's STOW-RS asks the PACS nothing else ({name})")


async def test_what_the_pacs_answers_becomes_the_records_status_and_reason() -> None:
    stored = _Pacs()
    assert await _stow(stored, b"seg") == (PacsStatus.STORED, None)
    assert stored.sent == [b"seg"]
    status, reason = await _stow(_Pacs(["2.25.1"]), b"seg")
    assert status is PacsStatus.FAILED
    assert reason is not None
    assert "refused" in reason
    assert "2.25.1" not in reason
    status, reason = await _stow(_Pacs(down=True), b"seg")
    assert status is PacsStatus.FAILED
    assert reason is not None
    assert "retry" in reason


def _mask(index: int, label: str | None) -> Mask:
    return Mask(index, 1, index, f"2.25.{index}", label, f"k{index}", "image/png", 1, None, 4, 4,
                datetime.now(UTC))  # fmt: skip


def test_a_group_without_segments_gets_one_tissue_segment_per_label_name() -> None:
    masks = [_mask(0, "liver"), _mask(1, "spleen"), _mask(2, "liver"), _mask(3, None)]
    segments, value_of = _segments((), masks, model="net")
    assert [(s.pixel_value, s.label) for s in segments] == [
        (1, "Segment"), (2, "liver"), (3, "spleen")
    ]  # fmt: skip
    assert value_of == {"": 1, "liver": 2, "spleen": 3}
    assert {s.segmented_property_type for s in segments} == {TISSUE}
    assert {s.algorithm_type for s in segments} == {AlgorithmType.AUTOMATIC}
    manual, _ = _segments((), masks[:1], model=None)
    assert manual[0].algorithm_type is AlgorithmType.MANUAL


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_greyscale_pngs_decode_to_label_maps_and_others_are_refused_naming_the_slice() -> None:
    labels = np.array([[0, 1, 5], [255, 0, 2]], dtype=np.uint8)
    decoded = decode_png_label_map(_png(Image.fromarray(labels)), slice_index=3, max_pixels=6)
    assert decoded.dtype == np.uint8
    assert np.array_equal(decoded, labels)
    one_bit = decode_png_label_map(
        _png(Image.fromarray(labels > 0).convert("1")), slice_index=0, max_pixels=6
    )
    assert np.array_equal(one_bit, (labels > 0).astype(np.uint8))
    with pytest.raises(FailedPrecondition, match="slice 3 has more than 5 pixels"):
        decode_png_label_map(_png(Image.fromarray(labels)), slice_index=3, max_pixels=5)
    with pytest.raises(FailedPrecondition, match="slice 4 is not an 8-bit greyscale PNG"):
        decode_png_label_map(_png(Image.new("RGB", (2, 2))), slice_index=4, max_pixels=6)
    with pytest.raises(FailedPrecondition, match="slice 5 is not a readable PNG"):
        decode_png_label_map(b"\x89PNG\r\n\x1a\nbroken", slice_index=5, max_pixels=6)


def test_export_keys_are_made_of_ids_only() -> None:
    key = export_key(3, 14, 15, uuid.UUID(int=9))
    assert key == "exports/p3/a14/g15/00000000-0000-0000-0000-000000000009.dcm"


def test_export_settings_and_the_uid_root_are_checked_at_start_up() -> None:
    defaults = Settings.from_env(VALID)
    assert (defaults.dicom_uid_root, defaults.export_max_concurrency) == ("", 2)
    assert defaults.export_max_voxels == 512 * 512 * 1000 * 8
    rooted = Settings.from_env({**VALID, "DICOM_UID_ROOT": "1.2.826.0.1.3680043.10.999"})
    assert rooted.dicom_uid_root == "1.2.826.0.1.3680043.10.999"
    with pytest.raises(ConfigError, match="DICOM_UID_ROOT"):
        Settings.from_env({**VALID, "DICOM_UID_ROOT": "1.02.3"})
    with pytest.raises(ConfigError, match="DICOM_UID_ROOT"):
        Settings.from_env({**VALID, "DICOM_UID_ROOT": "1." + "2" * 60})
    with pytest.raises(ConfigError, match="EXPORT_MAX_CONCURRENCY"):
        Settings.from_env({**VALID, "EXPORT_MAX_CONCURRENCY": "0"})
