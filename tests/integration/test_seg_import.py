"""ImportSegmentation (issue 13, item 5) against a real Orthanc, PostgreSQL and SeaweedFS.

The SEG is made here, independently of the server's own SEG code: highdicom, from a synthetic
CT stored in Orthanc, stored back with STOW-RS (dicomweb-client). Its source images are given
to highdicom out of slice order, so the SEG's own derivation order is not the series' order and
the server has to bind each slice to its image by the PACS's geometry.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import highdicom as hd
import numpy as np
import psycopg
import pytest
import requests
import urllib3
from dicomweb_client import DICOMwebClient
from google.protobuf import struct_pb2
from grpc import aio
from pacs.v1 import (
    annotation_pb2,
    annotation_pb2_grpc,
    mask_pb2,
    mask_pb2_grpc,
)
from PIL import Image
from pydicom.sr.codedict import codes

from pacs_devstack.server import ServerProcess
from pacs_devstack.stack import LocalStack
from tests.support.pacs import StoredSeries, store_synthetic_series
from tests.support.projects import ANNOTATOR, new_team
from tests.support.stacks import ServerStarter
from tests.support.users import ApiUser, unique_name

SLICES, ROWS, COLUMNS = 10, 64, 64
MODEL, MODEL_VERSION = "TotalSegmentator", "2.4.0"
# (number, label, category, type): SNOMED CT, as DICOM now requires (SCT, not SRT).
SEGMENTS = (
    (1, "Liver", ("123037004", "Anatomical Structure"), ("10200004", "Liver")),
    (2, "Spleen", ("123037004", "Anatomical Structure"), ("78961009", "Spleen")),
    (3, "Lesion", ("49755003", "Morphologically Altered Structure"), ("52988006", "Lesion")),
)
# The smallest IMPORT_MAX_BYTES the server accepts; every SEG here is larger.
SMALL_IMPORT_LIMIT = 1024
_http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(10))


@dataclass(frozen=True)
class Seg:
    """A SEG as made and stored here, with what the import must reproduce."""

    data: bytes
    study_uid: str
    series_uid: str
    sop_uid: str
    # Source SOP Instance UID -> its label map (pixel value = segment number).
    label_maps: dict[str, np.ndarray]


@dataclass
class World:
    channel: aio.Channel
    masks: mask_pb2_grpc.MaskServiceAsyncStub
    writer: ApiUser
    project_id: int
    ct: StoredSeries
    seg: Seg
    foreign_seg: Seg
    live_stack: LocalStack

    async def annotation(self) -> int:
        data = struct_pb2.Struct()
        data.update({"source": "seg-import"})
        reply = await annotation_pb2_grpc.AnnotationServiceStub(self.channel).CreateAnnotation(
            annotation_pb2.CreateAnnotationRequest(
                annotation=annotation_pb2.Annotation(
                    project_id=self.project_id,
                    study_uid=self.ct.study_uid,
                    series_uid=self.ct.series_uid,
                    annotation_type="segmentation",
                    annotation_data=data,
                )
            ),
            metadata=self.writer.metadata(),
        )
        return int(reply.annotation.id)

    def objects(self, annotation_id: int) -> list[str]:
        """Everything stored for the annotation's masks (imported slices included)."""
        assert self.live_stack.s3 is not None
        client = self.live_stack.s3.client()
        prefix = f"masks/p{self.project_id}/a{annotation_id}/"
        return [o.object_name for o in client.list_objects("pacs-masks", prefix, recursive=True)]

    async def groups(self, annotation_id: int) -> list[mask_pb2.MaskGroup]:
        reply = await self.masks.ListMaskGroups(
            mask_pb2.ListMaskGroupsRequest(annotation_id=annotation_id),
            metadata=self.writer.metadata(),
        )
        return list(reply.mask_groups)


def _label_maps(count: int) -> np.ndarray:
    """Three segments in different places per slice; the first and last slices empty."""
    maps = np.zeros((count, ROWS, COLUMNS), dtype=np.uint8)
    for index in range(1, count - 1):
        maps[index, 8 : 20 + index, 10:30] = 1
        maps[index, 40:56, 36 + index % 5 : 50] = 2
        maps[index, 24 + index : 30 + index, 40:46] = 3  # inside nothing else
    return maps


