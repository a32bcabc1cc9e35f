"""Ten minutes of 100-slice series with reads: memory flat, p99 steady (`make soak`).

SOAK_SECONDS shortens or lengthens the run. Figures go to test-artifacts/soak.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
import urllib3
from google.protobuf import struct_pb2
from grpc import aio
from pacs.v1 import (
    annotation_pb2,
    annotation_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    mask_pb2,
    mask_pb2_grpc,
)

from pacs_devstack.stack import LocalStack
from tests.support.png import png
from tests.support.stacks import own_stack
from tests.support.users import login

SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
SLICES = 100
# Ten windows, whatever the length: each is compared with the first settled one.
WINDOW = SECONDS / 10
_http = urllib3.PoolManager(maxsize=16, retries=False, timeout=urllib3.Timeout(30))


@pytest.fixture(scope="module")
def soak_stack(scratch_dir: Callable[[str], Path], artifacts_dir: Path) -> Iterator[LocalStack]:
    with own_stack(
        scratch_dir("soak"),
        # One user drives series back to back: the per-user limits would pace it, and the
        # run is about memory and latency, not limits (those have their own tests).
        {
            "SWEEPER_INTERVAL_SECONDS": "5",
            "RATE_LIMIT_TICKETS_PER_MINUTE": "0",
            "RATE_LIMIT_COMPLETIONS_PER_MINUTE": "0",
        },
        server_log=artifacts_dir / "soak-server.log",
    ) as stack:  # fmt: skip
        yield stack


def _upload(ticket: mask_pb2.UploadTicket, body: bytes) -> None:
    fields: dict[str, Any] = dict(ticket.fields)
    fields["file"] = ("m.png", body, "image/png")
    status = _http.request("POST", ticket.url, fields=fields).status
    assert status == 204, status


async def test_a_long_run_keeps_memory_flat_and_p99_steady(
    soak_stack: LocalStack, artifacts_dir: Path
) -> None:
    assert soak_stack.server is not None
    assert soak_stack.issuer is not None
    server = psutil.Process(soak_stack.server.process.pid)
    bodies = [png(64, 64, seed) for seed in range(SLICES)]
    loop = asyncio.get_running_loop()
    windows: list[dict[str, Any]] = []
    async with aio.insecure_channel(soak_stack.server.address) as channel:
        user = await login(channel, soak_stack.issuer, "soak", admin=True)
        meta = user.metadata()
        project = await identity_pb2_grpc.IdentityServiceStub(channel).CreateProject(
            identity_pb2.CreateProjectRequest(project=identity_pb2.Project(name="soak")),
            metadata=meta,
        )
        annotations = annotation_pb2_grpc.AnnotationServiceStub(channel)
        data = struct_pb2.Struct()
        data.update({"soak": True})
        annotation = await annotations.CreateAnnotation(
            annotation_pb2.CreateAnnotationRequest(
                annotation=annotation_pb2.Annotation(
                    project_id=project.project.id, study_uid="1.2.3.4.5",
                    annotation_type="segmentation", annotation_data=data,
                )
            ),
            metadata=meta,
        )  # fmt: skip
        annotation_id = annotation.annotation.id
        masks = mask_pb2_grpc.MaskServiceStub(channel)
        ended = time.monotonic() + SECONDS
        with ThreadPoolExecutor(16) as pool:
            while time.monotonic() < ended:
                window_end = min(ended, time.monotonic() + WINDOW)
                latencies: list[float] = []
                series = 0
                while time.monotonic() < window_end:
                    group = await masks.CreateMaskGroup(
                        mask_pb2.CreateMaskGroupRequest(
                            annotation_id=annotation_id,
                            mask_group=mask_pb2.MaskGroup(slice_count=SLICES),
                        ),
                        metadata=meta,
                    )
                    group_id = group.mask_group.id
                    started = time.perf_counter()
                    tickets = await masks.CreateUploadUrls(
                        mask_pb2.CreateUploadUrlsRequest(
                            annotation_id=annotation_id, group_id=group_id,
                            slices=[mask_pb2.SliceUpload(slice_index=i, size_bytes=len(b))
                                    for i, b in enumerate(bodies)],
                        ),
                        metadata=meta, timeout=30,
                    )  # fmt: skip
                    latencies.append(time.perf_counter() - started)
                    sent = pool.map(_upload, tickets.tickets, bodies)
                    await loop.run_in_executor(None, list, sent)
                    started = time.perf_counter()
                    done = await masks.CompleteUpload(
                        mask_pb2.CompleteUploadRequest(
                            annotation_id=annotation_id, group_id=group_id,
                            uploads=[mask_pb2.CompletedUpload(upload_id=t.upload_id, width=64,
                                                              height=64)
                                     for t in tickets.tickets],
                        ),
                        metadata=meta, timeout=30,
                    )  # fmt: skip
                    latencies.append(time.perf_counter() - started)
                    assert done.mask_group.completed_slices == SLICES
                    for read in (
                        masks.ListMasks(
                            mask_pb2.ListMasksRequest(
                                annotation_id=annotation_id, group_id=group_id, page_size=100
                            ),
                            metadata=meta, timeout=30,
                        ),
                        masks.CreateDownloadUrls(
                            mask_pb2.CreateDownloadUrlsRequest(
                                annotation_id=annotation_id, group_id=group_id
                            ),
                            metadata=meta, timeout=30,
                        ),
                        annotations.GetAnnotation(
                            annotation_pb2.GetAnnotationRequest(annotation_id=annotation_id),
                            metadata=meta, timeout=30,
                        ),
                    ):  # fmt: skip
                        started = time.perf_counter()
                        await read
                        latencies.append(time.perf_counter() - started)
                    # Groups are deleted again, so storage and the sweeper work all along.
                    await masks.DeleteMaskGroup(
                        mask_pb2.DeleteMaskGroupRequest(
                            annotation_id=annotation_id, group_id=group_id
                        ),
                        metadata=meta,
                    )
                    series += 1
                windows.append(
                    {
                        "series": series,
                        "rss_mib": server.memory_info().rss / 2**20,
                        "p50_ms": statistics.median(latencies) * 1000,
                        "p99_ms": statistics.quantiles(latencies, n=100)[98] * 1000,
                    }
                )
    (artifacts_dir / "soak.json").write_text(json.dumps(windows, indent=2))
    assert len(windows) >= 2, "the soak needs at least two windows to compare"
    # The first window warms caches and pools; memory after it must stay flat.
    settled, last = windows[1], windows[-1]
    assert last["rss_mib"] <= settled["rss_mib"] * 1.15 + 16, windows
    assert last["p99_ms"] <= max(settled["p99_ms"] * 2, settled["p99_ms"] + 50), windows
