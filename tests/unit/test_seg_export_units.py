"""The parts of ExportMaskGroup that need no server: the PACS's answer as a record, segments of a
group without declared ones, PNG slices as label maps, and the export settings."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
import types
import uuid
import warnings
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import config
from pydicom.valuerep import validate_value

from pacs_grpc import logs
from pacs_grpc.adapters.dicom.export import content_label, series_description, write_segmentation
from pacs_grpc.adapters.images import decode_png_label_map
from pacs_grpc.config import ConfigError, Settings
from pacs_grpc.domain.errors import FailedPrecondition, ResourceExhausted, Unavailable
from pacs_grpc.domain.exports import PacsStatus, SegmentationBuild, SliceImage, export_key
from pacs_grpc.domain.masks import Mask
from pacs_grpc.domain.segments import TISSUE, AlgorithmType, Segment
from pacs_grpc.services.exports import (
    ExportLimits,
    ExportUseCases,
    _segments,
    _stow,
    build_holding,
)
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


# -- a slice must be its source image's size, checked on the PNG header -----------------------


def _truncated_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but whose pixel data is cut off: decoding it
    would fail, so a size refusal proves the size was checked before any pixel was."""
    whole = _png(Image.new("L", (width, height)))
    return whole[: whole.index(b"IDAT") + 8]


def _source(uid: str, rows: int, columns: int) -> dict[str, Any]:
    return {
        "00080018": {"vr": "UI", "Value": [uid]},
        "00280010": {"vr": "US", "Value": [rows]},
        "00280011": {"vr": "US", "Value": [columns]},
    }


def _build(
    metadata: list[dict[str, Any]], slices: list[SliceImage], *, max_voxels: int = 10_000
) -> SegmentationBuild:
    segment = Segment(1, "Liver", TISSUE, TISSUE, AlgorithmType.MANUAL)
    return SegmentationBuild(
        source_metadata=metadata, slices=slices, segments=(segment,), series_uid="2.25.1",
        sop_uid="2.25.2", series_number=9001, content_creator="a^", model_name=None,
        model_version=None, max_voxels=max_voxels, review_state="approved", group_name="liver",
    )  # fmt: skip


def test_a_slice_of_another_size_than_its_source_image_is_refused_before_decoding() -> None:
    uid = "2.25.777001"
    build = _build([_source(uid, 2, 3)], [SliceImage(4, uid, _truncated_png(40, 40))])
    with pytest.raises(FailedPrecondition, match="slice 4 is 40x40 pixels") as refused:
        write_segmentation(build)
    assert uid not in str(refused.value)
    with pytest.raises(FailedPrecondition, match="slice 4 is 40x40 pixels"):
        decode_png_label_map(
            _truncated_png(40, 40), slice_index=4, max_pixels=10**9, expected_size=(2, 3)
        )


def test_slices_bound_to_large_source_images_are_refused_before_decoding() -> None:
    sources = [_source(f"2.25.{i}", 100, 100) for i in range(2)]
    slices = [SliceImage(i, f"2.25.{i}", _truncated_png(100, 100)) for i in range(2)]
    with pytest.raises(ResourceExhausted, match="20000 voxels"):
        write_segmentation(_build(sources, slices, max_voxels=15_000))
    unknown = [SliceImage(0, "2.25.999", _truncated_png(100, 100))]
    with pytest.raises(FailedPrecondition, match="slice 0 is bound to an image not in the series"):
        write_segmentation(_build(sources, unknown))


# -- library logs ---------------------------------------------------------------------------


def test_dicom_library_logs_and_warnings_never_reach_the_configured_handler() -> None:
    uid = f"2.25.{uuid.uuid4().int}"
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    quiet = [logging.getLogger(name) for name in ("highdicom", "pydicom")]
    levels = [logger.level for logger in quiet]
    stream = io.StringIO()
    try:
        with warnings.catch_warnings(record=True) as caught:
            logs.configure("DEBUG")
            logs.configure("DEBUG")  # idempotent: start-up may configure twice
            handler = root.handlers[0]
            assert isinstance(handler, logging.StreamHandler)
            handler.setStream(stream)
            logging.getLogger("highdicom.seg.sop").warning("frame of instance %s", uid)
            # pydicom's own validation, as when it reads a malformed value (it quotes it).
            validate_value("UI", uid + ".x", config.WARN)
            logging.getLogger("pacs_grpc.adapters.dicom").warning("ours still arrive")
        assert uid not in stream.getvalue()
        assert "ours still arrive" in stream.getvalue()
        assert [str(w.message) for w in caught if uid in str(w.message)] == []
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        for logger, old in zip(quiet, levels, strict=True):
            logger.setLevel(old)


# -- the PACS's STOW-RS and the stored object ---------------------------------------------


class _OddPacs:
    def __init__(self, error: BaseException) -> None:
        self._error = error

    async def store(self, parts: list[bytes]) -> list[str]:
        raise self._error


