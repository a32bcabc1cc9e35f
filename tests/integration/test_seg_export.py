"""ExportMaskGroup and ListMaskGroupExports against a real Orthanc, PostgreSQL and storage
(issue 13, item 4): a mask group of coded segments goes to the PACS as a DICOM SEG and comes
back pixel for pixel.

One server of this module's own, linked to the session's Orthanc (PACS_VALIDATE=enforce), with
a voxel limit that the 3-segment group fits and a 5-segment group does not; its log is read
for patient data.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import highdicom as hd
import numpy as np
import psycopg
import pydicom
import pytest
import urllib3
from dicomweb_client import DICOMwebClient
from google.protobuf import field_mask_pb2, struct_pb2
from grpc import aio
from pacs.v1 import (
    annotation_pb2,
    annotation_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    mask_pb2,
    mask_pb2_grpc,
)
from PIL import Image

from pacs_devstack.sample_ct import store_series, synthetic_ct
from pacs_devstack.server import ServerProcess
from pacs_devstack.stack import LocalStack
from tests.support.pacs import StoredSeries
from tests.support.projects import ANNOTATOR, VIEWER, new_team
from tests.support.stacks import ServerStarter
from tests.support.users import ApiUser, unique_name

SLICES, ROWS, COLUMNS = 12, 64, 64
# 3 segments of 12 slices of 64x64 fit (147,456 voxels); 5 do not (245,760).
VOXEL_LIMIT = 200_000
# A patient name no other test uses: where it turns up, this series' data went.
SENTINEL = f"SENTINEL^PHI{uuid.uuid4().hex[:10].upper()}"
LIVER = mask_pb2.CodedConcept(code_value="10200004", coding_scheme_designator="SCT",
                              code_meaning="Liver")  # fmt: skip
ORGAN = mask_pb2.CodedConcept(code_value="123037004", coding_scheme_designator="SCT",
                              code_meaning="Anatomical Structure")  # fmt: skip
_http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(20))


@dataclass
class Linked:
    server: ServerProcess
    log_path: Path


@dataclass
class People:
    writer: ApiUser
    viewer: ApiUser
    project_id: int
    # A platform administrator: an owner of every project (purges, approvals).
    admin: ApiUser


@dataclass
class Uploaded:
    annotation_id: int
    group_id: int
    # slice_index -> the label map uploaded for it.
    label_maps: dict[int, np.ndarray]
    # slice_index -> the SOP Instance UID the server bound it to.
    bound: dict[int, str]


@pytest.fixture(scope="module")
def linked(live_stack: LocalStack, artifacts_dir: Path, pacs_url: str) -> Iterator[Linked]:
    starter = ServerStarter(live_stack, artifacts_dir, "seg-export")
    try:
        server = starter.start_linked(
            pacs_url, {"EXPORT_MAX_VOXELS": str(VOXEL_LIMIT), "EXPORT_MAX_CONCURRENCY": "1"}
        )
        yield Linked(server, artifacts_dir / f"seg-export-{server.port}.log")
    finally:
        starter.stop_all()


@pytest.fixture(scope="module")
async def linked_channel(linked: Linked) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(linked.server.address) as channel:
        yield channel


@pytest.fixture(scope="module")
async def people(live_stack: LocalStack, linked_channel: aio.Channel) -> People:
    assert live_stack.issuer is not None
    team = await new_team(
        linked_channel, live_stack.issuer, unique_name("seg"),
        {"exporter": ANNOTATOR, "reader": VIEWER},
    )  # fmt: skip
    return People(team["exporter"], team["reader"], team.project_id, team.admin)


@pytest.fixture(scope="module")
def ct(pacs_url: str) -> StoredSeries:
    datasets = synthetic_ct(slices=SLICES, rows=ROWS, columns=COLUMNS, patient_name=SENTINEL)
    store_series(pacs_url, datasets)
    first = datasets[0]
    return StoredSeries(str(first.StudyInstanceUID), str(first.SeriesInstanceUID), datasets)


def _segments(values: list[int]) -> list[mask_pb2.Segment]:
    return [
        mask_pb2.Segment(
            pixel_value=value, label=f"organ {value}", segmented_property_category=ORGAN,
            segmented_property_type=LIVER, display_color=mask_pb2.RgbColor(red=200, green=value),
        )
        for value in values
    ]  # fmt: skip


def _label_map(index: int, values: list[int]) -> np.ndarray:
    """Slice `index`'s labels: one band per segment, slice 0 empty (its frames are omitted)."""
    array = np.zeros((ROWS, COLUMNS), dtype=np.uint8)
    if index == 0:
        return array
    for position, value in enumerate(values):
        top = 4 + position * 18 + index % 5
        array[top : top + 10, 3 + index : 40 + index] = value
    return array


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