def _make_seg(ct: StoredSeries) -> Seg:
    order = [*range(SLICES)]
    # Out of slice order on purpose (see the module's docstring).
    order = order[1::2] + order[0::2]
    sources = [ct.datasets[i] for i in order]
    maps = _label_maps(SLICES)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=MODEL,
        family=codes.cid7162.ArtificialIntelligence,
        version=MODEL_VERSION,
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=hd.sr.CodedConcept(category[0], "SCT", category[1]),
            segmented_property_type=hd.sr.CodedConcept(kind[0], "SCT", kind[1]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, label, category, kind in SEGMENTS
    ]
    series_uid, sop_uid = hd.UID(), hd.UID()
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=maps[order],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=901,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="Test Vendor",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
    )
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return Seg(
        buffer.getvalue(),
        ct.study_uid,
        str(series_uid),
        str(sop_uid),
        {str(ct.datasets[i].SOPInstanceUID): maps[i] for i in range(SLICES)},
    )


def _stow(pacs_url: str, data: bytes) -> None:
    import pydicom

    with requests.Session() as session:
        DICOMwebClient(pacs_url, session=session).store_instances(
            [pydicom.dcmread(io.BytesIO(data))]
        )


@pytest.fixture(scope="module")
async def world(
    live_stack: LocalStack, pacs_server: ServerProcess, pacs_url: str
) -> AsyncIterator[World]:
    assert live_stack.issuer is not None
    ct = store_synthetic_series(pacs_url, slices=SLICES, rows=ROWS, columns=COLUMNS)
    seg = _make_seg(ct)
    _stow(pacs_url, seg.data)
    foreign = _make_seg(store_synthetic_series(pacs_url, slices=SLICES, rows=ROWS, columns=COLUMNS))
    _stow(pacs_url, foreign.data)
    async with aio.insecure_channel(pacs_server.address) as channel:
        team = await new_team(
            channel, live_stack.issuer, unique_name("imp"), {"importer": ANNOTATOR}
        )
        yield World(
            channel, _stub(channel), team["importer"], team.project_id, ct,
            seg, foreign, live_stack,
        )  # fmt: skip


def _stub(channel: aio.Channel) -> mask_pb2_grpc.MaskServiceAsyncStub:
    return mask_pb2_grpc.MaskServiceStub(channel)


def _from_pacs(annotation_id: int, seg: Seg, **fields: Any) -> mask_pb2.ImportSegmentationRequest:
    return mask_pb2.ImportSegmentationRequest(
        annotation_id=annotation_id,
        pacs=mask_pb2.SegmentationInPacs(
            seg_study_uid=seg.study_uid, seg_series_uid=seg.series_uid, seg_instance_uid=seg.sop_uid
        ),
        **fields,
    )


def _post(ticket: mask_pb2.UploadTicket, body: bytes) -> int:
    fields: dict[str, Any] = dict(ticket.fields)
    fields["file"] = ("seg.dcm", body, "application/dicom")
    return int(_http.request("POST", ticket.url, fields=fields).status)


async def _uploaded(world: World, annotation_id: int, body: bytes) -> str:
    reply = await world.masks.CreateSegmentationUpload(
        mask_pb2.CreateSegmentationUploadRequest(annotation_id=annotation_id, size_bytes=len(body)),
        metadata=world.writer.metadata(),
    )
    assert reply.ticket.method == mask_pb2.UPLOAD_METHOD_POST
    assert await asyncio.to_thread(_post, reply.ticket, body) in (200, 201, 204)
    return str(reply.ticket.upload_id)


async def _assert_imported(world: World, annotation_id: int, group: mask_pb2.MaskGroup) -> None:
    """The group holds exactly the SEG: segments, codes, provenance, and each slice's pixels
    bound to its source image, in slice order along the normal."""
    assert group.status == mask_pb2.MASK_GROUP_STATUS_COMPLETE
    assert group.slice_count == SLICES
    assert group.completed_slices == SLICES
    assert (group.model_name, group.version) == (MODEL, MODEL_VERSION)
    assert group.modality == "CT"
    assert [
        (
            s.pixel_value,
            s.label,
            s.segmented_property_category.code_value,
            s.segmented_property_category.coding_scheme_designator,
            s.segmented_property_type.code_value,
            s.segmented_property_type.code_meaning,
            s.algorithm_type,
        )
        for s in group.segments
    ] == [
        (n, label, category[0], "SCT", kind[0], kind[1], mask_pb2.SEGMENT_ALGORITHM_TYPE_AUTOMATIC)
        for n, label, category, kind in SEGMENTS
    ]
    listed = await world.masks.ListMasks(
        mask_pb2.ListMasksRequest(annotation_id=annotation_id, group_id=group.id, page_size=100),
        metadata=world.writer.metadata(),
    )
    by_id = {m.id: m for m in listed.masks}
    # Slice i is the series' image i along the normal, whatever order the SEG lists them in.
    assert [m.sop_instance_uid for m in listed.masks] == world.ct.sop_instance_uids
    assert [m.slice_index for m in listed.masks] == list(range(SLICES))
    urls = await world.masks.CreateDownloadUrls(
        mask_pb2.CreateDownloadUrlsRequest(annotation_id=annotation_id, group_id=group.id),
        metadata=world.writer.metadata(),
    )
    assert len(urls.urls) == SLICES
    for link in urls.urls:
        mask = by_id[link.mask_id]
        response = await asyncio.to_thread(_http.request, "GET", link.url)
        assert response.status == 200
        image = Image.open(io.BytesIO(response.data))
        assert image.mode == "L"
        assert (mask.width, mask.height) == (COLUMNS, ROWS)
        expected = world.seg.label_maps[mask.sop_instance_uid]
        assert np.array_equal(np.asarray(image), expected), f"slice {mask.slice_index}"
    assert any(world.seg.label_maps[uid].any() for uid in world.ct.sop_instance_uids)


