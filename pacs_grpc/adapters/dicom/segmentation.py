"""DICOM Segmentation (SEG) objects: built from a mask group's label maps, and read back.

Pure library code on highdicom and pydicom: bytes and arrays in, bytes and arrays out, no I/O.
Both directions are CPU-bound (tens of milliseconds to seconds): callers run them in a worker
thread, bounded, and pass a voxel limit.

Building needs only the source images' metadata (DICOM JSON from WADO-RS, PS3.18 F.2), never
their pixels. The SEG is BINARY, the type every viewer reads: one segment per declared segment,
numbered 1..n in order of pixel value (DICOM requires BINARY segment numbers to start at 1 and
step by 1, while a group's pixel values may have gaps), with empty frames omitted. Study,
patient and frame of reference come from the sources, so the SEG sits in the source study.

Errors are domain errors whose messages carry no UIDs, no patient data and no library text.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom import Dataset

from pacs_grpc.adapters.images import encode_png_label_map
from pacs_grpc.domain.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from pacs_grpc.domain.masks import MAX_SLICE_COUNT
from pacs_grpc.domain.segments import (
    ARTIFICIAL_INTELLIGENCE,
    AlgorithmType,
    CodedConcept,
    LabelMap,
    Segment,
    SegmentationRead,
    SegmentInput,
)

_log = logging.getLogger(__name__)

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
# Pixel data and other bulk data: a WADO-RS metadata reply has them only as BulkDataURI, which
# pydicom cannot resolve without a handler (it warns), and a SEG needs none of them.
_BULK_TAGS = frozenset(
    {
        "7FE00010",  # PixelData
        "7FE00008",  # FloatPixelData
        "7FE00009",  # DoubleFloatPixelData
        "00282000",  # ICCProfile
        "00880200",  # IconImageSequence
    }
)
# UTF-8 (PS3.3 C.12.1.1.2): segment labels, descriptions and the copied patient name may hold
# any script. Without it a reader assumes ASCII and non-ASCII text is written as "?".
UTF8 = "ISO_IR 192"
# AlgorithmVersion is required (type 1) in an Algorithm Identification; a group may not have one.
_UNSPECIFIED_VERSION = "unspecified"


@dataclass(frozen=True)
class Equipment:
    """Who made the SEG: the Enhanced General Equipment module (all type 1)."""

    manufacturer: str = "PACS Extension Server"
    manufacturer_model_name: str = "pacs-grpc"
    software_versions: str = "1"
    device_serial_number: str = "1"


def build_segmentation(
    source_metadata: Sequence[Mapping[str, Any]],
    label_maps: Mapping[str, np.ndarray],
    segments: Sequence[Segment],
    *,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    instance_number: int = 1,
    content_label: str = "SEGMENTATION",
    series_description: str | None = None,
    content_description: str | None = None,
    content_creator: str | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
    model_parameters: Mapping[str, str] | None = None,
    equipment: Equipment = Equipment(),
    max_voxels: int,
) -> bytes:
    """A BINARY DICOM Segmentation as a Part-10 file.

    ``source_metadata`` is the source series' WADO-RS metadata, one DICOM JSON object per
    instance; ``label_maps`` maps a source SOP Instance UID to its (Rows, Columns) uint8 label
    map, where a pixel's value is its segment's ``pixel_value`` and 0 is background. Only the
    instances with a label map become source images of the SEG. ``segments`` must be the
    group's validated segments (every nonzero value in the maps among their pixel values).

    ``max_voxels`` bounds frames x rows x columns x segments, what the build holds in memory:
    above it, ResourceExhausted.
    """
    if not segments:
        raise FailedPrecondition("the group declares no segments; a segmentation needs them")
    if not label_maps:
        raise FailedPrecondition("the group has no slices bound to source images")
    by_uid = {}
    for item in source_metadata:
        uid = _sop_instance_uid(item)
        if uid is not None and uid in label_maps:
            by_uid[uid] = item
    missing = len(label_maps.keys() - by_uid.keys())
    if missing:
        raise FailedPrecondition(f"{missing} slice(s) are bound to images not in the series")
    sources = [_dataset(by_uid[uid]) for uid in label_maps]
    if any("Rows" not in s or "Columns" not in s for s in sources):
        raise FailedPrecondition("the source images' metadata lacks their size (Rows, Columns)")
    rows, columns = int(sources[0].Rows), int(sources[0].Columns)
    voxels = len(sources) * rows * columns * len(segments)
    if voxels > max_voxels:
        raise ResourceExhausted(
            f"the segmentation would hold {voxels} voxels (slices x rows x columns x segments); "
            f"the limit is {max_voxels}"
        )
    ordered = _along_normal(sources)
    ordered_segments = sorted(segments, key=lambda s: s.pixel_value)
    array = _segment_numbers(ordered, label_maps, ordered_segments)

    descriptions = [
        _description(
            number,
            segment,
            model_name=model_name,
            model_version=model_version,
            parameters=model_parameters,
        )
        for number, segment in enumerate(ordered_segments, start=1)
    ]
    try:
        seg = hd.seg.Segmentation(
            source_images=ordered,
            pixel_array=array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=sop_uid,
            instance_number=instance_number,
            manufacturer=equipment.manufacturer,
            manufacturer_model_name=equipment.manufacturer_model_name,
            software_versions=equipment.software_versions,
            device_serial_number=equipment.device_serial_number,
            content_label=content_label,
            content_description=content_description,
            content_creator_name=content_creator,
            omit_empty_frames=True,
            specific_character_set=UTF8,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        # The sources lack what a SEG needs (no frame of reference, mixed series or sizes):
        # the PACS's data, not the request. The library's text may quote UIDs: log its type only.
        _log.warning("segmentation build refused by highdicom: %s", type(error).__name__)
        raise FailedPrecondition(
            "the source images' metadata lacks what a DICOM Segmentation needs "
            "(one series, one size, a frame of reference and plane geometry)"
        ) from None
    if series_description:
        # highdicom takes no Series Description; the attribute is optional (type 3) in SEG.
        seg.SeriesDescription = series_description
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def read_segmentation(
    data: bytes,
    *,
    max_voxels: int,
    field: str = "segmentation",
    max_slices: int = MAX_SLICE_COUNT,
) -> SegmentationRead:
    """The segments, provenance, source references and label maps of a Part-10 SEG file.

    Malformed or non-SEG input, overlapping segments (a label map cannot hold them), FRACTIONAL
    segmentations, more than 255 segments, and sources that are multi-frame images raise
    InvalidArgument on ``field``; more than ``max_voxels`` stored pixels (frames x rows x
    columns) or pixels read back (referenced sources x rows x columns: one label map per
    source, even for sources without frames), or more than ``max_slices`` referenced sources,
    raise ResourceExhausted before any pixel is decoded.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - any parse failure is the same client mistake
        raise InvalidArgument(field, "is not a readable DICOM Part-10 file") from None
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in (SEGMENTATION_STORAGE, LABEL_MAP_SEGMENTATION_STORAGE):
        raise InvalidArgument(field, "is not a DICOM Segmentation")
    try:
        frames = int(ds.get("NumberOfFrames", 1))
        stored = frames * int(ds.Rows) * int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise InvalidArgument(field, "lacks its image size (Rows, Columns)") from None
    if stored > max_voxels:
        raise ResourceExhausted(
            f"the segmentation holds {stored} voxels (frames x rows x columns); "
            f"the limit is {max_voxels}"
        )
    if str(ds.get("SegmentationType", "")) == "FRACTIONAL":
        raise InvalidArgument(field, "is a FRACTIONAL segmentation; only BINARY and LABELMAP")
    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
    except Exception:  # noqa: BLE001 - highdicom raises many types for malformed files
        raise InvalidArgument(field, "is not a well-formed DICOM Segmentation") from None
    numbers = [int(n) for n in seg.segment_numbers]
    if not numbers:
        raise InvalidArgument(field, "declares no segments")
    if len(numbers) > 255 or max(numbers) > 255:
        raise InvalidArgument(field, "has segment numbers above 255; at most 255 are supported")

    sources = seg.get_source_image_uids()
    series = {series_uid for _, series_uid, _ in sources}
    if len(series) != 1:
        raise InvalidArgument(field, "must reference the images of exactly one series")
    source_uids = list(dict.fromkeys(str(sop) for _, _, sop in sources))
    _check_read_size(
        len(source_uids), int(ds.Rows) * int(ds.Columns), max_voxels=max_voxels,
        max_slices=max_slices,
    )  # fmt: skip
    try:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=source_uids,
            combine_segments=True,
            relabel=False,
            assert_missing_frames_are_empty=True,
            dtype=np.uint8,
        )
    except RuntimeError:
        raise InvalidArgument(
            field, "has overlapping segments, which one label map per slice cannot hold"
        ) from None
    except Exception:  # noqa: BLE001 - multi-frame sources, missing references, bad frames
        raise InvalidArgument(
            field,
            "frames must each reference one single-frame source image "
            "(multi-frame sources are not supported)",
        ) from None

    inputs, algorithm_name, algorithm_version = _segments_read(ds, field)
    label = ds.get("ContentLabel")
    return SegmentationRead(
        sop_instance_uid=str(ds.SOPInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        source_series_uid=str(next(iter(series))),
        frame_of_reference_uid=str(ds.FrameOfReferenceUID) if "FrameOfReferenceUID" in ds else None,
        segments=inputs,
        algorithm_name=algorithm_name,
        algorithm_version=algorithm_version,
        content_label=str(label) if label else None,
        label_maps={uid: pixels[i] for i, uid in enumerate(source_uids)},
    )


# -- building ---------------------------------------------------------------------------------


def _without_bulk_data(element_map: Mapping[str, Any]) -> dict[str, Any]:
    """The DICOM JSON object without pixel data and bulk data references, at every level."""
    kept: dict[str, Any] = {}
    for tag, element in element_map.items():
        if tag.upper() in _BULK_TAGS or not isinstance(element, Mapping):
            continue
        if "BulkDataURI" in element:
            continue
        if element.get("vr") == "SQ" and isinstance(element.get("Value"), list):
            kept[tag] = {
                **element,
                "Value": [
                    _without_bulk_data(item) if isinstance(item, Mapping) else item
                    for item in element["Value"]
                ],
            }
        else:
            kept[tag] = element
    return kept


def _segment_numbers(
    ordered: Sequence[Dataset], label_maps: Mapping[str, np.ndarray], segments: Sequence[Segment]
) -> np.ndarray:
    """(frames, rows, columns) of segment numbers, frame i for ordered[i]: pixel values mapped
    to 1..n in order of ``segments``, 0 kept as background."""
    rows, columns = int(ordered[0].Rows), int(ordered[0].Columns)
    lookup = np.zeros(256, dtype=np.uint8)
    declared = np.zeros(256, dtype=bool)
    declared[0] = True
    for number, segment in enumerate(segments, start=1):
        lookup[segment.pixel_value] = number
        declared[segment.pixel_value] = True
    array = np.empty((len(ordered), rows, columns), dtype=np.uint8)
    wrong_size = undeclared = 0
    for index, source in enumerate(ordered):
        given = np.asarray(label_maps[str(source.SOPInstanceUID)])
        if given.dtype != np.uint8 or given.shape != (int(source.Rows), int(source.Columns)):
            wrong_size += 1
        elif not declared[given].all():
            undeclared += 1
        else:
            array[index] = lookup[given]
    if wrong_size:
        raise FailedPrecondition(
            f"{wrong_size} slice(s) are not 8-bit label maps of their image's rows and columns"
        )
    if undeclared:
        raise FailedPrecondition(f"{undeclared} slice(s) hold pixel values no segment declares")
    if not array.any():
        # highdicom cannot write a SEG without frames, and an empty one helps no reader.
        raise FailedPrecondition("every slice of the group is empty")
    return array


def _sop_instance_uid(item: Mapping[str, Any]) -> str | None:
    element = item.get("00080018")
    if isinstance(element, Mapping):
        values = element.get("Value")
        if isinstance(values, list) and values:
            return str(values[0])
    return None


def _dataset(item: Mapping[str, Any]) -> Dataset:
    try:
        return Dataset.from_json(_without_bulk_data(item))
    except Exception:  # noqa: BLE001 - the PACS's metadata, malformed in some way
        raise FailedPrecondition(
            "the PACS returned source metadata that is not DICOM JSON"
        ) from None


def _along_normal(sources: list[Dataset]) -> list[Dataset]:
    """Sources ordered along the slice normal (ImagePositionPatient . row x column), else by
    InstanceNumber when the images carry no plane geometry."""
    try:
        orientation = np.array([float(v) for v in sources[0].ImageOrientationPatient])
        normal = np.cross(orientation[:3], orientation[3:])
        keys = [float(np.dot(normal, [float(v) for v in s.ImagePositionPatient])) for s in sources]
    except (AttributeError, TypeError, ValueError):
        keys = [float(s.get("InstanceNumber") or 0) for s in sources]
    order = sorted(range(len(sources)), key=lambda i: keys[i])
    return [sources[i] for i in order]


def _code(value: CodedConcept) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value.code_value, value.coding_scheme_designator, value.code_meaning)


