"""UpdateAnnotation at 32 concurrent clients: writes per second with revisions kept, against
the same service with the revision rows skipped.

    .venv/bin/python -m bench.update_annotation [--clients 32] [--seconds 10] [--rounds 2]

Every update appends its revision to annotation_revision in the statement that changes the
annotation (migration 0012). The baseline is the same server, the same SQL and the same
requests, with a BEFORE INSERT trigger on annotation_revision that returns NULL, so no
revision row (nor its index entry or TOASTed JSON) is written: what remains is the cost
without history plus one trigger call per update, so the baseline is a little slow, which
flatters the ratio by that much. Runs alternate, baseline first,
`--rounds` times each, so drift on a noisy machine falls on both sides; each side reports its
best round.

Each client updates an annotation of its own, with its etag, the way an editor saves: no
update is refused, and contention is not what is measured (the etag tests cover it). After
each run the updates found in the database must equal the acknowledged calls: the row
versions moved on by exactly that many, and (with revisions on) as many revisions appeared.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import psycopg
from google.protobuf import field_mask_pb2
from pacs.v1 import annotation_pb2

from bench.common import (
    STUDY_ROOT,
    LoadResult,
    Panel,
    Session,
    admin_session,
    closed_loop,
    cpu_seconds,
    local_stack,
    new_annotation,
    print_table,
    write_chart,
    write_results,
)
from pacs_devstack.stack import LocalStack

NAME = "update_annotation"

SKIP_REVISIONS = """
create or replace function bench_skip_revision() returns trigger
language plpgsql as $$ begin return null; end $$;
drop trigger if exists bench_skip_revision on annotation_revision;
create trigger bench_skip_revision before insert on annotation_revision
    for each row execute function bench_skip_revision();
"""

COUNTS = """
select
    (select coalesce(sum(row_version - 1), 0) from annotation_annotation
      where project_id = %(project)s),
    (select count(*) from annotation_revision r
      join annotation_annotation a on a.id = r.annotation_id
      where a.project_id = %(project)s and r.action = 'updated')
"""


async def _counts(conn: psycopg.AsyncConnection[Any], project_id: int) -> tuple[int, int]:
    async with conn.cursor() as cursor:
        await cursor.execute(COUNTS, {"project": project_id})
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def _run(
    session: Session,
    conn: psycopg.AsyncConnection[Any],
    server_pid: int,
    name: str,
    *,
    keep_revisions: bool,
    args: argparse.Namespace,
) -> dict[str, Any]:
    toggle = "disable" if keep_revisions else "enable"
    await conn.execute(f"alter table annotation_revision {toggle} trigger bench_skip_revision")
    # A project per run, so each run's counts are its own.
    project_id = await session.create_project(f"bench-update-{name}")
    etags: list[str] = []
    ids: list[int] = []
    for worker in range(args.clients):
        created = await session.annotations.CreateAnnotation(
            new_annotation(project_id, f"{STUDY_ROOT}.{worker + 1}"), metadata=session.metadata
        )
        ids.append(created.annotation.id)
        etags.append(created.annotation.etag)
    before_versions, before_revisions = await _counts(conn, project_id)
    # The saved drawing moves a point each time: the JSON changes, as an editor's does.
    templates = [new_annotation(project_id, STUDY_ROOT).annotation for _ in range(args.clients)]
    mask = field_mask_pb2.FieldMask(paths=["annotation_data"])
    saves = [0] * args.clients

    async def update(worker: int) -> object:
        saves[worker] += 1
        template = templates[worker]
        template.annotation_data["revision_note"] = f"save {saves[worker]}"
        reply = await session.annotations.UpdateAnnotation(
            annotation_pb2.UpdateAnnotationRequest(
                annotation_id=ids[worker], annotation=template, update_mask=mask,
                etag=etags[worker],
            ),
            metadata=session.metadata,
        )  # fmt: skip
        etags[worker] = reply.annotation.etag
        return reply

    cpu_before = cpu_seconds(server_pid)
    load: LoadResult = await closed_loop(
        update, concurrency=args.clients, seconds=args.seconds, warmup_seconds=args.warmup
    )
    cpu = cpu_seconds(server_pid) - cpu_before
    versions, revisions = await _counts(conn, project_id)
    applied = versions - before_versions
    kept = revisions - before_revisions
    # Warm-up calls are not in total_ok; the database saw them too.
    if applied < load.total_ok or kept != (applied if keep_revisions else 0):
        raise AssertionError(
            f"{name}: {load.total_ok} updates acknowledged, {applied} applied, {kept} revisions"
        )
    return {
        **load.summary(),
        "updates_applied": applied,
        "revisions_written": kept,
        "server_cpu_us_per_call": cpu / max(load.total_ok + load.total_errors, 1) * 1e6,
    }


async def _measure(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    assert stack.server is not None
    async with (
        admin_session(stack.server.address, stack) as session,
        await psycopg.AsyncConnection.connect(stack.database_url, autocommit=True) as conn,
    ):
        await conn.execute(SKIP_REVISIONS)
        rounds: dict[str, list[dict[str, Any]]] = {"without revisions": [], "with revisions": []}
        try:
            for number in range(args.rounds):
                for name, keep in (("without revisions", False), ("with revisions", True)):
                    result = await _run(
                        session, conn, stack.server.process.pid, f"{name}-{number}",
                        keep_revisions=keep, args=args,
                    )  # fmt: skip
                    rounds[name].append(result)
                    print(f"  {name}, round {number + 1}: {result['rps']:.0f}/s")
        finally:
            # The stack is thrown away, but a trigger that drops revisions must never outlive
            # the runs that need it.
            await conn.execute("drop trigger bench_skip_revision on annotation_revision")
    best = {name: max(runs, key=lambda r: r["rps"]) for name, runs in rounds.items()}
    return {
        "clients": args.clients,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "rounds": rounds,
        "best": best,
        "ratio_with_to_without": best["with revisions"]["rps"] / best["without revisions"]["rps"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side, alternating")
    args = parser.parse_args(argv)
    with local_stack(NAME) as stack:
        results = asyncio.run(_measure(stack, args))
    write_results(NAME, results)
    _report(results)


def _report(results: dict[str, Any]) -> None:
    best = results["best"]
    print(
        f"\nUpdateAnnotation, {results['clients']} clients, {results['seconds']:g} s per run,"
        f" best of {len(results['rounds']['with revisions'])} alternating rounds;"
        " every acknowledged update (and revision) found in the database"
    )
    print_table(
        ["run", "updates/s", "p50 ms", "p99 ms", "errors", "revisions", "server cpu/call"],
        [
            [name, r["rps"], r["p50_ms"], r["p99_ms"], r["total_errors"],
             r["revisions_written"], f"{r['server_cpu_us_per_call']:.0f} us"]
            for name, r in best.items()
        ],
    )  # fmt: skip
    print(f"\nwith / without revisions: {results['ratio_with_to_without']:.2f}x (target >= 0.8x)")
    runs = list(best.values())
    chart = write_chart(
        NAME,
        f"UpdateAnnotation at {results['clients']} clients, with and without revisions",
        [
            Panel("throughput", "updates / s", list(best), {"updates/s": [r["rps"] for r in runs]}),
            Panel(
                "latency",
                "ms",
                list(best),
                {"p50": [r["p50_ms"] for r in runs], "p99": [r["p99_ms"] for r in runs]},
            ),
        ],
    )
    print(f"chart: {chart}")


if __name__ == "__main__":
    main()
