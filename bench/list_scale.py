"""ListAnnotations of one study with 10 thousand, then 1 million rows in the table.

    .venv/bin/python -m bench.list_scale [--sizes 10000 1000000] [--calls 300] [--profile]
                                         [--revisions-per-annotation 10]

The rows go straight into annotation_annotation with one INSERT ... SELECT generate_series per
size (the API would take hours for a million). Every study holds 50 annotations, all in the
benchmark's project (the harder case for the project-leading indexes); the target study is one
of them. After each fill and ANALYZE, `calls` sequential ListAnnotations(project, study,
page_size=50) are timed; each must return the study's 50 rows. The baseline is the smallest
table measured in the same run. pg_stat_user_indexes shows which index served the calls.

With --revisions-per-annotation N, the largest table is then given N revisions per annotation
in annotation_revision (migration 0012; each a copy of its annotation's content) and measured
again: the list must cost the same whether history is kept or not.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import psycopg
from pacs.v1 import annotation_pb2
from psycopg.types.json import Jsonb

from bench import hotspots
from bench.common import (
    REPO,
    RESULTS,
    STUDY_ROOT,
    Panel,
    Session,
    admin_session,
    annotation_data,
    closed_loop,
    latency_summary,
    local_stack,
    print_table,
    server_profile,
    timed_calls,
    write_chart,
    write_results,
)
from pacs_devstack.stack import LocalStack

NAME = "list_scale"
PER_STUDY = 50
TARGET_STUDY = f"{STUDY_ROOT}.1"

# Row g belongs to study <root>.<g // 50 + 1>, so rows 0..49 are the target study, and rows
# get older as g grows: a table grows by appending older rows, which leaves earlier rows and
# every study's contents unchanged.
FILL = """
insert into annotation_annotation (
    user_id, project_id, study_uid, annotation_type, annotation_data, viewer_software,
    created_at, updated_at)
select %(user_id)s, %(project_id)s, %(study_root)s || '.' || (g / %(per_study)s::bigint + 1)::text,
       'polygon', %(data)s, 'bench-viewer 1.0',
       %(now)s - g * interval '1 second', %(now)s - g * interval '1 second'
from generate_series(%(first)s::bigint, %(last)s::bigint) as g
"""

# N revisions of every annotation, numbered 1..N, each holding the annotation's content.
FILL_REVISIONS = """
insert into annotation_revision (
    annotation_id, revision, action, changed_fields, user_id, annotation_type, annotation_data,
    viewer_software, created_at)
select a.id, r, case when r = 1 then 'created' else 'updated' end, '{annotation_data}',
       a.user_id, a.annotation_type, a.annotation_data, a.viewer_software, a.created_at