async def _annotation(channel: aio.Channel, people: People, ct: StoredSeries) -> int:
    data = struct_pb2.Struct()
    data.update({"kind": "segmentation"})
    reply = await annotation_pb2_grpc.AnnotationServiceStub(channel).CreateAnnotation(
        annotation_pb2.CreateAnnotationRequest(
            annotation=annotation_pb2.Annotation(
                project_id=people.project_id, study_uid=ct.study_uid, series_uid=ct.series_uid,
                annotation_type="segmentation", annotation_data=data,
            )
        ),
        metadata=people.writer.metadata(),
        timeout=20,
    )  # fmt: skip
    return reply.annotation.id


async def _upload_group(
    channel: aio.Channel, people: People, ct: StoredSeries, values: list[int], *,
    complete: bool = True, approve: bool = True, annotation_id: int = 0, supersedes: int = 0,
    parameters: dict[str, Any] | None = None,
) -> Uploaded:  # fmt: skip
    """A group of coded segments, uploaded with tickets, its slices bound by position; once
    complete, submitted by its writer and approved by the administrator unless told not to."""
    stub = mask_pb2_grpc.MaskServiceStub(channel)
    annotation_id = annotation_id or await _annotation(channel, people, ct)
    wanted = mask_pb2.MaskGroup(
        group_name="organs", model_name="seg-net", version="2.1", modality="CT",
        slice_count=SLICES, segments=_segments(values), supersedes_group_id=supersedes,
    )  # fmt: skip
    if parameters:
        wanted.inference_parameters.update(parameters)
    group = await stub.CreateMaskGroup(
        mask_pb2.CreateMaskGroupRequest(annotation_id=annotation_id, mask_group=wanted),
        metadata=people.writer.metadata(),
    )
    group_id = group.mask_group.id
    maps = {i: _label_map(i, values) for i in range(SLICES if complete else SLICES - 1)}
    images = {i: _png(a) for i, a in maps.items()}
    tickets = (
        await stub.CreateUploadUrls(
            mask_pb2.CreateUploadUrlsRequest(
                annotation_id=annotation_id,
                group_id=group_id,
                slices=[
                    mask_pb2.SliceUpload(
                        slice_index=i,
                        content_type="image/png",
                        size_bytes=len(image),
                        md5=hashlib.md5(image).hexdigest(),
                    )
                    for i, image in images.items()
                ],
                method=mask_pb2.UPLOAD_METHOD_POST,
            ),
            metadata=people.writer.metadata(),
        )
    ).tickets
    for ticket in tickets:
        fields: dict[str, Any] = dict(ticket.fields)
        fields["file"] = ("mask.png", images[ticket.slice_index], "image/png")
        response = await asyncio.to_thread(_http.request, "POST", ticket.url, fields=fields)
        assert response.status == 204
    done = await stub.CompleteUpload(
        mask_pb2.CompleteUploadRequest(
            annotation_id=annotation_id, group_id=group_id,
            uploads=[mask_pb2.CompletedUpload(upload_id=t.upload_id, width=COLUMNS, height=ROWS)
                     for t in tickets],
        ),
        metadata=people.writer.metadata(),
        timeout=30,
    )  # fmt: skip
    bound = {m.slice_index: m.sop_instance_uid for m in done.masks}
    assert all(bound.values())
    if complete and approve:
        await stub.SubmitMaskGroupForReview(
            mask_pb2.SubmitMaskGroupForReviewRequest(
                annotation_id=annotation_id, group_id=group_id
            ),
            metadata=people.writer.metadata(),
        )
        await stub.ApproveMaskGroup(
            mask_pb2.ApproveMaskGroupRequest(annotation_id=annotation_id, group_id=group_id),
            metadata=people.admin.metadata(),
        )
    return Uploaded(annotation_id, group_id, maps, bound)


