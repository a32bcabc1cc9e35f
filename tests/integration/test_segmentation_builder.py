"""DICOM Segmentation built from label maps and source metadata, checked by dciodvfy, read back
by our reader and by highdicom alone, and refused where it must be.

The source series is pacs_devstack.sample_ct's synthetic CT, turned into DICOM JSON the way
WADO-RS metadata arrives; no PACS is involved (the round trip through Orthanc belongs to the
export tests).
"""

from __future__ import annotations

import copy
import io
import random
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from pacs_devstack.sample_ct import synthetic_ct
from pacs_grpc.adapters.dicom.segmentation import (
    Equipment,
    build_segmentation,
    read_segmentation,
)
from pacs_grpc.domain.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from pacs_grpc.domain.segments import (
    AlgorithmType,
    CodedConcept,
    Segment,
    SegmentInput,
    new_uid,
    segments,
)

ROWS = COLUMNS = 64
SLICES = 12
LIMIT = 10_000_000
ANATOMY = CodedConcept("123037004", "SCT", "Anatomical Structure")
MORPHOLOGY = CodedConcept("49755003", "SCT", "Morphologically Altered Structure")
SEGMENTS = segments(
    "segments",
    [
        SegmentInput(1, "Liver", ANATOMY, CodedConcept("10200004", "SCT", "Liver"),
                     display_color=(221, 130, 101)),
        SegmentInput(5, "Spleen", ANATOMY, CodedConcept("78961009", "SCT", "Spleen"),
                     algorithm_type=AlgorithmType.SEMIAUTOMATIC),
        SegmentInput(200, "Lesion", MORPHOLOGY, CodedConcept("4147007", "SCT", "Mass"),
                     description="largest lesion"),
    ],
    has_model=True,
)  # fmt: skip
# Our pixel values -> the SEG's segment numbers (1..n in order of pixel value).
NUMBER = {0: 0, 1: 1, 5: 2, 200: 3}
NUMBER_LUT = np.zeros(256, dtype=np.uint8)
NUMBER_LUT[list(NUMBER)] = list(NUMBER.values())


def _code(value: CodedConcept) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value.code_value, value.coding_scheme_designator, value.code_meaning)


@pytest.fixture(scope="module")
def ct() -> list[Dataset]:
    return synthetic_ct(slices=SLICES, rows=ROWS, columns=COLUMNS)


def _metadata(datasets: Sequence[Dataset]) -> list[dict[str, Any]]:
    """DICOM JSON as WADO-RS metadata gives it: pixel data only as a bulk data reference."""
    result = []
    for ds in datasets:
        item = ds.to_json_dict()
        item["7FE00010"] = {"vr": "OW", "BulkDataURI": "http://pacs.invalid/frames/1"}
        result.append(item)
    return result


def _label_maps(datasets: Sequence[Dataset]) -> dict[str, np.ndarray]:
    """Shapes that move from slice to slice; every fourth slice empty; the lesion only later."""
    maps = {}
    for index, ds in enumerate(datasets):
        image = np.zeros((ROWS, COLUMNS), dtype=np.uint8)
        if index % 4 != 0:
            image[8 + index : 20 + index, 6:30] = 1
            image[36:44, 4 + index : 14 + index] = 5
            if index >= 6:
                image[50:58, 48:60] = 200
        maps[str(ds.SOPInstanceUID)] = image
    return maps


def _build(
    ct: Sequence[Dataset],
    maps: dict[str, np.ndarray],
    segs: Sequence[Segment] = SEGMENTS,
    *,
    max_voxels: int = LIMIT,
) -> bytes:
    shuffled = _metadata(ct)
    random.Random(7).shuffle(shuffled)
    return build_segmentation(
        shuffled,
        maps,
        segs,
        series_uid=new_uid(),
        sop_uid=new_uid(),
        series_number=901,
        content_label="LIVER_SEG",
        content_creator="Pipeline^Bot",
        model_name="nnU-Net",
        model_version="2.1.0",
        equipment=Equipment(software_versions="test"),
        max_voxels=max_voxels,
    )