from annotation_annotation a, generate_series(1, %(per_annotation)s) as r
"""

INDEX_SCANS = """
select indexrelname, idx_scan from pg_stat_user_indexes
where relname = 'annotation_annotation'
"""


async def _fill(conn: psycopg.AsyncConnection[Any], fill: dict[str, Any], up_to: int) -> float:
    """Rows up to `up_to` in the table; the seconds the insert and ANALYZE took."""
    async with conn.cursor() as cursor:
        await cursor.execute("select count(*) from annotation_annotation")
        row = await cursor.fetchone()
        have = int(row[0]) if row else 0
    started = time.perf_counter()
    # Like pg_restore --disable-triggers: the rows reference the benchmark's own user and
    # project, so the per-row foreign-key triggers (most of a bulk insert's time) are skipped.
    await conn.execute("set session_replication_role = replica")
    try:
        await conn.execute(FILL, {**fill, "first": have, "last": up_to - 1})
    finally:
        await conn.execute("set session_replication_role = origin")
    await conn.execute("analyze annotation_annotation")
    return time.perf_counter() - started


async def _fill_revisions(conn: psycopg.AsyncConnection[Any], per_annotation: int) -> float:
    """`per_annotation` revisions of every annotation; the seconds the insert and ANALYZE took."""
    started = time.perf_counter()
    # As in _fill: the benchmark's own rows, so the foreign-key triggers are skipped.
    await conn.execute("set session_replication_role = replica")
    try:
        await conn.execute(FILL_REVISIONS, {"per_annotation": per_annotation})
    finally:
        await conn.execute("set session_replication_role = origin")
    await conn.execute("analyze annotation_revision")
    return time.perf_counter() - started


async def _index_scans(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    # The statistics collector reports with a small delay; a fresh snapshot is enough here.
    await conn.execute("select pg_stat_clear_snapshot()")
    async with conn.cursor() as cursor:
        await cursor.execute(INDEX_SCANS)
        return {str(name): int(scans) for name, scans in await cursor.fetchall()}


async def _measure_size(
    session: Session, conn: psycopg.AsyncConnection[Any], project_id: int, calls: int
) -> dict[str, Any]:
    request = annotation_pb2.ListAnnotationsRequest(
        project_id=project_id, study_uid=TARGET_STUDY, page_size=PER_STUDY
    )

    async def list_study() -> None:
        reply = await session.annotations.ListAnnotations(request, metadata=session.metadata)
        if len(reply.annotations) != PER_STUDY or reply.next_page_token:
            raise AssertionError(f"expected the study's {PER_STUDY} rows on one page")

    before = await _index_scans(conn)
    latencies = await timed_calls(list_study, calls, warmup=min(30, calls))
    # Give the statistics collector time to publish the backends' counters.
    await asyncio.sleep(1.0)
    after = await _index_scans(conn)
    used = {name: after[name] - before.get(name, 0) for name in after}
    return {**latency_summary(latencies), "index_scans": {k: v for k, v in used.items() if v}}


async def _profile(session: Session, pid: int, project_id: int, seconds: float) -> dict[str, Any]:
    """py-spy on the server while one client lists the study back to back."""
    request = annotation_pb2.ListAnnotationsRequest(
        project_id=project_id, study_uid=TARGET_STUDY, page_size=PER_STUDY
    )

    async def list_study(_: int) -> object:
        return await session.annotations.ListAnnotations(request, metadata=session.metadata)

    async with server_profile(pid, seconds, NAME) as raw:
        await closed_loop(list_study, concurrency=1, seconds=seconds + 1, warmup_seconds=1)
    return {"seconds": seconds, "raw_stacks": str(raw.relative_to(REPO)), **hotspots.summarize(raw)}


async def _measure(
    stack: LocalStack,
    sizes: list[int],
    calls: int,
    profile_seconds: float | None,
    revisions_per_annotation: int = 0,
) -> dict[str, Any]:
    assert stack.server is not None
    async with (
        admin_session(stack.server.address, stack) as session,
        await psycopg.AsyncConnection.connect(stack.database_url, autocommit=True) as conn,
    ):
        project_id = await session.create_project("bench-list-scale")
        await conn.execute("set synchronous_commit = off")
        fill = {
            "user_id": session.user.user_id,
            "project_id": project_id,
            "study_root": STUDY_ROOT,
            "per_study": PER_STUDY,
            "data": Jsonb(annotation_data()),
            "now": await _now(conn),
        }
        rows = []
        for size in sizes:
            fill_seconds = await _fill(conn, fill, size)
            print(f"  {size} rows in the table ({fill_seconds:.1f} s to fill and analyze)")
            rows.append({"rows": size, "revisions": 0, "fill_seconds": fill_seconds})
            rows[-1].update(await _measure_size(session, conn, project_id, calls))
        if revisions_per_annotation:
            # Measured again first: the run above was the first on this table, and the cache
            # it warmed would otherwise count in the revisions' favour.
            rows[-1].update(await _measure_size(session, conn, project_id, calls))
            fill_seconds = await _fill_revisions(conn, revisions_per_annotation)
            revisions = sizes[-1] * revisions_per_annotation
            print(f"  {revisions} revisions added ({fill_seconds:.1f} s to fill and analyze)")
            rows.append({"rows": sizes[-1], "revisions": revisions, "fill_seconds": fill_seconds})
            rows[-1].update(await _measure_size(session, conn, project_id, calls))
        profile = None
        if profile_seconds:
            profile = await _profile(session, stack.server.process.pid, project_id, profile_seconds)
    base = rows[0]
    for row in rows:
        row["p50_ratio"] = row["p50_ms"] / base["p50_ms"]
        row["p99_ratio"] = row["p99_ms"] / base["p99_ms"]
    history = None
    if revisions_per_annotation:
        without, with_history = rows[-2], rows[-1]
        history = {
            "rows": sizes[-1],
            "revisions": with_history["revisions"],
            "p50_ratio": with_history["p50_ms"] / without["p50_ms"],
            "p99_ratio": with_history["p99_ms"] / without["p99_ms"],
        }
    return {
        "per_study": PER_STUDY,
        "page_size": PER_STUDY,
        "calls": calls,
        "sizes": rows,
        "revisions_against_none": history,
        "profile": profile,
    }


async def _now(conn: psycopg.AsyncConnection[Any]) -> Any:
    async with conn.cursor() as cursor:
        await cursor.execute("select now()")
        row = await cursor.fetchone()
        assert row is not None
        return row[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the server listing at the largest size"
    )
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument(
        "--revisions-per-annotation",
        type=int,
        default=0,
        help="then give the largest table this many revisions per annotation and measure again",
    )
    args = parser.parse_args(argv)
    if sorted(args.sizes) != args.sizes or args.sizes[0] < PER_STUDY:
        parser.error(f"--sizes must rise and start at {PER_STUDY} or more")
    with local_stack(NAME) as stack:
        results = asyncio.run(
            _measure(
                stack, args.sizes, args.calls, args.profile_seconds if args.profile else None,
                args.revisions_per_annotation,
            )
        )  # fmt: skip
    write_results(NAME, results)
    _report(results)


def _report(results: dict[str, Any]) -> None:
    sizes = results["sizes"]
    print(
        f"\nListAnnotations(project, study, page_size={results['page_size']}):"
        f" {results['calls']} sequential calls per table size; baseline = {sizes[0]['rows']} rows"
    )
    print_table(
        ["rows", "revisions", "p50 ms", "p99 ms", "mean ms", "p50 ratio", "p99 ratio", "fill s",
         "index"],
        [
            [
                s["rows"], s.get("revisions", 0), s["p50_ms"], s["p99_ms"], s["mean_ms"],
                s["p50_ratio"], s["p99_ratio"], s["fill_seconds"],
                ",".join(s["index_scans"]) or "?",
            ]
            for s in sizes
        ],
    )  # fmt: skip
    history = results.get("revisions_against_none")
    if history is not None:
        print(
            f"\n{history['rows']:,} rows with {history['revisions']:,} revisions, against none:"
            f" p50 {history['p50_ratio']:.2f}x, p99 {history['p99_ratio']:.2f}x (target <= 1.1x)"
        )
    groups = [
        f"{s['rows']:,} rows" + (f" + {s['revisions']:,} revisions" if s.get("revisions") else "")
        for s in sizes
    ]
    chart = write_chart(
        NAME,
        "ListAnnotations of one study (50 rows) as the table grows",
        [
            Panel(
                "latency",
                "ms",
                groups,
                {"p50": [s["p50_ms"] for s in sizes], "p99": [s["p99_ms"] for s in sizes]},
            )
        ],
    )
    print(f"results: {RESULTS / (NAME + '.json')}, chart: {chart}")
    if results["profile"] is not None:
        hotspots.report(results["profile"])


if __name__ == "__main__":
    main()