async def _refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value


def _exports_of(live_stack: LocalStack, group_id: int) -> list[tuple[Any, ...]]:
    with psycopg.connect(live_stack.database_url) as conn:
        return conn.execute(
            "select id, object_key, seg_sop_instance_uid from mask_group_export"
            " where mask_group_id = %s order by id",
            [group_id],
        ).fetchall()


@pytest.fixture(scope="module")
async def exported(
    linked_channel: aio.Channel, people: People, ct: StoredSeries
) -> tuple[Uploaded, mask_pb2.ExportMaskGroupResponse, str]:
    uploaded = await _upload_group(linked_channel, people, ct, [1, 2, 5])
    request_id = uuid.uuid4().hex
    audit_request = uuid.uuid4().hex
    reply = await mask_pb2_grpc.MaskServiceStub(linked_channel).ExportMaskGroup(
        mask_pb2.ExportMaskGroupRequest(
            annotation_id=uploaded.annotation_id, group_id=uploaded.group_id,
            store_in_pacs=True, request_id=request_id,
        ),
        metadata=people.writer.metadata(audit_request),
        timeout=60,
    )  # fmt: skip
    return uploaded, reply, request_id + " " + audit_request


async def test_the_export_round_trips_through_the_pacs_and_is_audited(
    live_stack: LocalStack,
    exported: tuple[Uploaded, mask_pb2.ExportMaskGroupResponse, str],
    people: People,
    ct: StoredSeries,
    pacs_url: str,
    tmp_path: Path,
) -> None:
    uploaded, reply, ids = exported
    audit_request = ids.split()[1]
    record = reply.mask_group_export
    assert record.pacs_status == mask_pb2.PACS_STORE_STATUS_STORED
    assert record.pacs_failure_reason == ""
    assert (record.mask_group_id, record.segment_count) == (uploaded.group_id, 3)
    assert record.seg_series_uid.startswith("2.25.")
    assert record.series_number == 9001

    # QIDO-RS finds the SEG series in the source study; WADO-RS retrieves it.
    client = DICOMwebClient(pacs_url)
    found = await asyncio.to_thread(
        client.search_for_series, ct.study_uid, search_filters={"Modality": "SEG"}
    )
    assert [s["0020000E"]["Value"][0] for s in found] == [record.seg_series_uid]
    retrieved = await asyncio.to_thread(
        client.retrieve_instance, ct.study_uid, record.seg_series_uid, record.seg_sop_instance_uid
    )
    seg = hd.seg.Segmentation.from_dataset(retrieved)
    assert (str(seg.StudyInstanceUID), str(seg.PatientName)) == (ct.study_uid, SENTINEL)
    assert str(seg.FrameOfReferenceUID) == str(ct.datasets[0].FrameOfReferenceUID)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["organ 1", "organ 2", "organ 5"]
    assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("seg-net", "2.1")
    # The viewer shows which review state went to the PACS.
    assert (seg.ContentLabel, seg.SeriesDescription) == ("SEG_APPROVED", "organs (APPROVED)")

    # Every frame of every segment equals the uploaded pixels; the empty slice has none.
    # One frame per slice and segment with pixels: slice 0's are omitted.
    assert int(seg.NumberOfFrames) == (SLICES - 1) * 3
    slices = list(range(SLICES))
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[uploaded.bound[i] for i in slices],
        segment_numbers=[1, 2, 3],
        combine_segments=False,
        assert_missing_frames_are_empty=True,
    )
    for number, value in enumerate([1, 2, 5], start=1):
        for position, index in enumerate(slices):
            expected = (uploaded.label_maps[index] == value).astype(np.uint8)
            assert np.array_equal(pixels[position, :, :, number - 1], expected), (number, index)

    # The IOD validator finds no error.
    path = tmp_path / "export.dcm"
    retrieved.save_as(path, enforce_file_format=True)
    checked = await asyncio.to_thread(
        subprocess.run, ["dciodvfy", str(path)], capture_output=True, text=True, check=False
    )
    output = checked.stdout + checked.stderr
    assert "Segmentation" in output
    assert [line for line in output.splitlines() if line.startswith("Error")] == []

    # The download URL serves the stored file: the same instance, the recorded size.
    downloaded = (await asyncio.to_thread(_http.request, "GET", reply.download_url)).data
    assert len(downloaded) == record.size_bytes
    assert pydicom.dcmread(io.BytesIO(downloaded)).SOPInstanceUID == record.seg_sop_instance_uid

    # The audit row names the export (whose record names the group); refusals name the group.
    with psycopg.connect(live_stack.database_url) as conn:
        rows = conn.execute(
            "select action, outcome, project_id, resource_type, resource_ids, study_uid"
            " from audit_log where request_id = %s",
            [audit_request],
        ).fetchall()
    assert rows == [
        ("ExportMaskGroup", "ok", people.project_id, "mask_group_export",
         [record.id], ct.study_uid),
    ]  # fmt: skip


