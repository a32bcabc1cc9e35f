"""What writes check against the PACS, in one place (PACS_VALIDATE).

* References: an annotation's study, series and instance must exist in the PACS
  (CreateAnnotation, and CreateMaskGroup for the annotation it extends).
* Slices: each recorded mask slice is one image of the annotation's series, of that image's
  size; a slice declared without `sop_instance_uid` is bound to the image at its
  `slice_index` along the slice normal (CompleteUpload, PushMasks).

`enforce` refuses with FAILED_PRECONDITION (nothing written) and answers UNAVAILABLE while
the PACS cannot be asked; `warn` logs and counts what it would have refused, then writes;
`off` (and no PACS configured) asks nothing.

The PACS is asked before any transaction opens, so a slow PACS holds no database
connection; errors name fields and slice indexes, never the UIDs the client sent. Logs
and counters say what kind of check failed, never which study.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pacs_grpc.domain.errors import FailedPrecondition, Unavailable
from pacs_grpc.domain.masks import LISTED_SLICES, NewMask
from pacs_grpc.domain.pacs import PacsValidation, SourceSeries, along_normal
from pacs_grpc.services.ports import Pacs

_log = logging.getLogger(__name__)
# Other slices named for a slice that shares its image.
_LISTED_SHARING = 5

# What a warning is counted under (pacs_grpc.api.metrics): a fixed set, never a UID.
STUDY_NOT_FOUND = "study_not_found"
SERIES_NOT_FOUND = "series_not_found"
INSTANCE_NOT_FOUND = "instance_not_found"
PACS_UNAVAILABLE = "pacs_unavailable"
SLICE_MISMATCH = "slice_mismatch"
NO_SERIES = "no_series"


@dataclass(frozen=True)
class ReferenceLookup:
    """What the PACS said about a study / series / instance, settled later (see settle)."""

    # The first level the PACS does not have: "study_uid", "series_uid" or "instance_uid".
    missing: str | None
    # The PACS could not be asked (warn mode only; enforce raises at once).
    unverified: bool = False


_FOUND = ReferenceLookup(missing=None)


@dataclass(frozen=True)
class SliceFacts:
    """One slice about to be recorded: what its client declared and reported."""

    slice_index: int
    sop_instance_uid: str | None
    width: int
    height: int


@dataclass(frozen=True)
class SliceSource:
    """The annotation's series as the PACS has it, fetched before a completion or push.

    `series` is None when nothing is to be checked (no PACS, `off`, or `warn` with the
    PACS away or the series unknown).
    """

    study_uid: str
    series_uid: str | None
    series: SourceSeries | None


_NOTHING = SliceSource("", None, None)


class PacsChecks:
    """PACS_VALIDATE applied to writes (see the module docstring): `look_up` and `settle` for an
    annotation's references, `slice_source` and `bind` for mask slices. Call it before any
    transaction opens. Without a PACS it is OFF and asks nothing; it keeps no state per call.
    """

    def __init__(
        self,
        pacs: Pacs | None,
        mode: PacsValidation,
        *,
        on_warning: Callable[[str], None] | None = None,
    ) -> None:
        self._pacs = pacs
        self.mode = mode if pacs is not None else PacsValidation.OFF
        self._on_warning = on_warning or (lambda reason: None)

    @property
    def active(self) -> bool:
        return self._pacs is not None and self.mode is not PacsValidation.OFF

    # -- references -------------------------------------------------------------------------

    async def look_up(
        self, study_uid: str, series_uid: str | None, instance_uid: str | None
    ) -> ReferenceLookup:
        """Ask the PACS; one QIDO-RS query when its answer is yes (or none, when cached).

        Only a "no" costs more queries, to name the level that is missing. Enforce mode
        raises Unavailable when the PACS cannot be asked.
        """
        if self._pacs is None or not self.active:
            return _FOUND
        try:
            return await self._missing_level(self._pacs, study_uid, series_uid, instance_uid)
        except Unavailable:
            if self.mode is PacsValidation.ENFORCE:
                raise
            return ReferenceLookup(missing=None, unverified=True)

    def settle(self, lookup: ReferenceLookup, prefix: str, *, whose: str = "") -> None:
        """Refuse (enforce) or warn about what look_up found. Called once the caller is
        authorised, so that a refusal tells nobody else whether a study is in the PACS."""
        if lookup.unverified:
            self._warn(PACS_UNAVAILABLE, "PACS unavailable; write not checked", prefix)
            return
        if lookup.missing is None:
            return
        field = f"{prefix}.{lookup.missing}"
        if self.mode is PacsValidation.ENFORCE:
            raise FailedPrecondition(f"{field}: not found in the PACS{whose}")
        reason = {"study_uid": STUDY_NOT_FOUND, "series_uid": SERIES_NOT_FOUND}.get(
            lookup.missing, INSTANCE_NOT_FOUND
        )
        self._warn(reason, "reference not found in the PACS; written anyway", field)

    async def _missing_level(
        self, pacs: Pacs, study_uid: str, series_uid: str | None, instance_uid: str | None
    ) -> ReferenceLookup:
        if series_uid is not None and instance_uid is not None:
            if await pacs.instance_exists(study_uid, series_uid, instance_uid):
                return _FOUND
            if await pacs.series_exists(study_uid, series_uid):
                return ReferenceLookup("instance_uid")
        elif series_uid is not None and await pacs.series_exists(study_uid, series_uid):
            return _FOUND
        if not await pacs.study_exists(study_uid):
            return ReferenceLookup("study_uid")
        return ReferenceLookup("series_uid") if series_uid is not None else _FOUND

    # -- slices -----------------------------------------------------------------------------

    async def slice_source(self, study_uid: str, series_uid: str | None) -> SliceSource:
        """The series the slices must belong to, before anything is stored or recorded."""
        if self._pacs is None or not self.active:
            return _NOTHING
        enforce = self.mode is PacsValidation.ENFORCE
        if series_uid is None:
            if enforce:
                raise FailedPrecondition(
                    "annotation.series_uid: is required to bind mask slices to their images "
                    "when the server checks them against the PACS; this annotation has none"
                )
            self._warn(NO_SERIES, "annotation has no series; slices not bound", "annotation")
            return _NOTHING
        try:
            series = await self._pacs.source_series(study_uid, series_uid)
        except Unavailable:
            if enforce:
                raise
            self._warn(PACS_UNAVAILABLE, "PACS unavailable; slices not checked", "slices")
            return _NOTHING
        if series is None:
            if enforce:
                raise FailedPrecondition("annotation.series_uid: not found in the PACS")
            self._warn(SERIES_NOT_FOUND, "series not found; slices not bound", "slices")
            return _NOTHING
        return SliceSource(study_uid, series_uid, series)

    async def bind(
        self, source: SliceSource, slices: Sequence[SliceFacts]
    ) -> dict[int, str | None]:
        """Each slice's SOP Instance UID, checked: its own, or the one its index binds it to.

        Enforce mode refuses with FAILED_PRECONDITION listing every slice that is not an
        image of the series or not of its size. A remembered series that lacks an image a
        slice asks for is fetched again once: the series may have grown since.
        """
        declared = {s.slice_index: s.sop_instance_uid for s in slices}
        if source.series is None or self._pacs is None:
            return declared
        bound, problems = _bind(source.series, slices)
        if any(p.retry for p in problems):
            try:
                series = await self._pacs.source_series(
                    source.study_uid, source.series_uid or "", fresh=True
                )
            except Unavailable:
                if self.mode is PacsValidation.ENFORCE:
                    raise
                series = None
            if series is not None:
                bound, problems = _bind(series, slices)
        if not problems:
            return bound
        listed = "; ".join(
            f"slice {p.slice_index}: {p.reason}"
            for p in sorted(problems, key=lambda p: p.slice_index)[:LISTED_SLICES]
        )
        more = len(problems) - LISTED_SLICES
        text = listed + (f"; and {more} more" if more > 0 else "")
        if self.mode is PacsValidation.ENFORCE:
            raise FailedPrecondition(f"slices do not match the annotation's series: {text}")
        self._warn(SLICE_MISMATCH, "slices do not match their images; recorded anyway", "slices")
        # Refused slices keep what their client declared; the others are bound.
        return {**declared, **bound}

    def _warn(self, reason: str, message: str, field: str) -> None:
        self._on_warning(reason)
        _log.warning(message, extra={"field": field, "reason": reason})


async def bind_masks(checks: PacsChecks, source: SliceSource, new: list[NewMask]) -> list[NewMask]:
    """The masks with each slice's image checked, and bound by position where the client named
    none (see PacsChecks.bind); refused (FAILED_PRECONDITION) in enforce mode."""
    if source.series is None:
        return new
    bound = await checks.bind(
        source,
        [
            SliceFacts(m.upload.slice_index, m.upload.sop_instance_uid, m.width, m.height)
            for m in new
        ],
    )
    return [
        dataclasses.replace(
            m,
            upload=dataclasses.replace(m.upload, sop_instance_uid=bound.get(m.upload.slice_index)),
        )
        for m in new
    ]


@dataclass(frozen=True)
class _Problem:
    slice_index: int
    reason: str
    # A fresher copy of the series might resolve it (an image it lacks).
    retry: bool = False


def _bind(
    series: SourceSeries, slices: Sequence[SliceFacts]
) -> tuple[dict[int, str | None], list[_Problem]]:
    by_uid = {i.sop_instance_uid: i for i in series.instances}
    ordered = (
        along_normal(series.instances) if any(s.sop_instance_uid is None for s in slices) else ()
    )
    bound: dict[int, str | None] = {}
    problems = []
    for item in slices:
        if item.sop_instance_uid is not None:
            image = by_uid.get(item.sop_instance_uid)
            if image is None:
                problems.append(
                    _Problem(
                        item.slice_index,
                        "sop_instance_uid is not an image of the annotation's series",
                        retry=True,
                    )
                )
                continue
        elif ordered is None:
            problems.append(
                _Problem(
                    item.slice_index,
                    "cannot be bound by position: the series' images carry neither "
                    "ImagePositionPatient nor InstanceNumber",
                )
            )
            continue
        elif item.slice_index >= len(ordered):
            problems.append(
                _Problem(
                    item.slice_index,
                    f"no image at this position (the series has {len(ordered)})",
                    retry=True,
                )
            )
            continue
        else:
            image = ordered[item.slice_index]
        if (item.width, item.height) != (image.columns, image.rows):
            problems.append(
                _Problem(
                    item.slice_index,
                    f"size is {item.width}x{item.height}, "
                    f"its image is {image.columns}x{image.rows}",
                )
            )
            continue
        bound[item.slice_index] = image.sop_instance_uid
    # Two slices on one image (one naming it, one bound to it by position) would make a group
    # that completes but never exports: a SEG holds one frame per source image and segment.
    sharing: dict[str | None, list[int]] = {}
    for slice_index, uid in bound.items():
        sharing.setdefault(uid, []).append(slice_index)
    for indexes in sharing.values():
        if len(indexes) < 2:
            continue
        for slice_index in indexes:
            others = [str(i) for i in sorted(indexes) if i != slice_index]
            shown = ", ".join(others[:_LISTED_SHARING])
            more = " ..." if len(others) > _LISTED_SHARING else ""
            problems.append(_Problem(slice_index, f"is on the same image as slice {shown}{more}"))
            del bound[slice_index]
    return bound, problems
