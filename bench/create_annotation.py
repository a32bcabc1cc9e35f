"""CreateAnnotation at 32 concurrent clients: writes per second, against raw database inserts.

    .venv/bin/python -m bench.create_annotation [--clients 32] [--seconds 10] [--profile]

Three runs of the same closed loop, one after another:
  raw           each client its own PostgreSQL connection, the server's INSERT alone (autocommit)
  one project   CreateAnnotation, every client in the same project
  per client    CreateAnnotation, each client in a project of its own
A create takes its project's event-feed lock (event order = commit order per project), so
"one project" shows that serialisation and "per client" the service without it.

Every acknowledged write must be in the database: after each run the rows (and, for the
service, the change-feed events and audit rows) are counted and must equal the successful
calls. A benchmark that lost writes would report a rate it did not deliver.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench import hotspots
from bench.common import (
    REPO,
    RESULTS,
    STUDY_ROOT,
    LoadResult,
    Panel,
    Session,
    admin_session,
    annotation_data,
    closed_loop,
    cpu_seconds,
    local_stack,
    new_annotation,
    print_table,
    server_profile,
    write_chart,
    write_results,
)
from pacs_devstack.stack import LocalStack
from pacs_grpc.adapters.postgres.annotations import INSERT_ANNOTATION

NAME = "create_annotation"

COUNTS = """
select
    (select count(*) from annotation_annotation where project_id = any(%(ids)s)),
    (select count(*) from annotation_event
      where project_id = any(%(ids)s) and event_type = 'created'),
    (select count(*) from audit_log
      where project_id = any(%(ids)s) and action = 'CreateAnnotation' and outcome = 'ok')
