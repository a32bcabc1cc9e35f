"""GetAnnotation as REST through Envoy, as gRPC through Envoy and as direct gRPC.

    .venv/bin/python -m bench.rest_vs_grpc [--rounds 20] [--block 50]

One client calls sequentially (one call in flight, keep-alive connections), so the differences
are the latency each hop adds, not queueing:
  grpc          the server directly (blocking grpc stub)
  envoy grpc    the same stub through Envoy's listener (the proxy hop alone)
  rest          GET /api/annotations/{id} through Envoy (urllib3), JSON transcoded by Envoy
Paths alternate in blocks of `block` calls for `rounds` rounds, so drift in the machine's
load reaches all three alike. Each reply is checked (the annotation asked for). Envoy's
request rate limit is raised for the run: the limiter is not what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import grpc
import urllib3
from pacs.v1 import annotation_pb2, annotation_pb2_grpc

from bench.common import (
    RESULTS,
    STUDY_ROOT,
    Panel,
    admin_session,
    latency_summary,
    local_stack,
    percentile,
    print_table,
    write_chart,
    write_results,
)
from pacs_devstack.stack import LocalStack

NAME = "rest_vs_grpc"
PATHS = ("grpc", "envoy grpc", "rest")
UNLIMITED = {"ENVOY_RATE_LIMIT_REQUESTS": "1000000", "ENVOY_RATE_LIMIT_BURST": "1000000"}


async def _setup(stack: LocalStack) -> tuple[str, int]:
    """The admin's token and an annotation to read."""
    assert stack.server is not None
    async with admin_session(stack.server.address, stack) as session:
        project_id = await session.create_project("bench-rest-vs-grpc")
        annotation = await session.create_annotation(project_id, f"{STUDY_ROOT}.1")
        return session.user.token, annotation.id


def _callers(
    stack: LocalStack, token: str, annotation_id: int, http: urllib3.PoolManager
) -> tuple[dict[str, Callable[[], None]], list[grpc.Channel]]:
    assert stack.server is not None
    assert stack.envoy is not None
    metadata = (("authorization", f"Bearer {token}"),)
    request = annotation_pb2.GetAnnotationRequest(annotation_id=annotation_id)
    channels = [
        grpc.insecure_channel(stack.server.address),
        grpc.insecure_channel(stack.envoy.grpc_address),
    ]
    direct, proxied = (annotation_pb2_grpc.AnnotationServiceStub(c) for c in channels)

    def grpc_call(stub: annotation_pb2_grpc.AnnotationServiceStub) -> Callable[[], None]:
        def call() -> None:
            reply = stub.GetAnnotation(request, metadata=metadata, timeout=10)
            if reply.annotation.id != annotation_id:
                raise AssertionError("gRPC returned another annotation")

        return call

    url = f"{stack.envoy.url}/api/annotations/{annotation_id}"
    headers = {"authorization": f"Bearer {token}"}

    def rest_call() -> None:
        response = http.request("GET", url, headers=headers)
        if response.status != 200:
            raise AssertionError(f"REST answered {response.status}")
        # int64 ids are JSON strings (proto3 JSON mapping).
        if int(json.loads(response.data)["annotation"]["id"]) != annotation_id:
            raise AssertionError("REST returned another annotation")

    return {
        "grpc": grpc_call(direct),
        "envoy grpc": grpc_call(proxied),
        "rest": rest_call,
    }, channels


def _measure(stack: LocalStack, rounds: int, block: int, warmup: int) -> dict[str, Any]:
    token, annotation_id = asyncio.run(_setup(stack))
    http = urllib3.PoolManager(maxsize=1, retries=False, timeout=urllib3.Timeout(10))
    calls, channels = _callers(stack, token, annotation_id, http)
    latencies: dict[str, list[float]] = {path: [] for path in PATHS}
    try:
        for path in PATHS:
            for _ in range(warmup):
                calls[path]()
        for _ in range(rounds):
            for path in PATHS:
                call = calls[path]
                for _ in range(block):
                    started = time.perf_counter()
                    call()
                    latencies[path].append(time.perf_counter() - started)
    finally:
        for channel in channels:
            channel.close()
        http.clear()
    summaries = {path: latency_summary(latencies[path]) for path in PATHS}
    direct = summaries["grpc"]
    added = {
        path: {
            "p50_ms": summaries[path]["p50_ms"] - direct["p50_ms"],
            "p99_ms": summaries[path]["p99_ms"] - direct["p99_ms"],
        }
        for path in PATHS[1:]
    }
    # Transcoding alone: REST against gRPC through the same Envoy.
    added["rest over envoy grpc"] = {
        "p50_ms": summaries["rest"]["p50_ms"] - summaries["envoy grpc"]["p50_ms"],
        "p99_ms": summaries["rest"]["p99_ms"] - summaries["envoy grpc"]["p99_ms"],
    }
    return {
        "rounds": rounds,
        "block": block,
        "paths": summaries,
        "added_over_direct_grpc": added,
        "p90_ms": {path: percentile(latencies[path], 90) * 1000 for path in PATHS},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block", type=int, default=50, help="calls per path per round")
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured calls per path")
    args = parser.parse_args(argv)
    with local_stack(NAME, environment=UNLIMITED) as stack:
        scratch = stack.config.data_dir
        stack.start_envoy(log_path=scratch / "envoy.log")
        results = _measure(stack, args.rounds, args.block, args.warmup)
    write_results(NAME, results)
    _report(results)


def _report(results: dict[str, Any]) -> None:
    paths, added = results["paths"], results["added_over_direct_grpc"]
    print(
        f"\nGetAnnotation, one sequential client: {results['rounds']} rounds x"
        f" {results['block']} calls per path; baseline = direct gRPC"
    )
    print_table(
        ["path", "calls", "p50 ms", "p99 ms", "mean ms", "added p50 ms", "added p99 ms"],
        [
            [
                path, s["calls"], s["p50_ms"], s["p99_ms"], s["mean_ms"],
                added[path]["p50_ms"] if path in added else 0.0,
                added[path]["p99_ms"] if path in added else 0.0,
            ]
            for path, s in paths.items()
        ],
    )  # fmt: skip
    transcoding = added["rest over envoy grpc"]
    print(
        f"transcoding alone (rest - envoy grpc): p50 {transcoding['p50_ms']:+.3f} ms,"
        f" p99 {transcoding['p99_ms']:+.3f} ms"
    )
    groups = list(paths)
    chart = write_chart(
        NAME,
        "GetAnnotation: direct gRPC, gRPC via Envoy, REST via Envoy",
        [
            Panel(
                "latency, one sequential client",
                "ms",
                groups,
                {
                    "p50": [paths[p]["p50_ms"] for p in groups],
                    "p99": [paths[p]["p99_ms"] for p in groups],
                },
            )
        ],
    )
    print(f"results: {RESULTS / (NAME + '.json')}, chart: {chart}")


if __name__ == "__main__":
    main()