async def test_import_from_the_pacs_gives_the_segs_pixels_segments_codes_and_model(
    world: World,
) -> None:
    annotation_id = await world.annotation()
    reply = await world.masks.ImportSegmentation(
        _from_pacs(annotation_id, world.seg, group_name="from PACS"),
        metadata=world.writer.metadata(),
    )
    assert reply.mask_group.group_name == "from PACS"
    await _assert_imported(world, annotation_id, reply.mask_group)
    assert len(world.objects(annotation_id)) == SLICES


async def test_import_of_an_uploaded_seg_gives_the_same_and_a_retry_the_same_group(
    world: World,
) -> None:
    annotation_id = await world.annotation()
    upload_id = await _uploaded(world, annotation_id, world.seg.data)
    request = mask_pb2.ImportSegmentationRequest(
        annotation_id=annotation_id, upload_id=upload_id, request_id=str(uuid.uuid4())
    )
    first = await world.masks.ImportSegmentation(request, metadata=world.writer.metadata())
    await _assert_imported(world, annotation_id, first.mask_group)
    # The uploaded SEG is queued for deletion; the retry is answered without it.
    again = await world.masks.ImportSegmentation(request, metadata=world.writer.metadata())
    assert again.mask_group.id == first.mask_group.id
    assert [g.id for g in await world.groups(annotation_id)] == [first.mask_group.id]
    assert len(world.objects(annotation_id)) == SLICES


