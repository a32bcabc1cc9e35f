"""PACS_VALIDATE's checks (pacs_grpc.services.pacs_checks) against a fake PACS.

The fake is a port implementation, not a mock of a library: it answers from a dict of
series, counts what it was asked, and can be switched off (Unavailable).
"""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest

from pacs_grpc.domain.errors import FailedPrecondition, Unavailable
from pacs_grpc.domain.pacs import PacsValidation, SourceInstance, SourceSeries, along_normal
from pacs_grpc.services.pacs_checks import (
    INSTANCE_NOT_FOUND,
    NO_SERIES,
    PACS_UNAVAILABLE,
    SERIES_NOT_FOUND,
    SLICE_MISMATCH,
    STUDY_NOT_FOUND,
    PacsChecks,
    SliceFacts,
    SliceSource,
)

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.2"
OTHER_SERIES = "1.2.826.0.1.3680043.8.498.3"
UNKNOWN = "1.2.826.0.1.3680043.8.498.999"
# Axial slices, stored out of order: instance numbers run against the position.
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _instance(k: int, z: float, *, rows: int = 64, columns: int = 48) -> SourceInstance:
    return SourceInstance(
        sop_instance_uid=f"1.2.826.0.1.3680043.8.498.100.{k}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        rows=rows,
        columns=columns,
        instance_number=100 - k,
        position=(0.0, 0.0, z),
        orientation=AXIAL,
    )


def _series(count: int = 5) -> SourceSeries:
    instances = [_instance(k, z=-10.0 + 2.5 * k) for k in range(count)]
    random.Random(7).shuffle(instances)
    return SourceSeries(STUDY, SERIES, "1.2.3.4", "CT", tuple(instances))


