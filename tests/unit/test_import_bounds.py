"""ImportSegmentation's own bounds, with in-memory ports (no database, storage or PACS).

* The SEG's bytes are read inside the import's concurrency bound (ImportLimits.max_concurrency):
  a read holds as much memory as the build that follows it.
* The slice order is computed in linear time on the event loop.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from pacs_grpc.adapters.clock import SystemClock
from pacs_grpc.adapters.dicom.segmentation import SegmentationCodec
from pacs_grpc.domain.access import Access
from pacs_grpc.domain.annotation import Annotation, AnnotationAccess
from pacs_grpc.domain.audit import AuditTrail
from pacs_grpc.domain.errors import InvalidArgument
from pacs_grpc.domain.identity import Caller, Principal, ProjectRole
from pacs_grpc.domain.pacs import PacsValidation, SourceInstance, SourceSeries
from pacs_grpc.services import imports
from pacs_grpc.services.imports import ImportLimits, ImportUseCases, SourceRequest
from pacs_grpc.services.pacs_checks import PacsChecks

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.2"
SEG_SERIES = "1.2.826.0.1.3680043.8.498.3"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _annotation() -> Annotation:
    now = datetime.now(UTC)
    return Annotation(
        1, 1, 7, STUDY, SERIES, None, "mask", {}, None, None, 1, now, now
    )  # fmt: skip


class _Annotations:
    async def get_with_access(self, conn: Any, annotation_id: int, user_id: int, **_: bool) -> Any:
        return AnnotationAccess(_annotation(), ProjectRole.OWNER, True)


class _Database:
    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[str]:
        yield "tx"

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[str]:
        yield "tx"


class _Pacs:
    """Holds every WADO-RS read until the test lets it go, counting those under way."""

    def __init__(self, series: SourceSeries | None = None) -> None:
        self.reading = 0
        self.most_reading = 0
        self.go = asyncio.Event()
        self._series = series

    async def retrieve_instance(
        self, study_uid: str, series_uid: str, sop_uid: str, *, max_bytes: int
    ) -> bytes | None:
        self.reading += 1
        self.most_reading = max(self.most_reading, self.reading)
        await self.go.wait()
        self.reading -= 1
        return b"not a DICOM file"

    async def source_series(
        self, study_uid: str, series_uid: str, *, fresh: bool = False
    ) -> SourceSeries | None:
        return self._series


def _use_cases(pacs: _Pacs, *, max_concurrency: int, checks: PacsChecks | None = None) -> Any:
    limits = ImportLimits(
        max_bytes=1 << 20,
        max_voxels=1 << 20,
        upload_ttl=timedelta(minutes=5),
        max_ttl=timedelta(hours=1),
        max_concurrency=max_concurrency,
    )
    unused = cast(Any, None)
    return ImportUseCases(
        unused, masks=unused, annotations=cast(Any, _Annotations()), idempotency=unused,
        storage=unused, database=cast(Any, _Database()), deletions=unused, limits=limits,
        segmentations=SegmentationCodec(), clock=SystemClock(), pacs=cast(Any, pacs),
        pacs_checks=checks,
    )  # fmt: skip


def _call() -> Any:
    trail = AuditTrail(action="ImportSegmentation", subject="s", client_id=None, request_id="r")
    return SimpleNamespace(
        caller=Caller(Principal(subject="s", username="u"), user_id=7, platform_admin=False),
        access=Access.PROJECT_ANNOTATOR,
        audit=trail,
    )


async def test_pacs_reads_wait_for_the_import_bound() -> None:
    pacs = _Pacs()
    use_cases = _use_cases(pacs, max_concurrency=1)
    source = SourceRequest("pacs", STUDY, SEG_SERIES, "1.2.826.0.1.3680043.8.498.4")
    calls = [
        asyncio.create_task(
            use_cases.import_segmentation(
                _call(), 1, source, group_name="", description="", request_id=""
            )
        )
        for _ in range(3)
    ]
    for _ in range(20):
        await asyncio.sleep(0)
    assert pacs.reading == 1  # the others wait for the bound before reading anything
    pacs.go.set()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, InvalidArgument) for o in outcomes)  # the bytes are no SEG
    assert pacs.most_reading == 1


def _instance(k: int) -> SourceInstance:
    return SourceInstance(
        f"1.2.826.0.1.3680043.8.498.100.{k}", "1.2.840.10008.5.1.4.1.1.2", 4, 3,
        instance_number=k, position=(0.0, 0.0, float(-k)), orientation=AXIAL,
    )  # fmt: skip


async def test_the_slice_order_builds_its_set_of_placed_images_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    count = 200
    series = SourceSeries(STUDY, SERIES, None, "CT", tuple(_instance(k) for k in range(count)))
    pacs = _Pacs(series)
    checks = PacsChecks(cast(Any, pacs), PacsValidation.WARN)
    use_cases = _use_cases(pacs, max_concurrency=1, checks=checks)
    # Half the SEG's images are in the series, half are not (warn mode keeps them at the end).
    in_seg = [f"1.2.826.0.1.3680043.8.498.100.{k}" for k in range(0, 2 * count, 2)]
    seg = SimpleNamespace(
        source_series_uid=SERIES,
        label_maps={uid: np.zeros((4, 3), np.uint8) for uid in in_seg},
    )
    built: list[int] = []

    def counted(items: Iterable[Any] = ()) -> set[Any]:
        built.append(1)
        return builtins.set(items)

    monkeypatch.setattr(imports, "set", counted, raising=False)
    order, modality = await use_cases._slice_order(_annotation(), seg)
    assert len(built) <= 2  # not once per slice
    assert sorted(order) == sorted(in_seg)
    # The series' images first, along the normal (z falls as k grows), then the others.
    placed = [f"1.2.826.0.1.3680043.8.498.100.{k}" for k in range(count - 2, -1, -2)]
    assert order[: len(placed)] == placed
    assert modality == "CT"