async def test_a_retry_returns_the_same_export_and_the_list_shows_it(
    live_stack: LocalStack,
    linked_channel: aio.Channel,
    exported: tuple[Uploaded, mask_pb2.ExportMaskGroupResponse, str],
    people: People,
) -> None:
    uploaded, first, ids = exported
    stub = mask_pb2_grpc.MaskServiceStub(linked_channel)
    again = await stub.ExportMaskGroup(
        mask_pb2.ExportMaskGroupRequest(
            annotation_id=uploaded.annotation_id, group_id=uploaded.group_id,
            store_in_pacs=True, request_id=ids.split()[0],
        ),
        metadata=people.writer.metadata(),
        timeout=60,
    )  # fmt: skip
    assert again.mask_group_export == first.mask_group_export
    assert len(_exports_of(live_stack, uploaded.group_id)) == 1
    # The same key for another request is refused, not answered with this export.
    other = await _refused(
        stub.ExportMaskGroup(
            mask_pb2.ExportMaskGroupRequest(
                annotation_id=uploaded.annotation_id, group_id=uploaded.group_id,
                store_in_pacs=False, request_id=ids.split()[0],
            ),
            metadata=people.writer.metadata(),
        )
    )  # fmt: skip
    assert other.code() == grpc.StatusCode.INVALID_ARGUMENT

    # A viewer may list (and download) exports, but not export.
    listed = await stub.ListMaskGroupExports(
        mask_pb2.ListMaskGroupExportsRequest(
            annotation_id=uploaded.annotation_id, group_id=uploaded.group_id
        ),
        metadata=people.viewer.metadata(),
    )
    assert list(listed.mask_group_exports) == [first.mask_group_export]
    assert [u.export_id for u in listed.download_urls] == [first.mask_group_export.id]
    denied = await _refused(
        stub.ExportMaskGroup(
            mask_pb2.ExportMaskGroupRequest(
                annotation_id=uploaded.annotation_id, group_id=uploaded.group_id
            ),
            metadata=people.viewer.metadata(),
        )
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_second_export_is_a_new_series_listed_first(
    linked_channel: aio.Channel,
    exported: tuple[Uploaded, mask_pb2.ExportMaskGroupResponse, str],
    people: People,
) -> None:
    uploaded, first, _ = exported
    stub = mask_pb2_grpc.MaskServiceStub(linked_channel)
    second = (
        await stub.ExportMaskGroup(
            mask_pb2.ExportMaskGroupRequest(
                annotation_id=uploaded.annotation_id, group_id=uploaded.group_id
            ),
            metadata=people.writer.metadata(),
            timeout=60,
        )
    ).mask_group_export
    assert second.pacs_status == mask_pb2.PACS_STORE_STATUS_NOT_REQUESTED
    assert second.seg_series_uid != first.mask_group_export.seg_series_uid
    assert second.series_number == 9002
    page = await stub.ListMaskGroupExports(
        mask_pb2.ListMaskGroupExportsRequest(
            annotation_id=uploaded.annotation_id, group_id=uploaded.group_id, page_size=1
        ),
        metadata=people.writer.metadata(),
    )
    assert [e.id for e in page.mask_group_exports] == [second.id]
    rest = await stub.ListMaskGroupExports(
        mask_pb2.ListMaskGroupExportsRequest(
            annotation_id=uploaded.annotation_id, group_id=uploaded.group_id,
            page_token=page.next_page_token,
        ),
        metadata=people.writer.metadata(),
    )  # fmt: skip
    assert [e.id for e in rest.mask_group_exports] == [first.mask_group_export.id]


async def test_version_2_is_exported_from_its_own_slices_with_its_parameters(
    linked_channel: aio.Channel, people: People, ct: StoredSeries, pacs_url: str
) -> None:
    first = await _upload_group(linked_channel, people, ct, [1])
    second = await _upload_group(
        linked_channel, people, ct, [2, 5], annotation_id=first.annotation_id,
        supersedes=first.group_id, parameters={"threshold": 0.7, "checkpoint": "epoch-40"},
    )  # fmt: skip
    stub = mask_pb2_grpc.MaskServiceStub(linked_channel)

    reply = await stub.ExportMaskGroup(
        mask_pb2.ExportMaskGroupRequest(
            annotation_id=second.annotation_id, group_id=second.group_id, store_in_pacs=True
        ),
        metadata=people.writer.metadata(),
        timeout=60,
    )

    record = reply.mask_group_export
    retrieved = await asyncio.to_thread(
        DICOMwebClient(pacs_url).retrieve_instance,
        ct.study_uid, record.seg_series_uid, record.seg_sop_instance_uid,
    )  # fmt: skip
    seg = hd.seg.Segmentation.from_dataset(retrieved)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["organ 2", "organ 5"]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmParameters == "threshold=0.7,checkpoint=epoch-40"
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[second.bound[i] for i in range(SLICES)],
        segment_numbers=[1, 2],
        combine_segments=False,
        assert_missing_frames_are_empty=True,
    )
    for position in range(SLICES):
        expected = (second.label_maps[position] == 5).astype(np.uint8)
        assert np.array_equal(pixels[position, :, :, 1], expected), position
    # The version it superseded stays readable and downloadable.
    old = await stub.CreateDownloadUrls(
        mask_pb2.CreateDownloadUrlsRequest(
            annotation_id=first.annotation_id, group_id=first.group_id
        ),
        metadata=people.viewer.metadata(),
    )
    assert len(old.urls) == SLICES