def _dciodvfy(data: bytes, tmp_path: Path) -> list[str]:
    path = tmp_path / "seg.dcm"
    path.write_bytes(data)
    run = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    return (run.stdout + run.stderr).splitlines()


def test_a_built_segmentation_passes_dciodvfy_and_reads_back_frame_for_frame(
    ct: list[Dataset], tmp_path: Path
) -> None:
    maps = _label_maps(ct)
    data = _build(ct, maps)

    report = _dciodvfy(data, tmp_path)
    assert report, "dciodvfy printed nothing"
    assert "Segmentation" in report[0]
    assert [line for line in report if "Error" in line] == []

    read = read_segmentation(data, max_voxels=LIMIT)
    assert read.study_instance_uid == str(ct[0].StudyInstanceUID)
    assert read.source_series_uid == str(ct[0].SeriesInstanceUID)
    assert read.frame_of_reference_uid == str(ct[0].FrameOfReferenceUID)
    assert read.algorithm_name == "nnU-Net"
    assert read.algorithm_version == "2.1.0"
    assert read.content_label == "LIVER_SEG"
    assert set(read.label_maps) == set(maps)
    for uid, image in maps.items():
        assert np.asarray(read.label_maps[uid]).dtype == np.uint8
        np.testing.assert_array_equal(read.label_maps[uid], NUMBER_LUT[image])

    # Codes, labels, colour and algorithm type survive, renumbered 1..n.
    imported = segments("segments", read.segments, has_model=True)
    for number, (back, sent) in enumerate(zip(imported, SEGMENTS, strict=True), start=1):
        assert back.pixel_value == number
        assert back.label == sent.label
        assert back.segmented_property_category == sent.segmented_property_category
        assert back.segmented_property_type == sent.segmented_property_type
        assert back.algorithm_type is sent.algorithm_type
        assert back.description == sent.description
    assert imported[0].display_color == (221, 130, 101)
    assert imported[1].display_color is None


def test_highdicom_alone_reads_every_frame_of_every_segment(ct: list[Dataset]) -> None:
    maps = _label_maps(ct)
    ds = pydicom.dcmread(io.BytesIO(_build(ct, maps)))
    source = ct[0]
    assert ds.Modality == "SEG"
    assert ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert ds.PatientName == source.PatientName
    assert ds.PatientID == source.PatientID
    assert ds.SeriesNumber == 901
    assert ds.ContentCreatorName == "Pipeline^Bot"
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    # Empty frames are omitted: one frame per (slice, segment) that has pixels.
    present = sum(int(np.any(image == value)) for image in maps.values() for value in (1, 5, 200))
    assert int(ds.NumberOfFrames) == present

    for item, sent in zip(ds.SegmentSequence, SEGMENTS, strict=True):
        family = item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmFamilyCodeSequence[0]
        assert (family.CodeValue, family.CodingSchemeDesignator, family.CodeMeaning) == (
            "123109", "DCM", "Artificial Intelligence",
        )  # fmt: skip
        assert item.SegmentAlgorithmType == sent.algorithm_type.value
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == (
            sent.segmented_property_type.code_value
        )

    seg = hd.seg.Segmentation.from_dataset(ds)
    uids = [str(d.SOPInstanceUID) for d in ct]
    for number, value in ((1, 1), (2, 5), (3, 200)):
        frames = seg.get_pixels_by_source_instance(
            uids, segment_numbers=[number], assert_missing_frames_are_empty=True
        )
        for index, uid in enumerate(uids):
            np.testing.assert_array_equal(frames[index, :, :, 0], maps[uid] == value)

    # Frames follow the slice normal (highdicom's direction), whatever order the metadata had.
    z = [
        float(frame.PlanePositionSequence[0].ImagePositionPatient[2])
        for frame in ds.PerFrameFunctionalGroupsSequence
        if frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 1
    ]
    assert z in (sorted(z), sorted(z, reverse=True))
    assert len(z) == sum(int(np.any(image == 1)) for image in maps.values())