def _description(
    number: int, segment: Segment, *, model_name: str | None, model_version: str | None,
    parameters: Mapping[str, str] | None = None,
) -> hd.seg.SegmentDescription:  # fmt: skip
    identification = None
    if segment.algorithm_type is not AlgorithmType.MANUAL:
        # Required for AUTOMATIC and SEMIAUTOMATIC; the domain requires a model name for both.
        identification = hd.AlgorithmIdentificationSequence(
            name=model_name or "unnamed algorithm",
            family=_code(ARTIFICIAL_INTELLIGENCE),
            version=model_version or _UNSPECIFIED_VERSION,
            parameters=dict(parameters) if parameters else None,
        )
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment.label,
        segmented_property_category=_code(segment.segmented_property_category),
        segmented_property_type=_code(segment.segmented_property_type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues[segment.algorithm_type.value],
        algorithm_identification=identification,
        display_color=hd.color.CIELabColor.from_rgb(*segment.display_color)
        if segment.display_color
        else None,
    )
    if segment.description:
        description.SegmentDescription = segment.description
    return description


# -- reading ----------------------------------------------------------------------------------


def _check_read_size(sources: int, pixels: int, *, max_voxels: int, max_slices: int) -> None:
    """A one-frame SEG may reference any number of sources, and each becomes a label map of
    rows x columns: bound what reading it makes, not only what it stores."""
    if sources > max_slices:
        raise ResourceExhausted(
            f"the segmentation references {sources} source images; the limit is {max_slices}"
        )
    if sources * pixels > max_voxels:
        raise ResourceExhausted(
            f"the segmentation would be read as {sources * pixels} voxels (source images x "
            f"rows x columns); the limit is {max_voxels}"
        )


