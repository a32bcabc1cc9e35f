"""Unary read: GetAnnotation (token check, access check, one database read, audit row) against a
bare grpc.aio echo server, at rising concurrency, in one run; then ListAnnotations against
GetAnnotation.

    .venv/bin/python -m bench.unary_read [--concurrency 1 8 32 128] [--seconds 5] [--profile]
        [--list-clients 32] [--no-list] [--profile-list]

One client process drives both servers with the same closed loop: N workers on one channel,
each calling back to back. The client shares this machine's CPUs with the server and the
database, so the echo server (its own process, no auth, no database) shows what the client and
gRPC alone allow; the ratios are what the service costs on top. Levels alternate echo and
service so that both see the same background load. Server CPU per call comes from the
process's own CPU time, which the sharing does not distort.

List vs get: one study holds 50 annotations with realistic drawings (about 1 KiB of JSON each,
see realistic_annotation_data), and ListAnnotations asks for all 50 in one page. After the
levels, --list-clients clients (32) run GetAnnotation and ListAnnotations alternately, two
rounds each (get, list, get, list), so both see the same background load; the figure of merit
is list_cpu_ratio, the median server CPU per list call over the median per get call, with the
target 3.0 (a page of 50 costs at most three single reads). A list reply without exactly 50
annotations counts as an error. --no-list skips the comparison.

--profile records the server with py-spy during an extra run at 32 clients (outside the
table) and prints its hot spots: bench/results/unary_read.profile.txt holds the raw stacks.
--profile-list does the same for ListAnnotations, into bench/results/unary_read_list.profile.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import statistics
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
from grpc import aio
from pacs.v1 import annotation_pb2

from bench import hotspots
from bench.common import (
    REPO,
    RESULTS,
    STUDY_ROOT,
    LoadResult,
    Panel,
    admin_session,
    closed_loop,
    cpu_seconds,
    local_stack,
    print_table,
    realistic_annotation_data,
    server_profile,
    write_chart,
    write_results,
)
from bench.echo_server import METHOD
from pacs_devstack.ports import free_port
from pacs_devstack.process import dying_with_parent, stop_child
from pacs_devstack.stack import LocalStack

NAME = "unary_read"
LIST_NAME = "unary_read_list"
PROFILE_CONCURRENCY = 32
# One page of the list comparison: every annotation of its study.
LIST_PAGE = 50
LIST_ROUNDS = 2
LIST_TARGET_RATIO = 3.0


class WrongReply(Exception):
    """A ListAnnotations reply without the full page: counted as an error by closed_loop."""


@contextlib.contextmanager
def echo_server() -> Iterator[tuple[str, int]]:
    """The echo baseline in its own process: (address, pid)."""
    port = free_port()
    process = subprocess.Popen(
        dying_with_parent([sys.executable, "-m", "bench.echo_server", "--port", str(port)]),
        cwd=REPO, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=15)
        yield address, process.pid
    finally:
        stop_child(process, signal.SIGTERM, 10)


async def _measure_cpu(
    pid: int, run: Callable[[], Awaitable[LoadResult]]
) -> tuple[LoadResult, float]:
    """The load's result and the server's CPU microseconds per call (warm-up included)."""
    before = cpu_seconds(pid)
    result = await run()
    cpu = cpu_seconds(pid) - before
    calls = result.total_ok + result.total_errors
    return result, cpu / max(calls, 1) * 1e6


async def _measure(
    args: argparse.Namespace, stack: LocalStack, echo: tuple[str, int]
) -> dict[str, Any]:
    assert stack.server is not None
    server_pid = stack.server.process.pid
    echo_address, echo_pid = echo
    async with admin_session(stack.server.address, stack) as session:
        project_id = await session.create_project("bench-unary-read")
        annotation = await session.create_annotation(project_id, f"{STUDY_ROOT}.1")
        request = annotation_pb2.GetAnnotationRequest(annotation_id=annotation.id)
        reply = await session.annotations.GetAnnotation(request, metadata=session.metadata)
        # The echo carries as many bytes each way as the service's reply, and the same token.
        payload = bytes(reply.ByteSize())
        metadata = session.metadata

        async def get(_: int) -> object:
            return await session.annotations.GetAnnotation(request, metadata=metadata)

        list_request = annotation_pb2.ListAnnotationsRequest()
        list_reply_bytes = 0
        if not args.no_list or args.profile_list:
            list_study = f"{STUDY_ROOT}.2"
            for index in range(LIST_PAGE):
                await session.create_annotation(
                    project_id, list_study, realistic_annotation_data(index)
                )
            list_request = annotation_pb2.ListAnnotationsRequest(
                project_id=project_id, study_uid=list_study, page_size=LIST_PAGE
            )
            list_reply = await session.annotations.ListAnnotations(list_request, metadata=metadata)
            if len(list_reply.annotations) != LIST_PAGE:
                raise SystemExit(
                    f"ListAnnotations returned {len(list_reply.annotations)} annotations,"
                    f" expected {LIST_PAGE}"
                )
            list_reply_bytes = list_reply.ByteSize()

        async def list_page(_: int) -> object:
            page = await session.annotations.ListAnnotations(list_request, metadata=metadata)
            if len(page.annotations) != LIST_PAGE:
                raise WrongReply(f"{len(page.annotations)} annotations")
            return page

        async with aio.insecure_channel(echo_address) as echo_channel:
            # Bytes in and out: nothing to (de)serialize.
            echo_call = echo_channel.unary_unary(
                METHOD, request_serializer=None, response_deserializer=None
            )

            async def echo_once(_: int) -> object:
                return await echo_call(payload, metadata=metadata)

            levels = []
            for clients in args.concurrency:

                def load(call: Callable[[int], Awaitable[object]], n: int = clients) -> Any:
                    return lambda: closed_loop(
                        call, concurrency=n, seconds=args.seconds, warmup_seconds=args.warmup
                    )

                base, base_cpu = await _measure_cpu(echo_pid, load(echo_once))
                real, real_cpu = await _measure_cpu(server_pid, load(get))
                levels.append(_level(clients, base, base_cpu, real, real_cpu))
                print(f"  {clients} clients: echo {base.rps:.0f}/s, service {real.rps:.0f}/s")

            listing = None
            if not args.no_list:
                listing = await _compare_list(args, server_pid, get, list_page)
                listing["reply_bytes"] = {"get": len(payload), "list": list_reply_bytes}

            profile = None
            if args.profile:
                profile = await _profile(server_pid, get, args.profile_seconds, NAME)
            profile_list = None
            if args.profile_list:
                profile_list = await _profile(
                    server_pid, list_page, args.profile_seconds, LIST_NAME
                )
    return {
        "seconds_per_level": args.seconds,
        "warmup_seconds": args.warmup,
        "reply_bytes": len(payload),
        "levels": levels,
        "list": listing,
        "profile": profile,
        "profile_list": profile_list,
    }


async def _compare_list(
    args: argparse.Namespace,
    pid: int,
    get: Callable[[int], Awaitable[object]],
    list_page: Callable[[int], Awaitable[object]],
) -> dict[str, Any]:
    """GetAnnotation and ListAnnotations alternately at --list-clients; medians over rounds."""
    clients = args.list_clients
    runs: dict[str, list[dict[str, Any]]] = {"get": [], "list": []}
    for round_index in range(LIST_ROUNDS):
        for side, call in (("get", get), ("list", list_page)):

            def load(call: Callable[[int], Awaitable[object]] = call) -> Awaitable[LoadResult]:
                return closed_loop(
                    call, concurrency=clients, seconds=args.seconds,
                    warmup_seconds=args.warmup, errors=(grpc.RpcError, WrongReply),
                )  # fmt: skip

            result, cpu = await _measure_cpu(pid, load)
            summary = result.summary()
            summary["server_cpu_us_per_call"] = cpu
            runs[side].append(summary)
            print(
                f"  list vs get, round {round_index + 1}, {side}: {result.rps:.0f}/s,"
                f" {cpu:.0f} us server CPU per call"
            )

    def median_of(side: str) -> dict[str, Any]:
        rounds = runs[side]
        figures: dict[str, Any] = {
            key: statistics.median(r[key] for r in rounds)
            for key in ("rps", "p50_ms", "p99_ms", "server_cpu_us_per_call")
        }
        figures["errors"] = sum(r["errors"] for r in rounds)
        figures["first_error"] = next((r["first_error"] for r in rounds if r["first_error"]), None)
        figures["rounds"] = rounds
        return figures

    get_figures, list_figures = median_of("get"), median_of("list")
    ratio = list_figures["server_cpu_us_per_call"] / get_figures["server_cpu_us_per_call"]
    return {
        "concurrency": clients,
        "rounds": LIST_ROUNDS,
        "page_size": LIST_PAGE,
        "annotation_json_bytes": statistics.mean(
            len(json.dumps(realistic_annotation_data(i))) for i in range(LIST_PAGE)
        ),
        "get": get_figures,
        "list": list_figures,
        "list_cpu_ratio": ratio,
        "target_ratio": LIST_TARGET_RATIO,
        "meets_target": ratio <= LIST_TARGET_RATIO,
    }


def _level(
    clients: int, base: LoadResult, base_cpu: float, real: LoadResult, real_cpu: float
) -> dict[str, Any]:
    echo, service = base.summary(), real.summary()
    echo["server_cpu_us_per_call"] = base_cpu
    service["server_cpu_us_per_call"] = real_cpu
    return {
        "concurrency": clients,
        "echo": echo,
        "service": service,
        "rps_ratio": service["rps"] / echo["rps"],
        "p50_ratio": service["p50_ms"] / echo["p50_ms"],
        "p99_ratio": service["p99_ms"] / echo["p99_ms"],
    }


async def _profile(
    pid: int, call: Callable[[int], Awaitable[object]], seconds: float, name: str
) -> dict[str, Any]:
    """py-spy on the server while PROFILE_CONCURRENCY clients call; the hot spots found
    (raw stacks in bench/results/<name>.profile.txt)."""
    async with server_profile(pid, seconds, name) as raw:
        # The load starts while py-spy attaches and outlasts its recording.
        load = await closed_loop(
            call, concurrency=PROFILE_CONCURRENCY, seconds=seconds + 1, warmup_seconds=1
        )
    return {
        "concurrency": PROFILE_CONCURRENCY,
        "seconds": seconds,
        "rps_while_profiled": load.rps,
        "raw_stacks": str(raw.relative_to(REPO)),
        **hotspots.summarize(raw),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per level")
    parser.add_argument("--profile", action="store_true", help="py-spy the server at 32 clients")
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument(
        "--list-clients", type=int, default=32, help="clients of the list vs get comparison"
    )
    parser.add_argument("--no-list", action="store_true", help="skip the list vs get comparison")
    parser.add_argument(
        "--profile-list", action="store_true", help="py-spy the server on ListAnnotations"
    )
    args = parser.parse_args(argv)

    with local_stack(NAME) as stack, echo_server() as echo:
        results = asyncio.run(_measure(args, stack, echo))
    write_results(NAME, results)
    _report(results)


def _report(results: dict[str, Any]) -> None:
    levels = results["levels"]
    print(
        f"\nUnary read: GetAnnotation vs bare grpc.aio echo, {results['seconds_per_level']:g} s"
        " per level, one client process on the same 2 CPUs"
    )
    print_table(
        ["clients", "echo rps", "echo p50", "echo p99", "svc rps", "svc p50", "svc p99",
         "rps ratio", "p50 ratio", "p99 ratio", "echo cpu/call", "svc cpu/call", "errors"],
        [
            [
                lv["concurrency"], lv["echo"]["rps"], lv["echo"]["p50_ms"], lv["echo"]["p99_ms"],
                lv["service"]["rps"], lv["service"]["p50_ms"], lv["service"]["p99_ms"],
                lv["rps_ratio"], lv["p50_ratio"], lv["p99_ratio"],
                f"{lv['echo']['server_cpu_us_per_call']:.0f} us",
                f"{lv['service']['server_cpu_us_per_call']:.0f} us",
                lv["echo"]["errors"] + lv["service"]["errors"],
            ]
            for lv in levels
        ],
    )  # fmt: skip
    print("(latencies in ms; ratio = service / echo; cpu = server process CPU per call)")
    groups = [str(lv["concurrency"]) for lv in levels]

    def series(key: str) -> dict[str, list[float]]:
        return {side: [lv[side][key] for lv in levels] for side in ("echo", "service")}

    chart = write_chart(
        NAME,
        "GetAnnotation vs bare grpc.aio echo (x: concurrent clients)",
        [
            Panel("throughput", "calls / s", groups, series("rps")),
            Panel("p50 latency", "ms", groups, series("p50_ms"), log_scale=True),
            Panel("p99 latency", "ms", groups, series("p99_ms"), log_scale=True),
        ],
    )
    print(f"results: {RESULTS / (NAME + '.json')}, chart: {chart}")
    if results["list"] is not None:
        _report_list(results["list"])
    if results["profile"] is not None:
        hotspots.report(results["profile"])
    if results["profile_list"] is not None:
        print("\nListAnnotations:", end="")
        hotspots.report(results["profile_list"])


def _report_list(listing: dict[str, Any]) -> None:
    get, page = listing["get"], listing["list"]
    print(
        f"\nList vs get: ListAnnotations page of {listing['page_size']} annotations"
        f" (~{listing['annotation_json_bytes']:.0f} B JSON each) vs GetAnnotation,"
        f" {listing['concurrency']} clients, median of {listing['rounds']} alternating rounds"
    )
    print_table(
        ["call", "rps", "p50", "p99", "server cpu/call", "ratio to get", "target", "errors"],
        [
            ["GetAnnotation", get["rps"], get["p50_ms"], get["p99_ms"],
             f"{get['server_cpu_us_per_call']:.0f} us", 1.0, "", get["errors"]],
            ["ListAnnotations", page["rps"], page["p50_ms"], page["p99_ms"],
             f"{page['server_cpu_us_per_call']:.0f} us", listing["list_cpu_ratio"],
             f"<= {listing['target_ratio']:g}", page["errors"]],
        ],
    )  # fmt: skip
    verdict = "meets" if listing["meets_target"] else "MISSES"
    print(f"(latencies in ms; list_cpu_ratio {listing['list_cpu_ratio']:.2f} {verdict} the target)")
    chart = write_chart(
        LIST_NAME,
        f"ListAnnotations ({listing['page_size']} per page) vs GetAnnotation,"
        f" {listing['concurrency']} clients",
        [
            Panel(
                "server CPU per call", "us", ["per call"],
                {"GetAnnotation": [get["server_cpu_us_per_call"]],
                 "ListAnnotations": [page["server_cpu_us_per_call"]]},
            ),
            Panel(
                "throughput", "calls / s", ["calls / s"],
                {"GetAnnotation": [get["rps"]], "ListAnnotations": [page["rps"]]},
            ),
        ],
    )  # fmt: skip
    print(f"chart: {chart}")


if __name__ == "__main__":
    main()