def test_a_manual_group_has_no_algorithm_identification(ct: list[Dataset], tmp_path: Path) -> None:
    manual = segments("segments", [SegmentInput(1, "Liver")], has_model=False)
    maps = {uid: (image > 0).astype(np.uint8) for uid, image in _label_maps(ct).items()}
    data = _build(ct, maps, manual)
    assert [line for line in _dciodvfy(data, tmp_path) if "Error" in line] == []
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    assert "SegmentationAlgorithmIdentificationSequence" not in ds.SegmentSequence[0]
    category = ds.SegmentSequence[0].SegmentedPropertyCategoryCodeSequence[0]
    assert (category.CodeValue, category.CodingSchemeDesignator) == ("85756007", "SCT")


def test_a_segmentation_made_independently_with_highdicom_reads_the_same(
    ct: list[Dataset],
) -> None:
    maps = _label_maps(ct)
    numbers = np.stack([NUMBER_LUT[maps[str(d.SOPInstanceUID)]] for d in ct])
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=f"s{number}",
            segmented_property_category=_code(ANATOMY),
            segmented_property_type=hd.sr.CodedConcept("10200004", "SCT", "Liver"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number in (1, 2, 3)
    ]  # fmt: skip
    seg = hd.seg.Segmentation(
        source_images=ct, pixel_array=numbers,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=new_uid(), series_number=5,
        sop_instance_uid=new_uid(), instance_number=1, manufacturer="elsewhere",
        manufacturer_model_name="other", software_versions="0", device_serial_number="0",
    )  # fmt: skip
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    read = read_segmentation(buffer.getvalue(), max_voxels=LIMIT)
    assert [s.label for s in read.segments] == ["s1", "s2", "s3"]
    assert read.algorithm_name is None
    for index, ds in enumerate(ct):
        np.testing.assert_array_equal(read.label_maps[str(ds.SOPInstanceUID)], numbers[index])


def test_the_voxel_limit_is_checked_before_building(ct: list[Dataset]) -> None:
    maps = _label_maps(ct)
    with pytest.raises(ResourceExhausted, match="limit is 1000"):
        _build(ct, maps, max_voxels=1000)
    data = _build(ct, maps)
    with pytest.raises(ResourceExhausted, match="limit is 1000"):
        read_segmentation(data, max_voxels=1000)


def test_label_maps_that_do_not_fit_are_refused_without_uids(ct: list[Dataset]) -> None:
    maps = _label_maps(ct)
    undeclared = dict(maps)
    undeclared[str(ct[3].SOPInstanceUID)] = np.full((ROWS, COLUMNS), 9, dtype=np.uint8)
    with pytest.raises(FailedPrecondition, match="1 slice") as raised:
        _build(ct, undeclared)
    assert str(ct[3].SOPInstanceUID) not in raised.value.message
    wrong_size = dict(maps)
    wrong_size[str(ct[2].SOPInstanceUID)] = np.zeros((ROWS, COLUMNS + 1), dtype=np.uint8)
    with pytest.raises(FailedPrecondition, match="rows and columns"):
        _build(ct, wrong_size)
    foreign = dict(maps)
    foreign[new_uid()] = maps[str(ct[1].SOPInstanceUID)]
    with pytest.raises(FailedPrecondition, match="not in the series"):
        _build(ct, foreign)
    empty = {uid: np.zeros_like(image) for uid, image in maps.items()}
    with pytest.raises(FailedPrecondition, match="empty"):
        _build(ct, empty)


def test_sources_without_geometry_are_refused_as_the_pacs_data(ct: list[Dataset]) -> None:
    broken = [copy.deepcopy(ds) for ds in ct]
    for ds in broken:
        del ds.FrameOfReferenceUID
        del ds.ImagePositionPatient
    with pytest.raises(FailedPrecondition, match="frame of reference") as raised:
        _build(broken, _label_maps(broken))
    assert "Error" not in raised.value.message