def _segments_read(
    ds: Dataset, field: str
) -> tuple[tuple[SegmentInput, ...], str | None, str | None]:
    result = []
    algorithm_name = algorithm_version = None
    for item in ds.SegmentSequence:
        try:
            algorithm = item.get("SegmentAlgorithmType")
            color = item.get("RecommendedDisplayCIELabValue")
            rgb = (
                hd.color.CIELabColor.from_dicom_value(tuple(int(v) for v in color)).to_rgb()
                if color is not None and len(color) == 3
                else None
            )
            result.append(
                SegmentInput(
                    pixel_value=int(item.SegmentNumber),
                    label=str(item.get("SegmentLabel") or ""),
                    segmented_property_category=_concept_read(
                        item.get("SegmentedPropertyCategoryCodeSequence")
                    ),
                    segmented_property_type=_concept_read(
                        item.get("SegmentedPropertyTypeCodeSequence")
                    ),
                    algorithm_type=AlgorithmType(str(algorithm)) if algorithm else None,
                    display_color=(int(rgb[0]), int(rgb[1]), int(rgb[2])) if rgb else None,
                    description=str(item.get("SegmentDescription") or ""),
                )
            )
            identification = item.get("SegmentationAlgorithmIdentificationSequence")
            if algorithm_name is None and identification:
                algorithm_name = str(identification[0].get("AlgorithmName") or "") or None
                algorithm_version = str(identification[0].get("AlgorithmVersion") or "") or None
        except (AttributeError, TypeError, ValueError, KeyError):
            raise InvalidArgument(field, "has a malformed SegmentSequence item") from None
    return tuple(result), algorithm_name, algorithm_version


def _concept_read(sequence: Any) -> CodedConcept | None:
    if not sequence:
        return None
    item = sequence[0]
    value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue") or ""
    return CodedConcept(
        str(value),
        str(item.get("CodingSchemeDesignator") or ""),
        str(item.get("CodeMeaning") or ""),
    )


class SegmentationCodec:
    """Implements pacs_grpc.services.ports.SegmentationReader with highdicom and Pillow."""

    def read(self, data: bytes, *, max_voxels: int, field: str) -> SegmentationRead:
        return read_segmentation(data, max_voxels=max_voxels, field=field)

    def encode_label_maps(self, maps: Sequence[LabelMap]) -> list[bytes]:
        return [encode_png_label_map(np.asarray(m)) for m in maps]