async def test_a_draft_is_refused_unless_the_project_allows_drafts(
    linked_channel: aio.Channel, people: People, ct: StoredSeries, pacs_url: str
) -> None:
    draft = await _upload_group(linked_channel, people, ct, [1], approve=False)
    stub = mask_pb2_grpc.MaskServiceStub(linked_channel)
    request = mask_pb2.ExportMaskGroupRequest(
        annotation_id=draft.annotation_id, group_id=draft.group_id, store_in_pacs=True
    )
    error = await _refused(stub.ExportMaskGroup(request, metadata=people.writer.metadata()))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "only approved groups" in (error.details() or "")

    identity = identity_pb2_grpc.IdentityServiceStub(linked_channel)
    allow = identity_pb2.UpdateProjectRequest(
        project_id=people.project_id,
        project=identity_pb2.Project(export_unapproved=True),
        update_mask=field_mask_pb2.FieldMask(paths=["export_unapproved"]),
    )
    await identity.UpdateProject(allow, metadata=people.admin.metadata())
    try:
        reply = await stub.ExportMaskGroup(request, metadata=people.writer.metadata(), timeout=60)
    finally:
        allow.project.export_unapproved = False
        await identity.UpdateProject(allow, metadata=people.admin.metadata())

    record = reply.mask_group_export
    retrieved = await asyncio.to_thread(
        DICOMwebClient(pacs_url).retrieve_instance,
        ct.study_uid, record.seg_series_uid, record.seg_sop_instance_uid,
    )  # fmt: skip
    assert (retrieved.ContentLabel, retrieved.SeriesDescription) == (
        "SEG_DRAFT",
        "organs (DRAFT)",
    )