def test_what_is_not_a_segmentation_is_refused_naming_the_field(ct: list[Dataset]) -> None:
    with pytest.raises(InvalidArgument, match="not a readable DICOM") as raised:
        read_segmentation(b"definitely not DICOM", max_voxels=LIMIT, field="upload_id")
    assert raised.value.field == "upload_id"

    buffer = io.BytesIO()
    ct[0].save_as(buffer, enforce_file_format=True)
    with pytest.raises(InvalidArgument, match="not a DICOM Segmentation"):
        read_segmentation(buffer.getvalue(), max_voxels=LIMIT)

    data = _build(ct, _label_maps(ct))
    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.SegmentSequence
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(InvalidArgument, match="not a well-formed") as raised:
        read_segmentation(buffer.getvalue(), max_voxels=LIMIT)
    assert str(ct[0].StudyInstanceUID) not in raised.value.message

    with pytest.raises(InvalidArgument):
        read_segmentation(data[: len(data) // 2], max_voxels=LIMIT)


def test_overlapping_segments_are_refused(ct: list[Dataset]) -> None:
    stacked = np.zeros((len(ct), ROWS, COLUMNS, 2), dtype=np.uint8)
    stacked[:, 10:30, 10:30, 0] = 1
    stacked[:, 20:40, 20:40, 1] = 1
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=f"s{number}",
            segmented_property_category=hd.sr.CodedConcept("85756007", "SCT", "Tissue"),
            segmented_property_type=hd.sr.CodedConcept("85756007", "SCT", "Tissue"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number in (1, 2)
    ]  # fmt: skip
    seg = hd.seg.Segmentation(
        source_images=ct, pixel_array=stacked,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=new_uid(), series_number=5,
        sop_instance_uid=new_uid(), instance_number=1, manufacturer="elsewhere",
        manufacturer_model_name="other", software_versions="0", device_serial_number="0",
    )  # fmt: skip
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    with pytest.raises(InvalidArgument, match="overlapping"):
        read_segmentation(buffer.getvalue(), max_voxels=LIMIT)


def test_non_ascii_labels_and_names_are_written_as_utf8(ct: list[Dataset], tmp_path: Path) -> None:
    named = [copy.deepcopy(ds) for ds in ct]
    for ds in named:
        ds.PatientName = "Müller^Jürgen"
    labels = segments(
        "segments",
        [SegmentInput(1, "Läsion", ANATOMY, CodedConcept("10200004", "SCT", "Liver")),
         SegmentInput(5, "肝臓", ANATOMY, CodedConcept("78961009", "SCT", "Spleen"))],
        has_model=True,
    )  # fmt: skip
    maps = {
        uid: np.where(image == 200, 0, image).astype(np.uint8)
        for uid, image in _label_maps(named).items()
    }
    data = _build(named, maps, labels)

    assert [line for line in _dciodvfy(data, tmp_path) if "Error" in line] == []
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Müller^Jürgen"
    assert [str(item.SegmentLabel) for item in ds.SegmentSequence] == ["Läsion", "肝臓"]
    assert "肝臓".encode() in data
    read = read_segmentation(data, max_voxels=LIMIT)
    assert [s.label for s in read.segments] == ["Läsion", "肝臓"]


def test_a_small_segmentation_referencing_many_sources_is_refused_before_reading(
    ct: list[Dataset],
) -> None:
    # One stored frame, but one label map per referenced source when read.
    maps = {str(ds.SOPInstanceUID): np.zeros((ROWS, COLUMNS), dtype=np.uint8) for ds in ct}
    maps[str(ct[5].SOPInstanceUID)][10:20, 10:20] = 1
    one = segments("segments", [SegmentInput(1, "Liver")], has_model=False)
    data = _build(ct, maps, one)
    assert int(pydicom.dcmread(io.BytesIO(data)).NumberOfFrames) == 1

    limit = 2 * ROWS * COLUMNS
    with pytest.raises(ResourceExhausted, match=f"{SLICES * ROWS * COLUMNS} voxels") as raised:
        read_segmentation(data, max_voxels=limit)
    assert str(ct[0].SOPInstanceUID) not in raised.value.message
    with pytest.raises(ResourceExhausted, match=f"references {SLICES} source images"):
        read_segmentation(data, max_voxels=LIMIT, max_slices=SLICES - 1)
    read = read_segmentation(data, max_voxels=LIMIT, max_slices=SLICES)
    assert len(read.label_maps) == SLICES