"""


async def _counts(conn: psycopg.AsyncConnection[Any], project_ids: list[int]) -> list[int]:
    async with conn.cursor() as cursor:
        await cursor.execute(COUNTS, {"ids": project_ids})
        row = await cursor.fetchone()
    assert row is not None
    return [int(n) for n in row]


def _verified(name: str, load: LoadResult, found: dict[str, int]) -> dict[str, Any]:
    lost = {what: n for what, n in found.items() if n != load.total_ok}
    if lost:
        raise AssertionError(f"{name}: {load.total_ok} writes acknowledged, database has {lost}")
    return {**load.summary(), "writes_per_second": load.rps, "rows_verified": found}


async def _raw(
    database_url: str, session: Session, project_id: int, clients: int, args: argparse.Namespace
) -> dict[str, Any]:
    connections = [
        await psycopg.AsyncConnection.connect(database_url, autocommit=True) for _ in range(clients)
    ]
    data = Jsonb(annotation_data())
    encoded = new_annotation(project_id, STUDY_ROOT).annotation.annotation_data.SerializeToString()

    async def insert(worker: int) -> object:
        return await connections[worker].execute(
            INSERT_ANNOTATION,
            {
                "user_id": session.user.user_id, "project_id": project_id,
                "study_uid": f"{STUDY_ROOT}.{worker + 1}", "series_uid": None,
                "instance_uid": None, "annotation_type": "polygon", "annotation_data": data,
                "measurement_values": None, "viewer_software": "bench-viewer 1.0",
                # The service keeps the request's Struct bytes too (migration 0010).
                "annotation_data_encoded": encoded, "measurement_values_encoded": None,
            },
        )  # fmt: skip

    try:
        load = await _load(insert, clients, args, errors=(psycopg.Error,))
        rows, _, _ = await _counts(connections[0], [project_id])
    finally:
        for conn in connections:
            await conn.close()
    return _verified("raw", load, {"rows": rows})


@dataclass(frozen=True)
class _Target:
    """The service under load: where it runs and how to check what it stored."""

    server_pid: int
    conn: psycopg.AsyncConnection[Any]
    session: Session


async def _service(
    target: _Target, name: str, project_ids: list[int], clients: int, args: argparse.Namespace
) -> dict[str, Any]:
    session = target.session
    # Built beforehand: the client's own work is not what is measured.
    requests = [
        new_annotation(project_ids[w % len(project_ids)], f"{STUDY_ROOT}.{w + 1}")
        for w in range(clients)
    ]

    async def create(worker: int) -> object:
        return await session.annotations.CreateAnnotation(
            requests[worker], metadata=session.metadata
        )

    cpu_before = cpu_seconds(target.server_pid)
    load = await _load(create, clients, args)
    cpu = cpu_seconds(target.server_pid) - cpu_before
    rows, events, audits = await _counts(target.conn, project_ids)
    result = _verified(name, load, {"rows": rows, "events": events, "audit_rows": audits})
    result["server_cpu_us_per_call"] = cpu / max(load.total_ok + load.total_errors, 1) * 1e6
    return result


async def _load(
    call: Callable[[int], Awaitable[object]],
    clients: int,
    args: argparse.Namespace,
    **options: Any,
) -> LoadResult:
    return await closed_loop(
        call, concurrency=clients, seconds=args.seconds, warmup_seconds=args.warmup, **options
    )


async def _measure(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    assert stack.server is not None
    clients = args.clients
    async with (
        admin_session(stack.server.address, stack) as session,
        await psycopg.AsyncConnection.connect(stack.database_url, autocommit=True) as conn,
    ):
        raw_project = await session.create_project("bench-create-raw")
        shared = await session.create_project("bench-create-shared")
        own = [await session.create_project(f"bench-create-{w}") for w in range(clients)]
        target = _Target(stack.server.process.pid, conn, session)
        runs = {}
        runs["raw"] = await _raw(stack.database_url, session, raw_project, clients, args)
        print(f"  raw inserts: {runs['raw']['rps']:.0f}/s")
        runs["one project"] = await _service(target, "one project", [shared], clients, args)
        print(f"  one project: {runs['one project']['rps']:.0f}/s")
        runs["per client"] = await _service(target, "per client", own, clients, args)
        print(f"  per client: {runs['per client']['rps']:.0f}/s")
        profile = None
        if args.profile:
            # An extra run on fresh projects: the profiler slows the server it samples.
            fresh = [await session.create_project(f"bench-profiled-{w}") for w in range(clients)]
            async with server_profile(target.server_pid, args.seconds, NAME) as raw:
                await _service(target, "profiled", fresh, clients, args)
            profile = {"raw_stacks": str(raw.relative_to(REPO)), **hotspots.summarize(raw)}
    for run in runs.values():
        run["ratio_to_raw"] = run["rps"] / runs["raw"]["rps"]
    return {
        "clients": clients,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "runs": runs,
        "profile": profile,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per run")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the server in an extra per-client run"
    )
    parser.add_argument(
        "--durable",
        action="store_true",
        help="PostgreSQL with fsync and synchronous_commit on, as in production: a commit then "
        "waits for the disk, and so does every writer queued on the project's feed lock",
    )
    args = parser.parse_args(argv)
    with local_stack(NAME, durable=args.durable) as stack:
        results = asyncio.run(_measure(stack, args))
    results["durable"] = args.durable
    write_results(NAME + ("_durable" if args.durable else ""), results)
    _report(results)


def _report(results: dict[str, Any]) -> None:
    runs = results["runs"]
    print(
        f"\nCreateAnnotation, {results['clients']} concurrent clients, {results['seconds']:g} s"
        " per run; every acknowledged write found in the database"
    )
    print_table(
        ["run", "writes/s", "p50 ms", "p99 ms", "errors", "acknowledged", "ratio to raw",
         "server cpu/call"],
        [
            [name, r["rps"], r["p50_ms"], r["p99_ms"], r["total_errors"], r["total_ok"],
             r["ratio_to_raw"],
             f"{r['server_cpu_us_per_call']:.0f} us" if "server_cpu_us_per_call" in r else "-"]
            for name, r in runs.items()
        ],
    )  # fmt: skip
    durable = results.get("durable", False)
    chart = write_chart(
        NAME + ("_durable" if durable else ""),
        f"CreateAnnotation at {results['clients']} clients vs raw INSERTs"
        + (" (durable commits)" if durable else ""),
        [
            Panel(
                "throughput",
                "writes / s",
                list(runs),
                {"writes/s": [r["rps"] for r in runs.values()]},
            ),
            Panel(
                "latency",
                "ms",
                list(runs),
                {
                    "p50": [r["p50_ms"] for r in runs.values()],
                    "p99": [r["p99_ms"] for r in runs.values()],
                },
            ),
        ],
    )
    print(f"results: {RESULTS / (chart.stem + '.json')}, chart: {chart}")
    if results["profile"] is not None:
        hotspots.report(results["profile"])


if __name__ == "__main__":
    main()
