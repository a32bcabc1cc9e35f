"""ExportMaskGroup of 100 and 1,000 slices of 512x512, against highdicom building the same SEG.

    .venv/bin/python -m bench.export_seg [--slices 100 1000] [--size 512] [--repeats 3]

For each series length, a synthetic CT is stored in the stack's own Orthanc, a mask group of
three coded segments is pushed to it (slices bound to the CT's images by position), submitted
for review by the bench's administrator and approved by a reviewer (only approved groups are
exported), and then:
  highdicom     the bench process builds the same SEG from the same source metadata (WADO-RS,
                no pixels) and label maps with highdicom alone, and encodes it (Part 10)
  export        ExportMaskGroup, store_in_pacs false: read the slices from storage, the
                metadata from the PACS, decode, build in a worker thread, store, record
  export+stow   the same with store_in_pacs true: also STOW-RS to Orthanc
The ratio export / highdicom is what the service adds to the library's own work; each figure
is the median of --repeats runs measured one after another in the same run, after one
untimed run of each. Every export is checked: the SEG it stored has one frame per (slice,
segment) with pixels, like highdicom's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import urllib3
from dicomweb_client import DICOMwebClient
from google.protobuf import struct_pb2
from pacs.v1 import annotation_pb2, identity_pb2, mask_pb2, mask_pb2_grpc, review_pb2
from PIL import Image

from bench.common import (
    Panel,
    Session,
    admin_session,
    print_table,
    write_chart,
    write_results,
)
from pacs_devstack.sample_ct import store_series, synthetic_ct
from pacs_devstack.stack import LocalStack, StackConfig
from tests.support.users import ApiUser, login

NAME = "export_seg"
SEGMENTS = (1, 2, 3)
# Instances per STOW-RS request when storing the CT: bounds the bench's memory per request.
_STORE_BATCH = 50
_CHUNK = 1024 * 1024


@contextlib.contextmanager
def pacs_stack(environment: dict[str, str]) -> Iterator[LocalStack]:
    """The local stack with its own Orthanc, the server linked to it (PACS_VALIDATE=enforce)."""
    scratch = Path(tempfile.mkdtemp(prefix=f"pacs-bench-{NAME}-"))
    scratch.chmod(0o755)
    stack = LocalStack(
        StackConfig(data_dir=scratch, durable=False, environment=environment, pacs=True)
    )
    try:
        stack.start_dependencies()
        stack.migrate()
        stack.start_server(log_path=scratch / "server.log")
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def label_maps(slices: int, size: int) -> np.ndarray:
    """(slices, size, size) uint8: three discs per slice, drifting through the volume."""
    y, x = np.mgrid[0:size, 0:size]
    maps = np.zeros((slices, size, size), dtype=np.uint8)
    for index in range(slices):
        for value in SEGMENTS:
            cx = size * (0.25 + 0.25 * (value - 1)) + (index % 7)
            radius = size * 0.1 + (index % 5)
            maps[index][(x - cx) ** 2 + (y - size / 2) ** 2 < radius**2] = value
    return maps


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def store_ct(pacs_url: str, slices: int, size: int) -> tuple[str, str]:
    datasets = synthetic_ct(slices=slices, rows=size, columns=size)
    for start in range(0, slices, _STORE_BATCH):
        store_series(pacs_url, datasets[start : start + _STORE_BATCH])
    first = datasets[0]
    return str(first.StudyInstanceUID), str(first.SeriesInstanceUID)


async def push_group(
    session: Session, project_id: int, study: str, series: str, maps: np.ndarray
) -> tuple[int, int]:
    """An annotation and a COMPLETE group of `maps`, pushed; (annotation id, group id)."""
    data = struct_pb2.Struct()
    data.update({"kind": "segmentation"})
    annotation = await session.annotations.CreateAnnotation(
        annotation_pb2.CreateAnnotationRequest(
            annotation=annotation_pb2.Annotation(
                project_id=project_id, study_uid=study, series_uid=series,
                annotation_type="segmentation", annotation_data=data,
            )
        ),
        metadata=session.metadata,
    )  # fmt: skip
    masks = mask_pb2_grpc.MaskServiceStub(session.channel)
    code = mask_pb2.CodedConcept(
        code_value="10200004", coding_scheme_designator="SCT", code_meaning="Liver"
    )
    group = await masks.CreateMaskGroup(
        mask_pb2.CreateMaskGroupRequest(
            annotation_id=annotation.annotation.id,
            mask_group=mask_pb2.MaskGroup(
                model_name="bench-net", version="1", slice_count=len(maps),
                segments=[mask_pb2.Segment(pixel_value=v, label=f"segment {v}",
                                           segmented_property_type=code) for v in SEGMENTS],
            ),
        ),
        metadata=session.metadata,
    )  # fmt: skip
    annotation_id, group_id = annotation.annotation.id, group.mask_group.id
    images = [_png(m) for m in maps]
    size = maps.shape[1]

    def stream() -> Iterator[mask_pb2.PushMasksRequest]:
        yield mask_pb2.PushMasksRequest(
            target=mask_pb2.PushTarget(annotation_id=annotation_id, group_id=group_id)
        )
        for index, image in enumerate(images):
            digest = hashlib.md5(image, usedforsecurity=False).hexdigest()
            yield mask_pb2.PushMasksRequest(
                slice=mask_pb2.PushSliceHeader(
                    slice_index=index, content_type="image/png", size_bytes=len(image),
                    width=size, height=size, md5=digest,
                )
            )  # fmt: skip
            for start in range(0, len(image), _CHUNK):
                yield mask_pb2.PushMasksRequest(chunk=image[start : start + _CHUNK])

    pushed = await masks.PushMasks(stream(), metadata=session.metadata, timeout=600)
    assert pushed.mask_group.status == mask_pb2.MASK_GROUP_STATUS_COMPLETE
    return annotation_id, group_id


async def add_reviewer(session: Session, stack: LocalStack, project_id: int) -> ApiUser:
    """A user with the reviewer role in the project: nobody approves their own work, so the
    administrator who pushes the groups cannot approve them."""
    assert stack.issuer is not None, "benchmarks use the dev token issuer"
    reviewer = await login(session.channel, stack.issuer, f"bench-reviewer-{uuid.uuid4().hex[:6]}")
    await session.identity.AddProjectMember(
        identity_pb2.AddProjectMemberRequest(
            project_id=project_id, user_id=reviewer.user_id,
            role=identity_pb2.PROJECT_ROLE_REVIEWER,
        ),
        metadata=session.metadata,
    )  # fmt: skip
    return reviewer


async def approve_group(
    session: Session, reviewer: ApiUser, annotation_id: int, group_id: int
) -> None:
    """Submitted by the administrator who pushed it, approved by the reviewer: exportable."""
    masks = mask_pb2_grpc.MaskServiceStub(session.channel)
    await masks.SubmitMaskGroupForReview(
        mask_pb2.SubmitMaskGroupForReviewRequest(annotation_id=annotation_id, group_id=group_id),
        metadata=session.metadata,
    )
    approved = await masks.ApproveMaskGroup(
        mask_pb2.ApproveMaskGroupRequest(annotation_id=annotation_id, group_id=group_id),
        metadata=reviewer.metadata(),
    )
    if approved.mask_group.review.state != review_pb2.REVIEW_STATE_APPROVED:
        raise RuntimeError("the reviewer's approval did not leave the group APPROVED")


def highdicom_alone(metadata: list[dict[str, Any]], bound: dict[str, np.ndarray]) -> bytes:
    """The same SEG built by highdicom from the same metadata and label maps, encoded."""
    sources = []
    for item in metadata:
        kept = {tag: value for tag, value in item.items() if "BulkDataURI" not in value}
        kept.pop("7FE00010", None)
        ds = pydicom.Dataset.from_json(kept)
        if str(ds.SOPInstanceUID) in bound:
            sources.append(ds)
    sources.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    pixels = np.stack([bound[str(ds.SOPInstanceUID)] for ds in sources])
    code = hd.sr.CodedConcept("10200004", "SCT", "Liver")
    tissue = hd.sr.CodedConcept("85756007", "SCT", "Tissue")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="bench-net", version="1",
        family=hd.sr.CodedConcept("123109", "DCM", "Artificial Intelligence"),
    )  # fmt: skip
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=v, segment_label=f"segment {v}",
                segmented_property_category=tissue, segmented_property_type=code,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
            for v in SEGMENTS
        ],
        series_instance_uid=hd.UID(), series_number=9000, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="bench", manufacturer_model_name="bench",
        software_versions="1", device_serial_number="1", omit_empty_frames=True,
    )  # fmt: skip
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


async def export_once(
    session: Session, annotation_id: int, group_id: int, *, stow: bool
) -> tuple[float, mask_pb2.ExportMaskGroupResponse]:
    masks = mask_pb2_grpc.MaskServiceStub(session.channel)
    started = time.perf_counter()
    reply = await masks.ExportMaskGroup(
        mask_pb2.ExportMaskGroupRequest(
            annotation_id=annotation_id, group_id=group_id, store_in_pacs=stow,
            request_id=uuid.uuid4().hex,
        ),
        metadata=session.metadata,
        timeout=1800,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    if stow and reply.mask_group_export.pacs_status != mask_pb2.PACS_STORE_STATUS_STORED:
        raise RuntimeError("the PACS did not store the exported SEG")
    return elapsed, reply


def frames_of(data: bytes) -> int:
    return int(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).NumberOfFrames)


@contextlib.asynccontextmanager
async def _session(stack: LocalStack) -> AsyncIterator[Session]:
    assert stack.server is not None
    async with admin_session(stack.server.address, stack) as session:
        yield session


async def run(stack: LocalStack, lengths: list[int], size: int, repeats: int) -> dict[str, Any]:
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(120))
    results: dict[str, Any] = {}
    async with _session(stack) as session:
        project_id = await session.create_project(f"bench-export-{uuid.uuid4().hex[:6]}")
        reviewer = await add_reviewer(session, stack, project_id)
        for slices in lengths:
            study, series = await asyncio.to_thread(store_ct, stack.pacs_url, slices, size)
            maps = label_maps(slices, size)
            annotation_id, group_id = await push_group(session, project_id, study, series, maps)
            await approve_group(session, reviewer, annotation_id, group_id)
            listed = await mask_pb2_grpc.MaskServiceStub(session.channel).ListMasks(
                mask_pb2.ListMasksRequest(
                    annotation_id=annotation_id, group_id=group_id, page_size=500
                ),
                metadata=session.metadata,
            )
            bound = {m.sop_instance_uid: maps[m.slice_index] for m in listed.masks}
            token = listed.next_page_token
            while token:
                more = await mask_pb2_grpc.MaskServiceStub(session.channel).ListMasks(
                    mask_pb2.ListMasksRequest(annotation_id=annotation_id, group_id=group_id,
                                              page_size=500, page_token=token),
                    metadata=session.metadata,
                )  # fmt: skip
                bound.update({m.sop_instance_uid: maps[m.slice_index] for m in more.masks})
                token = more.next_page_token
            client = DICOMwebClient(stack.pacs_url)
            metadata = await asyncio.to_thread(client.retrieve_series_metadata, study, series)
            library: list[float] = []
            export: list[float] = []
            stowed: list[float] = []
            # Untimed: the first build in each process pays for imports and caches.
            await asyncio.to_thread(highdicom_alone, metadata, bound)
            await export_once(session, annotation_id, group_id, stow=False)
            expected_frames = 0
            for _ in range(repeats):
                started = time.perf_counter()
                built = await asyncio.to_thread(highdicom_alone, metadata, bound)
                library.append(time.perf_counter() - started)
                expected_frames = frames_of(built)
                for stow, into in ((False, export), (True, stowed)):
                    elapsed, reply = await export_once(session, annotation_id, group_id, stow=stow)
                    into.append(elapsed)
                    stored = (await asyncio.to_thread(http.request, "GET", reply.download_url)).data
                    if frames_of(stored) != expected_frames:
                        raise RuntimeError("the export's frames differ from highdicom's")
            row = {
                "slices": slices,
                "frames": expected_frames,
                "highdicom_s": statistics.median(library),
                "export_s": statistics.median(export),
                "export_stow_s": statistics.median(stowed),
            }
            row["ratio"] = row["export_s"] / row["highdicom_s"]
            row["ratio_stow"] = row["export_stow_s"] / row["highdicom_s"]
            results[str(slices)] = row
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args(argv)
    voxels = max(options.slices) * options.size**2 * len(SEGMENTS)
    environment = {
        "EXPORT_MAX_VOXELS": str(max(voxels, 1)),
        "MAX_SLICES_PER_REQUEST": str(max(1000, *options.slices)),
        # The bench pushes whole series in one stream, faster than a user would.
        "RATE_LIMIT_COMPLETIONS_PER_MINUTE": "0",
        "RATE_LIMIT_PUSHES_PER_MINUTE": "0",
    }
    with pacs_stack(environment) as stack:
        results = asyncio.run(run(stack, options.slices, options.size, options.repeats))
    rows = [
        [r["slices"], r["frames"], r["highdicom_s"], r["export_s"], r["export_stow_s"],
         r["ratio"], r["ratio_stow"]]
        for r in results.values()
    ]  # fmt: skip
    print_table(
        ["slices", "frames", "highdicom s", "export s", "export+stow s", "ratio", "ratio stow"],
        rows,
    )
    write_results(
        NAME,
        {"size": options.size, "repeats": options.repeats, "segments": len(SEGMENTS),
         "results": results},
    )  # fmt: skip
    groups = [str(r["slices"]) for r in results.values()]
    write_chart(
        NAME,
        f"ExportMaskGroup vs highdicom alone ({options.size}x{options.size}, 3 segments)",
        [
            Panel(
                "Build time (median)",
                "seconds",
                groups,
                {
                    "highdicom alone": [r["highdicom_s"] for r in results.values()],
                    "export": [r["export_s"] for r in results.values()],
                    "export + STOW-RS": [r["export_stow_s"] for r in results.values()],
                },
            ),
            Panel("Export / highdicom", "ratio", groups,
                  {"export": [r["ratio"] for r in results.values()],
                   "export + STOW-RS": [r["ratio_stow"] for r in results.values()]}),
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
