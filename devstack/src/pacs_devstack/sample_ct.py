"""A clearly synthetic CT series, made with pydicom, for the local PACS and the tests.

Never real images, never downloaded: a water cylinder in air with a bone ring and a
sphere of soft tissue inside it, so a viewer shows something and a segmentation has
an object whose outline changes from slice to slice. The patient is
``SYNTHETIC^PHANTOM``, and the descriptions say so. Every UID is generated
(``2.25.`` + a UUID, or under the given root).
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Sequence

import numpy as np
import requests
from dicomweb_client import DICOMwebClient
from pydicom import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

SYNTHETIC_PATIENT = "SYNTHETIC^PHANTOM"
SYNTHETIC_PATIENT_ID = "SYNTHETIC-PHANTOM"
_DESCRIPTION = "SYNTHETIC PHANTOM - not patient data"
# Stored values are HU + 1024, the usual CT encoding: air (-1000 HU) stays positive.
_RESCALE_INTERCEPT = -1024
_AIR_HU, _WATER_HU, _TISSUE_HU, _BONE_HU = -1000, 0, 60, 700
_PIXEL_SPACING_MM = 0.8
_SLICE_THICKNESS_MM = 2.5
# Axial slices of a head-first supine patient: rows along +x, columns along +y,
# so the slice normal (row x column) is +z and positions step along it.
_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def synthetic_ct(
    *,
    slices: int = 64,
    rows: int = 256,
    columns: int = 256,
    study_uid: str | None = None,
    patient_name: str = SYNTHETIC_PATIENT,
    uid_root: str | None = None,
) -> list[Dataset]:
    """One CT series of `slices` axial images, ordered along the slice normal.

    `uid_root` (e.g. ``DICOM_UID_ROOT``) prefixes every generated UID; by default
    they are ``2.25.`` + a UUID, which needs no registered root.
    """
    if slices < 1 or rows < 8 or columns < 8:
        raise ValueError("need at least one slice of 8x8 pixels")
    prefix = _prefix(uid_root)
    study_uid = study_uid or generate_uid(prefix)
    # Centre the volume on the scanner origin.
    x0 = -(columns - 1) * _PIXEL_SPACING_MM / 2
    y0 = -(rows - 1) * _PIXEL_SPACING_MM / 2
    z0 = -(slices - 1) * _SLICE_THICKNESS_MM / 2
    volume = _phantom(slices, rows, columns)

    template = _series_template(
        patient_name=patient_name,
        study_uid=study_uid,
        series_uid=generate_uid(prefix),
        frame_of_reference_uid=generate_uid(prefix),
        rows=rows,
        columns=columns,
        slices=slices,
    )
    datasets = []
    for index in range(slices):
        z = z0 + index * _SLICE_THICKNESS_MM
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = generate_uid(prefix)
        ds.file_meta = _file_meta(ds.SOPInstanceUID)
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [x0, y0, z]
        ds.SliceLocation = z
        ds.PixelData = volume[index].tobytes()
        datasets.append(ds)
    return datasets


def _series_template(
    *,
    patient_name: str,
    study_uid: str,
    series_uid: str,
    frame_of_reference_uid: str,
    rows: int,
    columns: int,
    slices: int,
) -> Dataset:
    """Every attribute the slices share; each slice adds its UID, position and pixels."""
    now = dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    # Patient
    ds.PatientName = patient_name
    ds.PatientID = SYNTHETIC_PATIENT_ID
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientComments = _DESCRIPTION
    # General Study
    ds.StudyInstanceUID = study_uid
    ds.StudyDate, ds.StudyTime = date, time
    ds.ReferringPhysicianName = ""
    ds.StudyID = "SYNTH1"
    ds.AccessionNumber = ""
    ds.StudyDescription = _DESCRIPTION
    # General Series
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = f"{_DESCRIPTION}, {slices} axial slices"
    ds.BodyPartExamined = "ABDOMEN"
    ds.PatientPosition = "HFS"
    # Frame of Reference
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # General Equipment
    ds.Manufacturer = "pacs-grpc synthetic phantom"
    ds.ManufacturerModelName = "sample_ct"
    ds.SoftwareVersions = "1"
    # General Image, General Acquisition
    ds.AcquisitionNumber = 1
    ds.ContentDate, ds.ContentTime = date, time
    ds.AcquisitionDate, ds.AcquisitionTime = date, time
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.BurnedInAnnotation = "NO"
    # Image Plane (each slice adds ImagePositionPatient and SliceLocation)
    ds.PixelSpacing = [_PIXEL_SPACING_MM, _PIXEL_SPACING_MM]
    ds.ImageOrientationPatient = list(_ORIENTATION)
    ds.SliceThickness = _SLICE_THICKNESS_MM
    # Image Pixel, CT Image
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = _RESCALE_INTERCEPT
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.KVP = 120
    ds.ConvolutionKernel = "STANDARD"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.LossyImageCompression = "00"
    return ds


def store_series(dicomweb_url: str, datasets: Sequence[Dataset]) -> None:
    """Store the datasets with STOW-RS; raises unless the PACS stored every one."""
    with requests.Session() as session:
        client = DICOMwebClient(dicomweb_url, session=session, timeout=60)
        reply = client.store_instances(list(datasets))
    failed = reply.get("FailedSOPSequence") or []
    if failed:
        reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
        raise RuntimeError(
            f"STOW-RS stored {len(datasets) - len(failed)} of {len(datasets)} instances "
            f"(failure reasons {', '.join(reasons)})"
        )


def _phantom(slices: int, rows: int, columns: int) -> np.ndarray:
    """Stored values (HU - intercept), shape (slices, rows, columns), uint16."""
    y, x = np.mgrid[0:rows, 0:columns]
    radius = (np.hypot(x - (columns - 1) / 2, y - (rows - 1) / 2)) / (min(rows, columns) / 2)
    body = radius < 0.8
    ring = (radius >= 0.7) & body
    slice_image = np.full((rows, columns), _AIR_HU, dtype=np.int32)
    slice_image[body] = _WATER_HU
    slice_image[ring] = _BONE_HU
    volume = np.repeat(slice_image[np.newaxis], slices, axis=0)
    # A sphere of soft tissue in the middle, a little off centre so orientation shows.
    z = np.arange(slices)[:, np.newaxis, np.newaxis]
    cz, cy, cx = (slices - 1) / 2, rows * 0.45, columns * 0.55
    sphere_radius = 0.3 * min(rows, columns)
    scale_z = sphere_radius / max(slices / 2, 1)
    inside = ((x[np.newaxis] - cx) ** 2 + (y[np.newaxis] - cy) ** 2 + ((z - cz) * scale_z) ** 2) < (
        0.8 * sphere_radius
    ) ** 2
    volume[inside] = _TISSUE_HU
    return (volume - _RESCALE_INTERCEPT).astype(np.uint16)


def _file_meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _prefix(uid_root: str | None) -> str | None:
    """pydicom's prefix form of a UID root ('1.2.3' -> '1.2.3.'); None means 2.25."""
    if not uid_root:
        return None
    return uid_root if uid_root.endswith(".") else uid_root + "."
