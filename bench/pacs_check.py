"""CreateAnnotation latency with the PACS check, against the same server without it.

    .venv/bin/python -m bench.pacs_check [--rounds 20] [--block 25] [--warmup 20]

One stack with a local Orthanc holding a small synthetic CT; three servers on it, called in
turn by one sequential client, in interleaved rounds so that drift hits all three alike:
  off        PACS_VALIDATE=off: the baseline
  cached     PACS_VALIDATE=enforce with the positive-answer cache (the default)
  uncached   PACS_VALIDATE=enforce with PACS_CACHE_SIZE=0: a QIDO-RS call on every create
Each create names the study and series, so a checked create asks for the series (one QIDO-RS
call when nothing is cached). The figure that matters is the added p50 of `cached` over `off`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from grpc import aio

from bench.common import (
    RESULTS,
    Panel,
    Session,
    latency_summary,
    new_annotation,
    print_table,
    write_chart,
    write_results,
)
from pacs_devstack.issuer import DevIssuer
from pacs_devstack.ports import free_port
from pacs_devstack.sample_ct import store_series, synthetic_ct
from pacs_devstack.server import ServerProcess
from pacs_devstack.stack import LocalStack, StackConfig
from tests.support.users import login

NAME = "pacs_check"
SERVERS = {
    "off": {"PACS_VALIDATE": "off"},
    "cached": {"PACS_VALIDATE": "enforce"},
    "uncached": {"PACS_VALIDATE": "enforce", "PACS_CACHE_SIZE": "0"},
}


@contextlib.contextmanager
def _linked_stack() -> Iterator[tuple[LocalStack, dict[str, ServerProcess]]]:
    scratch = Path(tempfile.mkdtemp(prefix=f"pacs-bench-{NAME}-"))
    # The embedded PostgreSQL runs as an unprivileged user when we are root.
    scratch.chmod(0o755)
    stack = LocalStack(StackConfig(data_dir=scratch, durable=False, pacs=True))
    servers: dict[str, ServerProcess] = {}
    try:
        stack.start_dependencies()
        stack.migrate()
        for name, overrides in SERVERS.items():
            port = free_port()
            environment = {**stack.server_environment(port), **overrides}
            server = ServerProcess(environment, port, log_path=scratch / f"server-{name}.log")
            server.start(30.0)
            servers[name] = server
        yield stack, servers
    finally:
        for server in servers.values():
            server.terminate()
        stack.stop()
        shutil.rmtree(scratch, ignore_errors=True)


async def _measure(
    servers: dict[str, ServerProcess], issuer: DevIssuer, study: str, series: str, args: Any
) -> dict[str, list[float]]:
    channels = {name: aio.insecure_channel(s.address) for name, s in servers.items()}
    try:
        sessions = {}
        for name, channel in channels.items():
            user = await login(channel, issuer, "bench", admin=True)
            sessions[name] = Session(channel, user)
        projects = {name: await s.create_project(f"bench-{name}") for name, s in sessions.items()}

        async def create(name: str) -> None:
            request = new_annotation(projects[name], study)
            request.annotation.series_uid = series
            await sessions[name].annotations.CreateAnnotation(
                request, metadata=sessions[name].metadata, timeout=10
            )

        for name in servers:
            for _ in range(args.warmup):
                await create(name)
        latencies: dict[str, list[float]] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name in servers:
                for _ in range(args.block):
                    started = time.perf_counter()
                    await create(name)
                    latencies[name].append(time.perf_counter() - started)
        return latencies
    finally:
        for channel in channels.values():
            await channel.close(None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block", type=int, default=25, help="calls per server per round")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured calls per server")
    args = parser.parse_args(argv)
    with _linked_stack() as (stack, servers):
        assert stack.issuer is not None, "benchmarks use the dev token issuer"
        datasets = synthetic_ct(slices=4, rows=64, columns=64)
        store_series(stack.pacs_url, datasets)
        study, series = datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID
        latencies = asyncio.run(_measure(servers, stack.issuer, study, series, args))
    summaries = {name: latency_summary(values) for name, values in latencies.items()}
    base = summaries["off"]
    results = {
        "rounds": args.rounds,
        "block": args.block,
        "servers": summaries,
        "added_over_off": {
            name: {
                "p50_ms": s["p50_ms"] - base["p50_ms"],
                "p99_ms": s["p99_ms"] - base["p99_ms"],
            }
            for name, s in summaries.items()
        },
    }
    write_results(NAME, results)
    _report(results)


def _report(results: dict[str, Any]) -> None:
    servers, added = results["servers"], results["added_over_off"]
    print(
        f"\nCreateAnnotation (study and series), one sequential client: {results['rounds']}"
        f" rounds x {results['block']} calls per server; baseline = PACS_VALIDATE=off"
    )
    print_table(
        ["server", "calls", "p50 ms", "p99 ms", "mean ms", "added p50 ms", "added p99 ms"],
        [
            [name, s["calls"], s["p50_ms"], s["p99_ms"], s["mean_ms"],
             added[name]["p50_ms"], added[name]["p99_ms"]]
            for name, s in servers.items()
        ],
    )  # fmt: skip
    names = list(servers)
    chart = write_chart(
        NAME,
        "CreateAnnotation with and without the PACS check",
        [
            Panel(
                "latency, one sequential client",
                "ms",
                names,
                {
                    "p50": [servers[n]["p50_ms"] for n in names],
                    "p99": [servers[n]["p99_ms"] for n in names],
                },
            )
        ],
    )
    print(f"results: {RESULTS / (NAME + '.json')}, chart: {chart}")


if __name__ == "__main__":
    main()