class FakePacs:
    def __init__(self, series: list[SourceSeries]) -> None:
        self.series = {(s.study_uid, s.series_uid): s for s in series}
        self.calls: list[str] = []
        self.down = False

    def _ask(self, what: str) -> None:
        self.calls.append(what)
        if self.down:
            raise Unavailable("the PACS is unavailable; retry later")

    async def study_exists(self, study_uid: str) -> bool:
        self._ask("study")
        return any(study == study_uid for study, _ in self.series)

    async def series_exists(self, study_uid: str, series_uid: str) -> bool:
        self._ask("series")
        return (study_uid, series_uid) in self.series

    async def instance_exists(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        self._ask("instance")
        found = self.series.get((study_uid, series_uid))
        return found is not None and any(i.sop_instance_uid == sop_uid for i in found.instances)

    async def source_series(
        self, study_uid: str, series_uid: str, *, fresh: bool = False
    ) -> SourceSeries | None:
        self._ask("source_series(fresh)" if fresh else "source_series")
        return self.series.get((study_uid, series_uid))

    async def series_metadata(self, study_uid: str, series_uid: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def retrieve_instance(
        self, study_uid: str, series_uid: str, sop_uid: str, *, max_bytes: int
    ) -> bytes | None:
        raise NotImplementedError

    async def store(self, parts: list[bytes]) -> list[str]:
        raise NotImplementedError


def _checks(pacs: FakePacs, mode: PacsValidation) -> tuple[PacsChecks, list[str]]:
    counted: list[str] = []
    return PacsChecks(pacs, mode, on_warning=counted.append), counted


# -- references ---------------------------------------------------------------------------


async def test_a_known_instance_costs_one_query_and_passes() -> None:
    series = _series()
    pacs = FakePacs([series])
    checks, _ = _checks(pacs, PacsValidation.ENFORCE)
    lookup = await checks.look_up(STUDY, SERIES, series.instances[0].sop_instance_uid)
    checks.settle(lookup, "annotation")
    assert pacs.calls == ["instance"]


@pytest.mark.parametrize(
    ("study", "series", "instance", "field"),
    [
        (UNKNOWN, None, None, "annotation.study_uid"),
        (STUDY, UNKNOWN, None, "annotation.series_uid"),
        (UNKNOWN, SERIES, None, "annotation.study_uid"),
        (STUDY, SERIES, UNKNOWN, "annotation.instance_uid"),
        (STUDY, UNKNOWN, UNKNOWN, "annotation.series_uid"),
    ],
)
async def test_enforce_refuses_naming_the_missing_field_without_the_uid(
    study: str, series: str | None, instance: str | None, field: str
) -> None:
    checks, _ = _checks(FakePacs([_series()]), PacsValidation.ENFORCE)
    lookup = await checks.look_up(study, series, instance)
    with pytest.raises(FailedPrecondition) as refused:
        checks.settle(lookup, "annotation")
    assert refused.value.message == f"{field}: not found in the PACS"
    assert UNKNOWN not in refused.value.message


async def test_warn_logs_and_counts_then_lets_the_write_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    checks, counted = _checks(FakePacs([_series()]), PacsValidation.WARN)
    with caplog.at_level(logging.WARNING, logger="pacs_grpc.services.pacs_checks"):
        for study, series, instance in (
            (UNKNOWN, None, None),
            (STUDY, UNKNOWN, None),
            (STUDY, SERIES, UNKNOWN),
        ):
            checks.settle(await checks.look_up(study, series, instance), "annotation")
    assert counted == [STUDY_NOT_FOUND, SERIES_NOT_FOUND, INSTANCE_NOT_FOUND]
    assert len(caplog.records) == 3
    logged = " ".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert UNKNOWN not in logged
    assert STUDY not in logged


async def test_off_and_no_pacs_ask_nothing() -> None:
    pacs = FakePacs([])
    off, _ = _checks(pacs, PacsValidation.OFF)
    off.settle(await off.look_up(UNKNOWN, None, None), "annotation")
    unlinked = PacsChecks(None, PacsValidation.ENFORCE)
    assert not unlinked.active
    unlinked.settle(await unlinked.look_up(UNKNOWN, None, None), "annotation")
    assert await unlinked.slice_source(STUDY, None) == SliceSource("", None, None)
    assert pacs.calls == []


async def test_pacs_down_is_unavailable_in_enforce_and_a_counted_warning_in_warn() -> None:
    pacs = FakePacs([_series()])
    pacs.down = True
    enforce, _ = _checks(pacs, PacsValidation.ENFORCE)
    with pytest.raises(Unavailable):
        await enforce.look_up(STUDY, None, None)
    with pytest.raises(Unavailable):
        await enforce.slice_source(STUDY, SERIES)
    warn, counted = _checks(pacs, PacsValidation.WARN)
    warn.settle(await warn.look_up(STUDY, None, None), "annotation")
    assert (await warn.slice_source(STUDY, SERIES)).series is None
    assert counted == [PACS_UNAVAILABLE, PACS_UNAVAILABLE]


# -- slices -------------------------------------------------------------------------------


def test_along_normal_orders_by_position_not_by_storage_or_instance_number() -> None:
    ordered = along_normal(_series().instances)
    assert ordered is not None
    assert [i.sop_instance_uid[-1] for i in ordered] == ["0", "1", "2", "3", "4"]


def test_along_normal_follows_an_oblique_normal() -> None:
    # Rows along x, columns along (0, cos, sin): the normal is (0, -sin, cos).
    c, s = 0.8, 0.6
    tilted = (1.0, 0.0, 0.0, 0.0, c, s)
    positions = [(0.0, -s * t, c * t) for t in (3.0, -1.0, 2.0)]
    instances = tuple(
        SourceInstance(f"1.2.{k}", "1.2.840.10008.5.1.4.1.1.2", 8, 8, None, p, tilted)
        for k, p in enumerate(positions)
    )
    ordered = along_normal(instances)
    assert ordered is not None
    assert [i.sop_instance_uid for i in ordered] == ["1.2.1", "1.2.2", "1.2.0"]


def test_along_normal_falls_back_to_instance_number_then_gives_up() -> None:
    numbered = tuple(
        SourceInstance(f"1.2.{k}", "1.2.840.10008.5.1.4.1.1.2", 8, 8, n)
        for k, n in enumerate([3, 1, 2])
    )
    ordered = along_normal(numbered)
    assert ordered is not None
    assert [i.instance_number for i in ordered] == [1, 2, 3]
    bare = (SourceInstance("1.2.9", "1.2.840.10008.5.1.4.1.1.2", 8, 8),)
    assert along_normal(bare) is None


async def test_slices_without_uid_are_bound_by_position_along_the_normal() -> None:
    series = _series()
    checks, _ = _checks(FakePacs([series]), PacsValidation.ENFORCE)
    source = await checks.slice_source(STUDY, SERIES)
    bound = await checks.bind(source, [SliceFacts(i, None, 48, 64) for i in (4, 0, 2)])
    by_position = {int(i.position[2] if i.position else 0): i for i in series.instances}
    assert bound == {
        4: by_position[0].sop_instance_uid,  # z = -10 + 2.5 * 4 = 0
        0: by_position[-10].sop_instance_uid,
        2: by_position[-5].sop_instance_uid,
    }


async def test_enforce_refuses_listing_every_bad_slice_and_its_reason() -> None:
    series = _series()
    foreign = FakePacs([series, SourceSeries(STUDY, OTHER_SERIES, None, "CT", (_instance(9, 0),))])
    checks, _ = _checks(foreign, PacsValidation.ENFORCE)
    source = await checks.slice_source(STUDY, SERIES)
    first = series.instances[0].sop_instance_uid
    with pytest.raises(FailedPrecondition) as refused:
        await checks.bind(
            source,
            [
                SliceFacts(0, first, 48, 64),  # fine
                SliceFacts(1, None, 64, 64),  # wrong width
                SliceFacts(2, "1.2.826.0.1.3680043.8.498.100.9", 48, 64),  # other series
                SliceFacts(7, None, 48, 64),  # beyond the series
            ],
        )
    text = refused.value.message
    assert "slice 1: size is 64x64, its image is 48x64" in text
    assert "slice 2: sop_instance_uid is not an image of the annotation's series" in text
    assert "slice 7: no image at this position (the series has 5)" in text
    assert "slice 0" not in text
    assert "1.2.826" not in text
    # An image the remembered series lacked was asked for again, once, fresh.
    assert foreign.calls == ["source_series", "source_series(fresh)"]


async def test_two_slices_on_one_image_are_refused_naming_both_slices() -> None:
    series = _series()
    pacs = FakePacs([series])
    checks, _ = _checks(pacs, PacsValidation.ENFORCE)
    source = await checks.slice_source(STUDY, SERIES)
    ordered = along_normal(series.instances)
    assert ordered is not None
    with pytest.raises(FailedPrecondition) as refused:
        await checks.bind(
            source,
            [
                SliceFacts(0, ordered[3].sop_instance_uid, 48, 64),  # names the 4th image
                SliceFacts(3, None, 48, 64),  # bound to the 4th image by position
                SliceFacts(1, None, 48, 64),  # fine
            ],
        )
    text = refused.value.message
    assert "slice 0: is on the same image as slice 3" in text
    assert "slice 3: is on the same image as slice 0" in text
    assert "slice 1" not in text
    assert "1.2.826" not in text


async def test_a_series_that_grew_since_it_was_remembered_binds_after_one_fresh_look() -> None:
    small = SourceSeries(STUDY, SERIES, None, "CT", (_instance(0, 0.0),))
    pacs = FakePacs([small])
    checks, _ = _checks(pacs, PacsValidation.ENFORCE)
    source = await checks.slice_source(STUDY, SERIES)
    pacs.series[(STUDY, SERIES)] = SourceSeries(
        STUDY, SERIES, None, "CT", (_instance(0, 0.0), _instance(1, 1.0))
    )
    bound = await checks.bind(source, [SliceFacts(1, None, 48, 64)])
    assert bound == {1: _instance(1, 1.0).sop_instance_uid}


async def test_warn_records_bad_slices_as_declared_and_binds_the_others() -> None:
    series = _series()
    checks, counted = _checks(FakePacs([series]), PacsValidation.WARN)
    source = await checks.slice_source(STUDY, SERIES)
    bound = await checks.bind(source, [SliceFacts(0, None, 1, 1), SliceFacts(1, None, 48, 64)])
    ordered = along_normal(series.instances)
    assert ordered is not None
    assert bound == {0: None, 1: ordered[1].sop_instance_uid}
    assert counted == [SLICE_MISMATCH]


async def test_an_annotation_without_series_cannot_bind_slices_in_enforce() -> None:
    pacs = FakePacs([_series()])
    enforce, _ = _checks(pacs, PacsValidation.ENFORCE)
    with pytest.raises(FailedPrecondition, match=r"^annotation\.series_uid: is required"):
        await enforce.slice_source(STUDY, None)
    warn, counted = _checks(pacs, PacsValidation.WARN)
    assert (await warn.slice_source(STUDY, None)).series is None
    assert counted == [NO_SERIES]
    assert pacs.calls == []


async def test_a_series_the_pacs_lacks_refuses_slices_in_enforce() -> None:
    checks, _ = _checks(FakePacs([_series()]), PacsValidation.ENFORCE)
    with pytest.raises(
        FailedPrecondition, match=r"^annotation\.series_uid: not found in the PACS$"
    ):
        await checks.slice_source(STUDY, UNKNOWN)
