"""Mask upload: the service path against raw uploads of the same bytes, in one run.

    .venv/bin/python -m bench.mask_upload [--slices 100 1000] [--rounds 5]

Starts the local stack (embedded PostgreSQL, SeaweedFS, the server) in a scratch directory and
measures, per series size:
  raw      N parallel POSTs of the slices straight to storage (policies signed by the bench)
  service  CreateUploadUrls + the same N parallel POSTs with the tickets + CompleteUpload, one
           call each and one after another: the cost of each phase
  client   what pipelines run: pacs.client's MaskUploader, N parallel
  push     PushMasks of the same slices through the server (one stream)
Rounds alternate raw and service, and the medians are compared: these machines are noisy, so only
ratios measured side by side mean anything. Results go to bench/results/mask_upload.json and
the chart to bench/results/mask_upload.png.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import urllib3
from google.protobuf import struct_pb2
from grpc import aio
from pacs.client.slices import Slice, from_bytes
from pacs.client.transfer import SignedUrlTransport
from pacs.client.uploads import MaskUploader, UploadOptions
from pacs.v1 import (
    annotation_pb2,
    annotation_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    mask_pb2,
    mask_pb2_grpc,
)

from bench.common import Panel, write_chart, write_results
from pacs_devstack.stack import LocalStack, StackConfig
from pacs_grpc.adapters.storage.objects import ObjectStore
from pacs_grpc.config import StorageSettings
from tests.support.png import png
from tests.support.users import login

SLICE_BYTES = 64 * 1024
PARALLEL = 16
RESULTS = Path(__file__).parent / "results"
_http = urllib3.PoolManager(maxsize=PARALLEL, retries=False, timeout=urllib3.Timeout(30))


def _slice(seed: int) -> bytes:
    image = png(32, 32, seed)
    # A tEXt chunk adds 16 bytes around its padding: the slice is exactly SLICE_BYTES.
    return png(32, 32, seed, padding=SLICE_BYTES - len(image) - 16)


def _post(url: str, fields: dict[str, str], body: bytes) -> None:
    response = _http.request("POST", url, fields={**fields, "file": ("m.png", body, "image/png")})
    if response.status != 204:
        raise RuntimeError(f"upload refused: {response.status}")


class _Authorized:
    """The two calls MaskUploader makes, on a blocking channel, with the bench user's token."""

    def __init__(self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
        self._stub = mask_pb2_grpc.MaskServiceStub(channel)
        self._metadata = metadata

    def CreateUploadUrls(  # noqa: N802 - the RPC's name
        self, request: mask_pb2.CreateUploadUrlsRequest
    ) -> mask_pb2.CreateUploadUrlsResponse:
        return self._stub.CreateUploadUrls(request, metadata=self._metadata)

    def CompleteUpload(  # noqa: N802 - the RPC's name
        self, request: mask_pb2.CompleteUploadRequest
    ) -> mask_pb2.CompleteUploadResponse:
        return self._stub.CompleteUpload(request, metadata=self._metadata)


async def _raw_round(store: ObjectStore, pool: ThreadPoolExecutor, bodies: list[bytes]) -> float:
    """Seconds to sign and POST `bodies` straight to storage: the same bytes, the same
    parallelism, no service."""
    started = time.perf_counter()
    tickets = []
    for _ in bodies:
        ticket = store.presign_post(
            f"bench/raw/{uuid.uuid4()}", content_type="image/png", size=len(bodies[0]),
            ttl=timedelta(minutes=10),
        )  # fmt: skip
        tickets.append((ticket.url, ticket.fields))
    await asyncio.get_running_loop().run_in_executor(None, _upload_all, pool, tickets, bodies)
    return time.perf_counter() - started


async def _new_group(
    masks: mask_pb2_grpc.MaskServiceAsyncStub,
    annotation_id: int,
    count: int,
    meta: tuple[tuple[str, str], ...],
) -> mask_pb2.CreateMaskGroupResponse:
    """An empty group for one timed upload: set up outside the timing."""
    return await masks.CreateMaskGroup(
        mask_pb2.CreateMaskGroupRequest(
            annotation_id=annotation_id, mask_group=mask_pb2.MaskGroup(slice_count=count)
        ),
        metadata=meta,
    )


def _client_upload(
    calls: _Authorized, annotation_id: int, group_id: int, items: list[Slice]
) -> float:
    """Seconds for pacs.client to upload and complete `items`, as a pipeline would."""
    started = time.perf_counter()
    transport = SignedUrlTransport(concurrency=PARALLEL)
    try:
        uploader = MaskUploader(calls, transport, UploadOptions(concurrency=PARALLEL))
        stats = uploader.upload(annotation_id, group_id, items)
    finally:
        transport.close()
    seconds = time.perf_counter() - started
    assert stats.group is not None
    assert stats.group.completed_slices == len(items)
    return seconds


def _upload_all(
    pool: ThreadPoolExecutor, tickets: list[tuple[str, dict[str, str]]], bodies: list[bytes]
) -> None:
    pairs = zip(tickets, bodies, strict=True)
    list(pool.map(lambda pair: _post(pair[0][0], pair[0][1], pair[1]), pairs))


def _run(slice_counts: list[int], rounds: int) -> dict[str, Any]:
    """Start the stack (synchronously: it runs asyncio itself), then measure."""
    scratch = Path(tempfile.mkdtemp(prefix="pacs-bench-"))
    scratch.chmod(0o755)
    stack = LocalStack(StackConfig(data_dir=scratch, durable=False))
    try:
        stack.start_dependencies()
        stack.migrate()
        stack.start_server(log_path=scratch / "server.log")
        return asyncio.run(_measure(stack, slice_counts, rounds))
    finally:
        stack.stop()
        shutil.rmtree(scratch, ignore_errors=True)


async def _measure(stack: LocalStack, slice_counts: list[int], rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {"slice_bytes": SLICE_BYTES, "parallel": PARALLEL, "series": {}}
    server = stack.server
    assert server is not None
    assert stack.issuer is not None
    if True:
        raw_store = ObjectStore(
            StorageSettings(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
        )
        async with aio.insecure_channel(server.address) as channel:
            user = await login(channel, stack.issuer, "bench", admin=True)
            meta = user.metadata()
            identity = identity_pb2_grpc.IdentityServiceStub(channel)
            project = await identity.CreateProject(
                identity_pb2.CreateProjectRequest(project=identity_pb2.Project(name="bench")),
                metadata=meta,
            )
            data = struct_pb2.Struct()
            data.update({"bench": True})
            annotation = await annotation_pb2_grpc.AnnotationServiceStub(channel).CreateAnnotation(
                annotation_pb2.CreateAnnotationRequest(
                    annotation=annotation_pb2.Annotation(
                        project_id=project.project.id, study_uid="1.2.3",
                        annotation_type="segmentation", annotation_data=data,
                    )
                ),
                metadata=meta,
            )  # fmt: skip
            masks = mask_pb2_grpc.MaskServiceStub(channel)
            annotation_id = annotation.annotation.id
            loop = asyncio.get_running_loop()
            blocking = grpc.insecure_channel(server.address)
            calls = _Authorized(blocking, meta)
            with blocking, ThreadPoolExecutor(PARALLEL) as pool:
                for count in slice_counts:
                    bodies = [_slice(seed) for seed in range(count)]
                    # A pipeline has each mask's digest from when it encoded the image, as it
                    # has the bytes: neither is part of the timed upload.
                    digests = [hashlib.md5(b).hexdigest() for b in bodies]  # noqa: S324 - S3 ETag
                    items = [from_bytes(index, body) for index, body in enumerate(bodies)]
                    timings: dict[str, list[float]] = {
                        "raw": [],
                        "service": [],
                        "push": [],
                        "client": [],
                        "tickets": [],
                        "uploads": [],
                        "complete": [],
                    }
                    for _ in range(rounds):
                        timings["raw"].append(await _raw_round(raw_store, pool, bodies))

                        group = await _new_group(masks, annotation_id, count, meta)
                        # Timed as the issue defines it: one ticket call, the parallel
                        # uploads, one completion (the group is set up beforehand).
                        started = time.perf_counter()
                        reply = await masks.CreateUploadUrls(
                            mask_pb2.CreateUploadUrlsRequest(
                                annotation_id=annotation_id, group_id=group.mask_group.id,
                                slices=[
                                    mask_pb2.SliceUpload(
                                        slice_index=i, size_bytes=len(b), md5=digests[i]
                                    )
                                    for i, b in enumerate(bodies)
                                ],
                            ),
                            metadata=meta,
                        )  # fmt: skip
                        tickets = [(t.url, dict(t.fields)) for t in reply.tickets]
                        ticketed = time.perf_counter()
                        await loop.run_in_executor(None, _upload_all, pool, tickets, bodies)
                        uploaded = time.perf_counter()
                        done = await masks.CompleteUpload(
                            mask_pb2.CompleteUploadRequest(
                                annotation_id=annotation_id, group_id=group.mask_group.id,
                                uploads=[
                                    mask_pb2.CompletedUpload(
                                        upload_id=t.upload_id, width=32, height=32
                                    )
                                    for t in reply.tickets
                                ],
                            ),
                            metadata=meta,
                        )  # fmt: skip
                        assert done.mask_group.completed_slices == count
                        finished = time.perf_counter()
                        timings["service"].append(finished - started)
                        timings["tickets"].append(ticketed - started)
                        timings["uploads"].append(uploaded - ticketed)
                        timings["complete"].append(finished - uploaded)

                        push_group = await _new_group(masks, annotation_id, count, meta)
                        started = time.perf_counter()
                        pushed = await masks.PushMasks(
                            _push(annotation_id, push_group.mask_group.id, bodies, digests),
                            metadata=meta,
                        )
                        assert pushed.mask_group.completed_slices == count
                        timings["push"].append(time.perf_counter() - started)

                        client_group = await _new_group(masks, annotation_id, count, meta)
                        timings["client"].append(
                            await asyncio.to_thread(
                                _client_upload, calls, annotation_id,
                                client_group.mask_group.id, items,
                            )
                        )  # fmt: skip
                    medians = {k: statistics.median(v) for k, v in timings.items()}
                    results["series"][str(count)] = {
                        "seconds": timings,
                        "median_seconds": medians,
                        "service_over_raw": medians["service"] / medians["raw"],
                        "push_over_raw": medians["push"] / medians["raw"],
                        "client_over_raw": medians["client"] / medians["raw"],
                    }
        raw_store.close()
    return results


def _push(annotation_id: int, group_id: int, bodies: list[bytes], digests: list[str]) -> Any:
    yield mask_pb2.PushMasksRequest(
        target=mask_pb2.PushTarget(annotation_id=annotation_id, group_id=group_id)
    )
    for index, body in enumerate(bodies):
        yield mask_pb2.PushMasksRequest(
            slice=mask_pb2.PushSliceHeader(
                slice_index=index, content_type="image/png", size_bytes=len(body), width=32,
                height=32, md5=digests[index],
            )
        )  # fmt: skip
        yield mask_pb2.PushMasksRequest(chunk=body)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    results = _run(args.slices, args.rounds)
    write_results("mask_upload", results)
    print(f"slices x {SLICE_BYTES // 1024} KiB, {PARALLEL} parallel, median of rounds")
    print(
        f"{'slices':>7} {'raw s':>8} {'client s':>9} {'ratio':>6} {'service s':>10} {'ratio':>6}"
        f" {'push s':>8} {'ratio':>6}"
    )
    for count, row in results["series"].items():
        m = row["median_seconds"]
        print(
            f"{count:>7} {m['raw']:>8.3f} {m['client']:>9.3f} {row['client_over_raw']:>6.2f}"
            f" {m['service']:>10.3f} {row['service_over_raw']:>6.2f}"
            f" {m['push']:>8.3f} {row['push_over_raw']:>6.2f}"
        )
    print("(client: pacs.client's MaskUploader; service: the bench's own calls, one per phase)")
    print("service path by phase (median s): tickets / uploads / completion")
    for count, row in results["series"].items():
        m = row["median_seconds"]
        print(f"{count:>7} {m['tickets']:>8.3f} {m['uploads']:>8.3f} {m['complete']:>8.3f}")
    print(f"results: {RESULTS / 'mask_upload.json'}, chart: {_chart(results)}")


def _chart(results: dict[str, Any]) -> Path:
    series = results["series"]
    groups = [f"{count} slices" for count in series]

    def medians(key: str) -> list[float]:
        return [row["median_seconds"][key] for row in series.values()]

    return write_chart(
        "mask_upload",
        f"Mask upload, {SLICE_BYTES // 1024} KiB slices, {PARALLEL} parallel (median of rounds)",
        [
            Panel(
                "series upload time",
                "seconds",
                groups,
                {
                    "raw uploads": medians("raw"),
                    "pacs.client": medians("client"),
                    "service path": medians("service"),
                    "PushMasks": medians("push"),
                },
            ),
            Panel(
                "against raw uploads",
                "time / raw time",
                groups,
                {
                    "pacs.client": [row["client_over_raw"] for row in series.values()],
                    "service path": [row["service_over_raw"] for row in series.values()],
                    "PushMasks": [row["push_over_raw"] for row in series.values()],
                },
            ),
        ],
    )


if __name__ == "__main__":
    main()