async def test_an_unreadable_stow_reply_is_recorded_as_failed_not_internal() -> None:
    status, reason = await _stow(_OddPacs(ValueError("bad multipart 2.25.5")), b"seg")  # type: ignore[arg-type]
    assert status is PacsStatus.FAILED
    assert reason is not None
    assert "2.25.5" not in reason


class _Storage:
    def __init__(self) -> None:
        self.stored: list[str] = []

    async def put_stream(self, key: str, chunks: Any, **_: Any) -> Any:
        async for _chunk in chunks:
            pass
        self.stored.append(key)
        return types.SimpleNamespace(version_id="v1")


class _Queue:
    def __init__(self) -> None:
        self.queued: list[str] = []

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[object]:
        yield object()

    @contextlib.asynccontextmanager
    async def autocommit(self) -> AsyncIterator[object]:
        yield object()

    async def enqueue_deletions(self, conn: object, keys: list[str]) -> None:
        self.queued.extend(keys)


def _use_cases(storage: _Storage, queue: _Queue) -> ExportUseCases[Any]:
    limits = ExportLimits(10, 1, 10, timedelta(minutes=1), timedelta(minutes=1), 10)
    return ExportUseCases(
        None, masks=queue, exports=None, idempotency=None, storage=storage,  # type: ignore[arg-type]
        database=queue, pacs=None, write=lambda build: b"", limits=limits,
    )  # fmt: skip


@pytest.mark.parametrize("error", [asyncio.CancelledError(), KeyboardInterrupt()])
async def test_a_stored_seg_whose_stow_ends_the_call_is_queued_for_deletion(
    error: BaseException,
) -> None:
    storage, queue = _Storage(), _Queue()
    uses = _use_cases(storage, queue)

    async def record(*_: Any) -> Any:
        raise AssertionError("nothing is recorded when the STOW-RS ends the call")

    with pytest.raises(type(error)):
        await uses._keep("exports/p1/a1/g1/x.dcm", b"seg", _OddPacs(error), record)  # type: ignore[arg-type]
    assert storage.stored == ["exports/p1/a1/g1/x.dcm"]
    assert queue.queued == ["exports/p1/a1/g1/x.dcm"]


async def test_a_seg_the_pacs_answered_oddly_is_recorded_as_failed() -> None:
    storage, queue = _Storage(), _Queue()
    recorded: list[tuple[Any, ...]] = []

    async def record(*args: Any) -> Any:
        recorded.append(args)
        return "export"

    pacs = _OddPacs(KeyError("reply"))
    kept = await _use_cases(storage, queue)._keep("k.dcm", b"seg", pacs, record)  # type: ignore[arg-type]
    assert str(kept) == "export"
    assert recorded[0][:2] == ("v1", PacsStatus.FAILED)
    assert queue.queued == []


# -- a build holds its permit until its thread ends ------------------------------------------


async def test_a_cancelled_export_keeps_its_build_permit_until_the_thread_ends() -> None:
    permits = asyncio.Semaphore(1)
    started, finish = threading.Event(), threading.Event()

    def work(argument: int) -> int:
        started.set()
        finish.wait(10)
        return argument * 2

    async def prepare() -> int:
        return 21

    assert await build_holding(permits, prepare, lambda n: n * 2) == 42
    assert not permits.locked()

    call = asyncio.create_task(build_holding(permits, prepare, work))
    await asyncio.to_thread(started.wait, 10)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert permits.locked(), "the permit went back while the build thread still runs"
    finish.set()
    async with asyncio.timeout(10):
        async with permits:
            pass

    async def failing() -> int:
        raise FailedPrecondition("no series")

    with pytest.raises(FailedPrecondition):
        await build_holding(permits, failing, work)
    assert not permits.locked()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (Unavailable("refused by the PACS (HTTP 400)"), "refused by the PACS (HTTP 400)"),
        (Unavailable("the PACS did not answer"), "could not be reached"),
    ],
)
async def test_a_stow_refusal_is_recorded_as_the_pacss_refusal_not_an_outage(
    error: Exception, expected: str
) -> None:
    status, reason = await _stow(_OddPacs(error), b"seg")  # type: ignore[arg-type]
    assert status is PacsStatus.FAILED
    assert reason is not None
    assert expected in reason


def test_the_seg_says_which_review_state_was_exported() -> None:
    assert content_label("approved") == "SEG_APPROVED"
    assert content_label("submitted") == "SEG_SUBMITTED"
    assert series_description("liver", "draft") == "liver (DRAFT)"
    assert series_description(None, "approved") == "Segmentation (APPROVED)"
    assert series_description("liver\\left", "draft") == "liver/left (DRAFT)"
    long = series_description("x" * 80, "rejected")
    assert (len(long), long.endswith(" (REJECTED)")) == (64, True)
