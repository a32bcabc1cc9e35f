"""A real PACS for tests: Debian's Orthanc with DICOMweb, and synthetic series stored in it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset

from pacs_devstack.orthanc import INSTALL_HINT, Orthanc, orthanc_available
from pacs_devstack.sample_ct import store_series, synthetic_ct


@contextmanager
def running_orthanc(data_dir: Path, *, log_path: Path | None = None) -> Iterator[Orthanc]:
    """An Orthanc of the caller's own on free ports; fails (never skips) without Orthanc.

    CI installs it (.ci/run), so a missing binary is a broken machine, not a reason to
    pass quietly.
    """
    if not orthanc_available():
        raise RuntimeError(f"Orthanc with its DICOMweb plugin is not installed: {INSTALL_HINT}")
    orthanc = Orthanc(data_dir, http_port=0, dicom_port=0, log_path=log_path)
    orthanc.start()
    try:
        yield orthanc
    finally:
        orthanc.stop()


@dataclass(frozen=True)
class StoredSeries:
    """A synthetic CT series as stored in a PACS, in slice order along the normal."""

    study_uid: str
    series_uid: str
    datasets: list[Dataset]

    @property
    def sop_instance_uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]


def store_synthetic_series(
    dicomweb_url: str,
    *,
    slices: int = 8,
    rows: int = 64,
    columns: int = 64,
    study_uid: str | None = None,
    patient_name: str = "SYNTHETIC^PHANTOM",
) -> StoredSeries:
    """A new synthetic CT series (small by default, for speed) stored with STOW-RS."""
    datasets = synthetic_ct(
        slices=slices, rows=rows, columns=columns, study_uid=study_uid, patient_name=patient_name
    )
    store_series(dicomweb_url, datasets)
    first = datasets[0]
    return StoredSeries(str(first.StudyInstanceUID), str(first.SeriesInstanceUID), datasets)
