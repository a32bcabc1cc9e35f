"""A client flooding CreateUploadUrls from a process of its own, as a runaway pipeline would.

Run as `python -m tests.support.flood ADDRESS ANNOTATION_ID GROUP_ID CONCURRENCY` with the
bearer token in PACS_FLOOD_TOKEN. It prints `refusing` once the server first refuses a call,
floods until a line arrives on stdin, then prints one JSON line: calls granted, calls refused
with a well-formed retry hint (RESOURCE_EXHAUSTED, `retry-after-ms`, "retry in N s"), the
longest hint, and calls that ended any other way.

Its own process, because a flood sharing the test's event loop would slow the test's own
measurements of the other user's calls, not just the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from typing import Any

import grpc
from grpc import aio
from pacs.v1 import mask_pb2, mask_pb2_grpc

_HINT = re.compile(r"retry in \d+ s$")


def _hint_ms(error: aio.AioRpcError) -> int | None:
    trailers: dict[str, Any] = dict(error.trailing_metadata() or ())  # type: ignore[arg-type]
    if error.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    if not _HINT.search(error.details() or "") or "retry-after" not in trailers:
        return None
    value = str(trailers.get("retry-after-ms", ""))
    return int(value) if value.isdigit() else None


async def flood(address: str, token: str, annotation_id: int, group_id: int, workers: int) -> None:
    request = mask_pb2.CreateUploadUrlsRequest(
        annotation_id=annotation_id,
        group_id=group_id,
        slices=[mask_pb2.SliceUpload(slice_index=0, content_type="image/png", size_bytes=100)],
    )
    metadata = (("authorization", f"Bearer {token}"),)
    counts = {"granted": 0, "refused": 0, "other": 0, "longest_hint_ms": 0}
    stop = asyncio.Event()

    async def worker(stub: mask_pb2_grpc.MaskServiceAsyncStub) -> None:
        while not stop.is_set():
            try:
                await stub.CreateUploadUrls(request, metadata=metadata, timeout=10)
                counts["granted"] += 1
            except aio.AioRpcError as error:
                hint = _hint_ms(error)
                if hint is None:
                    counts["other"] += 1
                    continue
                if counts["refused"] == 0:
                    print("refusing", flush=True)
                counts["refused"] += 1
                counts["longest_hint_ms"] = max(counts["longest_hint_ms"], hint)

    async with aio.insecure_channel(address) as channel:
        stub = mask_pb2_grpc.MaskServiceStub(channel)
        tasks = [asyncio.create_task(worker(stub)) for _ in range(workers)]
        await asyncio.to_thread(sys.stdin.readline)
        stop.set()
        await asyncio.gather(*tasks)
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    address, annotation, group, workers = sys.argv[1:5]
    asyncio.run(
        flood(address, os.environ["PACS_FLOOD_TOKEN"], int(annotation), int(group), int(workers))
    )