async def _refused(
    world: World,
    annotation_id: int,
    call: Any,
    code: grpc.StatusCode,
    *words: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == code, raised.value.details()
    details = raised.value.details() or ""
    for word in words:
        assert word in details
    # Errors name fields, never the UIDs a client sent.
    assert world.ct.study_uid not in details
    assert world.foreign_seg.study_uid not in details
    assert await world.groups(annotation_id) == []
    assert world.objects(annotation_id) == []


async def test_a_seg_of_another_study_is_refused_leaving_nothing(world: World) -> None:
    annotation_id = await world.annotation()
    metadata = world.writer.metadata()
    await _refused(
        world, annotation_id,
        world.masks.ImportSegmentation(
            _from_pacs(annotation_id, world.foreign_seg), metadata=metadata
        ),
        grpc.StatusCode.FAILED_PRECONDITION, "study",
    )  # fmt: skip
    # Uploaded, the file's own study is what is checked.
    upload_id = await _uploaded(world, annotation_id, world.foreign_seg.data)
    await _refused(
        world, annotation_id,
        world.masks.ImportSegmentation(
            mask_pb2.ImportSegmentationRequest(annotation_id=annotation_id, upload_id=upload_id),
            metadata=metadata,
        ),
        grpc.StatusCode.FAILED_PRECONDITION, "another study",
    )  # fmt: skip


async def test_a_ct_image_and_random_bytes_are_not_segmentations(world: World) -> None:
    annotation_id = await world.annotation()
    ct = world.ct
    not_a_seg = mask_pb2.ImportSegmentationRequest(
        annotation_id=annotation_id,
        pacs=mask_pb2.SegmentationInPacs(
            seg_study_uid=ct.study_uid,
            seg_series_uid=ct.series_uid,
            seg_instance_uid=ct.sop_instance_uids[3],
        ),
    )
    await _refused(
        world, annotation_id,
        world.masks.ImportSegmentation(not_a_seg, metadata=world.writer.metadata()),
        grpc.StatusCode.INVALID_ARGUMENT, "pacs", "not a DICOM Segmentation",
    )  # fmt: skip
    upload_id = await _uploaded(world, annotation_id, secrets.token_bytes(4096))
    await _refused(
        world, annotation_id,
        world.masks.ImportSegmentation(
            mask_pb2.ImportSegmentationRequest(annotation_id=annotation_id, upload_id=upload_id),
            metadata=world.writer.metadata(),
        ),
        grpc.StatusCode.INVALID_ARGUMENT, "upload_id", "not a readable DICOM",
    )  # fmt: skip


async def test_an_upload_id_that_no_ticket_of_this_annotation_issued_is_refused(
    world: World,
) -> None:
    first, second = await world.annotation(), await world.annotation()
    upload_id = await _uploaded(world, first, world.seg.data)
    # A ticket of another annotation names another key: nothing there.
    await _refused(
        world, second,
        world.masks.ImportSegmentation(
            mask_pb2.ImportSegmentationRequest(annotation_id=second, upload_id=upload_id),
            metadata=world.writer.metadata(),
        ),
        grpc.StatusCode.FAILED_PRECONDITION, "upload_id",
    )  # fmt: skip


@pytest.fixture(scope="module")
def small_limit_server(
    live_stack: LocalStack, artifacts_dir: Path, pacs_url: str
) -> Iterator[ServerProcess]:
    starter = ServerStarter(live_stack, artifacts_dir, "seg-import-small")
    try:
        yield starter.start_linked(pacs_url, {"IMPORT_MAX_BYTES": str(SMALL_IMPORT_LIMIT)})
    finally:
        starter.stop_all()


async def test_a_seg_above_import_max_bytes_is_refused_leaving_nothing(
    world: World, small_limit_server: ServerProcess
) -> None:
    annotation_id = await world.annotation()
    assert len(world.seg.data) > SMALL_IMPORT_LIMIT
    async with aio.insecure_channel(small_limit_server.address) as channel:
        masks = _stub(channel)
        await _refused(
            world, annotation_id,
            masks.ImportSegmentation(
                _from_pacs(annotation_id, world.seg), metadata=world.writer.metadata()
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED, str(SMALL_IMPORT_LIMIT),
        )  # fmt: skip
        await _refused(
            world, annotation_id,
            masks.CreateSegmentationUpload(
                mask_pb2.CreateSegmentationUploadRequest(
                    annotation_id=annotation_id, size_bytes=len(world.seg.data)
                ),
                metadata=world.writer.metadata(),
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED, "size_bytes",
        )  # fmt: skip


async def test_an_import_is_audited_with_the_new_group(
    world: World, live_stack: LocalStack
) -> None:
    annotation_id = await world.annotation()
    request_id = uuid.uuid4().hex
    reply = await world.masks.ImportSegmentation(
        _from_pacs(annotation_id, world.seg), metadata=world.writer.metadata(request_id)
    )
    with psycopg.connect(live_stack.database_url) as conn:
        rows = conn.execute(
            "select action, outcome, project_id, resource_type, resource_ids, study_uid"
            " from audit_log where request_id = %s",
            [request_id],
        ).fetchall()
    assert rows == [
        (
            "ImportSegmentation", "ok", world.project_id, "mask_group", [reply.mask_group.id],
            world.ct.study_uid,
        )
    ]  # fmt: skip


async def test_patient_data_of_an_imported_seg_stays_out_of_logs_keys_and_errors(
    world: World, pacs_url: str, pacs_server: ServerProcess, artifacts_dir: Path
) -> None:
    """A SEG carries its study's patient module (DICOM requires it); what the server keeps
    and says about it must not: the log, the object keys and a refusal's text."""
    sentinel = f"PHISENTINEL{secrets.token_hex(3).upper()}^IMPORTED"
    ct = store_synthetic_series(
        pacs_url, slices=SLICES, rows=ROWS, columns=COLUMNS, patient_name=sentinel
    )
    seg = _make_seg(ct)
    _stow(pacs_url, seg.data)
    data = struct_pb2.Struct()
    data.update({"source": "phi"})
    annotation = await annotation_pb2_grpc.AnnotationServiceStub(world.channel).CreateAnnotation(
        annotation_pb2.CreateAnnotationRequest(
            annotation=annotation_pb2.Annotation(
                project_id=world.project_id, study_uid=ct.study_uid, series_uid=ct.series_uid,
                annotation_type="segmentation", annotation_data=data,
            )
        ),
        metadata=world.writer.metadata(),
    )  # fmt: skip
    imported = await world.masks.ImportSegmentation(
        _from_pacs(annotation.annotation.id, seg), metadata=world.writer.metadata()
    )
    assert imported.mask_group.completed_slices > 0
    keys = world.objects(annotation.annotation.id)
    assert keys
    assert not [key for key in keys if "PHISENTINEL" in key or ct.study_uid in key]
    # Refused (another study's annotation): the text names the field, not the patient.
    other = await world.annotation()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await world.masks.ImportSegmentation(
            _from_pacs(other, seg), metadata=world.writer.metadata()
        )
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "PHISENTINEL" not in (raised.value.details() or "")
    port = pacs_server.address.rsplit(":", 1)[1]
    log = (artifacts_dir / f"pacs-linked-server-{port}.log").read_text()
    assert "rpc" in log
    assert "PHISENTINEL" not in log