async def test_a_pending_group_is_refused(
    live_stack: LocalStack, linked_channel: aio.Channel, people: People, ct: StoredSeries
) -> None:
    pending = await _upload_group(linked_channel, people, ct, [1], complete=False)
    error = await _refused(
        mask_pb2_grpc.MaskServiceStub(linked_channel).ExportMaskGroup(
            mask_pb2.ExportMaskGroupRequest(
                annotation_id=pending.annotation_id, group_id=pending.group_id,
                store_in_pacs=True,
            ),
            metadata=people.writer.metadata(),
        )
    )  # fmt: skip
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not COMPLETE" in (error.details() or "")
    assert SENTINEL not in (error.details() or "")
    assert _exports_of(live_stack, pending.group_id) == []


async def test_above_the_voxel_limit_is_resource_exhausted_with_nothing_recorded(
    live_stack: LocalStack, linked_channel: aio.Channel, people: People, ct: StoredSeries
) -> None:
    large = await _upload_group(linked_channel, people, ct, [1, 2, 3, 4, 5])
    error = await _refused(
        mask_pb2_grpc.MaskServiceStub(linked_channel).ExportMaskGroup(
            mask_pb2.ExportMaskGroupRequest(
                annotation_id=large.annotation_id, group_id=large.group_id, store_in_pacs=True
            ),
            metadata=people.writer.metadata(),
        )
    )
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(VOXEL_LIMIT) in (error.details() or "")
    assert SENTINEL not in (error.details() or "")
    assert _exports_of(live_stack, large.group_id) == []


@pytest.mark.parametrize("deleted", ["group", "annotation"])
async def test_deleting_the_group_or_annotation_deletes_its_exported_objects(
    live_stack: LocalStack,
    linked_channel: aio.Channel,
    people: People,
    ct: StoredSeries,
    deleted: str,
) -> None:
    uploaded = await _upload_group(linked_channel, people, ct, [2])
    stub = mask_pb2_grpc.MaskServiceStub(linked_channel)
    export = await stub.ExportMaskGroup(
        mask_pb2.ExportMaskGroupRequest(
            annotation_id=uploaded.annotation_id, group_id=uploaded.group_id
        ),
        metadata=people.writer.metadata(),
        timeout=60,
    )
    first = await asyncio.to_thread(_http.request, "GET", export.download_url)
    assert first.status == 200
    if deleted == "group":
        await stub.DeleteMaskGroup(
            mask_pb2.DeleteMaskGroupRequest(
                annotation_id=uploaded.annotation_id, group_id=uploaded.group_id, purge=True
            ),
            metadata=people.admin.metadata(),
        )
    else:
        # Only a purge deletes at once; the trash keeps everything until its retention ends.
        await annotation_pb2_grpc.AnnotationServiceStub(linked_channel).DeleteAnnotation(
            annotation_pb2.DeleteAnnotationRequest(
                annotation_id=uploaded.annotation_id, purge=True
            ),
            metadata=people.admin.metadata(),
        )
    assert _exports_of(live_stack, uploaded.group_id) == []
    # The sweepers remove what the outbox names: the .dcm goes with its group.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while loop.time() < deadline:
        status = (await asyncio.to_thread(_http.request, "GET", export.download_url)).status
        if status == 404:
            break
        await asyncio.sleep(0.3)
    else:
        pytest.fail("the exported object outlived its group")


async def test_patient_data_stays_out_of_logs_keys_and_errors(
    live_stack: LocalStack,
    linked: Linked,
    exported: tuple[Uploaded, mask_pb2.ExportMaskGroupResponse, str],
) -> None:
    uploaded, reply, _ = exported
    # The SEG carries the patient module (asserted above); our own records do not.
    keys = [row[1] for row in _exports_of(live_stack, uploaded.group_id)]
    assert keys
    for key in keys:
        assert key.startswith("exports/p")
        assert key.endswith(".dcm")
        assert SENTINEL not in key
        assert reply.mask_group_export.seg_sop_instance_uid not in key
    assert reply.mask_group_export.object_key in keys
    log = linked.log_path.read_text()
    assert SENTINEL not in log
    assert SENTINEL.split("^")[1] not in log
