"""Per-user limits and Prometheus metrics on a real server process with low limits.

The server runs beside the shared live stack's, on the same PostgreSQL and storage, with a ticket
limit small enough to reach, two streams per user, and /metrics on a port of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import socket
import statistics
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import urllib3
from google.protobuf import struct_pb2
from grpc import aio
from pacs.v1 import (
    annotation_pb2,
    annotation_pb2_grpc,
    mask_pb2,
    mask_pb2_grpc,
)
from prometheus_client.parser import text_string_to_metric_families

from pacs_devstack.issuer import subject_for
from pacs_devstack.ports import free_ports
from pacs_devstack.server import ServerProcess, ServerStartError
from pacs_devstack.stack import LocalStack
from pacs_grpc.api.metrics import RPC_METHODS
from tests.support.png import png
from tests.support.projects import ANNOTATOR, new_team
from tests.support.users import ApiUser, login, unique_name

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
TICKET_LIMIT = 60  # a minute per user: one token a second after the first 60
FLOOD_WORKERS = 4  # calls the flooder keeps in flight
STREAMS = 2
TICKETS = "/pacs.v1.MaskService/CreateUploadUrls"
WATCH = "/pacs.v1.AnnotationService/WatchAnnotations"
# The p50 of user B's calls while user A floods may grow by this factor at most. A refusal is
# cheap but not free (token check, audit row, gRPC: about 2 ms of CPU here), and the flooder,
# the server, PostgreSQL and this test share two cores, so the bound is generous.
SLOWDOWN_FACTOR = 5.0
_http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(10))


@dataclass(frozen=True)
class Pipeline:
    user: ApiUser
    project_id: int
    project_name: str
    study_uid: str
    annotation_id: int
    group_id: int


@dataclass(frozen=True)
class LimitedServer:
    process: ServerProcess
    metrics_url: str
    database_url: str
    pool_max_size: int


@pytest.fixture(scope="module")
def server(live_stack: LocalStack, artifacts_dir: Path) -> Iterator[LimitedServer]:
    grpc_port, metrics_port = free_ports(2)
    env = {
        **live_stack.server_environment(grpc_port),
        "RATE_LIMIT_TICKETS_PER_MINUTE": str(TICKET_LIMIT),
        "MAX_STREAMS_PER_USER": str(STREAMS),
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(metrics_port),
        "SWEEPER_INTERVAL_SECONDS": "0.5",
    }
    process = ServerProcess(env, grpc_port, log_path=artifacts_dir / "limited-server.log")
    process.start()
    try:
        yield LimitedServer(
            process,
            f"http://127.0.0.1:{metrics_port}/metrics",
            live_stack.database_url,
            int(env.get("DATABASE_POOL_MAX_SIZE") or 20),
        )
    finally:
        # The metrics endpoint closes with the rest: a clean exit.
        assert process.terminate() == 0


@pytest.fixture(scope="module")
async def channel(server: LimitedServer) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(server.process.address) as channel:
        yield channel


@pytest.fixture(scope="module")
async def admin(live_stack: LocalStack, channel: aio.Channel) -> ApiUser:
    assert live_stack.issuer is not None
    return await login(channel, live_stack.issuer, unique_name("admin"), admin=True)


async def _pipeline(
    live_stack: LocalStack, channel: aio.Channel, admin: ApiUser, slice_count: int = 1000
) -> Pipeline:
    assert live_stack.issuer is not None
    name = unique_name("limits")
    team = await new_team(channel, live_stack.issuer, name, {"pipeline": ANNOTATOR}, admin=admin)
    user, project_id = team["pipeline"], team.project_id
    study = f"1.2.826.0.1.3680043.10.{uuid.uuid4().int % 10**12}"
    annotation = await annotation_pb2_grpc.AnnotationServiceStub(channel).CreateAnnotation(
        annotation_pb2.CreateAnnotationRequest(annotation=_annotation(project_id, study)),
        metadata=user.metadata(),
    )
    group = await mask_pb2_grpc.MaskServiceStub(channel).CreateMaskGroup(
        mask_pb2.CreateMaskGroupRequest(
            annotation_id=annotation.annotation.id,
            mask_group=mask_pb2.MaskGroup(slice_count=slice_count),
        ),
        metadata=user.metadata(),
    )
    return Pipeline(user, project_id, name, study, annotation.annotation.id, group.mask_group.id)


def _annotation(project_id: int, study: str) -> annotation_pb2.Annotation:
    data = struct_pb2.Struct()
    data.update({"model": "lung-seg"})
    return annotation_pb2.Annotation(
        project_id=project_id, study_uid=study, annotation_type="segmentation", annotation_data=data
    )


def _tickets_request(
    pipeline: Pipeline, images: list[bytes] | None = None
) -> mask_pb2.CreateUploadUrlsRequest:
    images = images or [b"x" * 100]
    return mask_pb2.CreateUploadUrlsRequest(
        annotation_id=pipeline.annotation_id,
        group_id=pipeline.group_id,
        slices=[
            mask_pb2.SliceUpload(
                slice_index=index, content_type="image/png", size_bytes=len(image),
                md5=hashlib.md5(image).hexdigest(),
            )
            for index, image in enumerate(images)
        ],
    )  # fmt: skip


def _trailers(error: aio.AioRpcError) -> dict[str, Any]:
    return dict(error.trailing_metadata() or ())  # type: ignore[arg-type]


async def _audit_count(database_url: str, user: ApiUser, method: str) -> int:
    """The user's calls of `method` refused by a limit, as the audit log has them."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute(
            "select count(*) from audit_log where subject = %s and action = %s"
            " and outcome = 'denied' and error_code = 'RESOURCE_EXHAUSTED'",
            [subject_for(user.username), method.rsplit("/", 1)[-1]],
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


def _assert_retry_hint(error: aio.AioRpcError, most_ms: int) -> None:
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = _trailers(error)
    waited_ms = int(trailers["retry-after-ms"])
    assert 0 < waited_ms <= most_ms
    assert int(trailers["retry-after"]) >= 1
    assert re.search(r"retry in \d+ s$", error.details() or "")


async def test_one_users_flood_is_refused_while_another_users_calls_go_through(
    live_stack: LocalStack, server: LimitedServer, admin: ApiUser, channel: aio.Channel
) -> None:
    flooder = await _pipeline(live_stack, channel, admin)
    neighbour = await _pipeline(live_stack, channel, admin)
    async with aio.insecure_channel(server.process.address) as neighbour_channel:
        neighbour_stub = mask_pb2_grpc.MaskServiceStub(neighbour_channel)

        async def neighbour_call() -> float:
            started = time.perf_counter()
            reply = await neighbour_stub.CreateUploadUrls(
                _tickets_request(neighbour), metadata=neighbour.user.metadata(), timeout=10
            )
            assert len(reply.tickets) == 1
            return time.perf_counter() - started

        await neighbour_call()  # the first call also opens the connection
        unloaded = [await neighbour_call() for _ in range(19)]

        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.support.flood", server.process.address,
            str(flooder.annotation_id), str(flooder.group_id), str(FLOOD_WORKERS),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=REPO_ROOT,
            env={**os.environ, "PACS_FLOOD_TOKEN": flooder.user.token},
        )  # fmt: skip
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            assert await asyncio.wait_for(process.stdout.readline(), 30) == b"refusing\n"
            audited_before = await _audit_count(server.database_url, flooder.user, TICKETS)
            loaded = [await neighbour_call() for _ in range(20)]
            audited_during = (
                await _audit_count(server.database_url, flooder.user, TICKETS) - audited_before
            )
            process.stdin.write(b"stop\n")
            await process.stdin.drain()
            flood = json.loads(await asyncio.wait_for(process.stdout.readline(), 30))
            assert await asyncio.wait_for(process.wait(), 10) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        elapsed = time.monotonic() - started

    assert audited_during > 10, "the flood went on while the neighbour was measured"
    assert flood["other"] == 0, flood
    # A full minute's worth at once, then one token a second.
    assert TICKET_LIMIT <= flood["granted"] <= TICKET_LIMIT + elapsed + 1, flood
    assert 0 < flood["longest_hint_ms"] <= 1000, flood
    # Every refusal left its audit row before the flooder heard of it.
    assert await _audit_count(server.database_url, flooder.user, TICKETS) == flood["refused"]
    assert await _audit_count(server.database_url, neighbour.user, TICKETS) == 0
    quiet, busy = statistics.median(unloaded), statistics.median(loaded)
    print(
        f"neighbour p50: {quiet * 1000:.1f} ms alone, {busy * 1000:.1f} ms while "
        f"{FLOOD_WORKERS} workers flooded ({flood['refused']} refused in {elapsed:.1f} s)"
    )
    assert busy <= SLOWDOWN_FACTOR * quiet, (quiet, busy)


async def _until_live(
    annotations: annotation_pb2_grpc.AnnotationServiceAsyncStub, pipeline: Pipeline, *calls: Any
) -> None:
    """Write annotations until each watch has seen one: a watch seeing events holds its slot.

    Raises the RPC error of a watch that was refused instead.
    """
    # Reads are never cancelled: cancelling a read cancels the call.
    firsts = [asyncio.ensure_future(call.read()) for call in calls]
    for _ in range(40):
        failed = [f for f in firsts if f.done() and f.exception() is not None]
        if failed:
            failed[0].result()
        pending = [f for f in firsts if not f.done()]
        if not pending:
            assert all(
                isinstance(f.result(), annotation_pb2.WatchAnnotationsResponse) for f in firsts
            )
            return
        await annotations.CreateAnnotation(
            annotation_pb2.CreateAnnotationRequest(
                annotation=_annotation(pipeline.project_id, pipeline.study_uid)
            ),
            metadata=pipeline.user.metadata(),
        )
        await asyncio.wait(pending, timeout=0.25)
    raise AssertionError("the watches never went live")


async def test_a_user_holds_at_most_two_streams_and_others_are_not_counted_against_them(
    live_stack: LocalStack, server: LimitedServer, admin: ApiUser, channel: aio.Channel
) -> None:
    mine = await _pipeline(live_stack, channel, admin)
    theirs = await _pipeline(live_stack, channel, admin)
    annotations = annotation_pb2_grpc.AnnotationServiceStub(channel)

    def watch(pipeline: Pipeline) -> Any:
        return annotations.WatchAnnotations(
            annotation_pb2.WatchAnnotationsRequest(project_id=pipeline.project_id),
            metadata=pipeline.user.metadata(),
            timeout=60,
        )

    first, second = watch(mine), watch(mine)
    await _until_live(annotations, mine, first, second)
    with pytest.raises(aio.AioRpcError) as raised:
        await watch(mine).read()
    _assert_retry_hint(raised.value, most_ms=5000)
    assert f"at most {STREAMS} per user" in (raised.value.details() or "")
    assert await _audit_count(server.database_url, mine.user, WATCH) == 1

    other = watch(theirs)
    await _until_live(annotations, theirs, other)

    first.cancel()
    # The slot frees when the server has seen the cancellation; retry until it has.
    deadline = time.monotonic() + 10
    meanwhile: list[grpc.StatusCode] = []
    while True:
        again = watch(mine)
        try:
            await _until_live(annotations, mine, again)
            break
        except aio.AioRpcError as error:
            meanwhile.append(error.code())
            if time.monotonic() > deadline:
                raise AssertionError("a cancelled watch kept its slot") from error
            await asyncio.sleep(0.1)
    assert set(meanwhile) <= {grpc.StatusCode.RESOURCE_EXHAUSTED}
    for call in (second, other, again):
        call.cancel()
    samples = await asyncio.to_thread(_scrape, server.metrics_url)
    assert _handled(samples, WATCH, "RESOURCE_EXHAUSTED") >= 1
    assert _value(samples, "pacs_rate_limited_total", limit="watches") >= 1
    # A stream's lifetime is no latency: watches are counted but not timed.
    assert ("pacs_rpc_duration_seconds_count", (("method", WATCH),)) not in samples


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:  # fmt: skip
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _handled(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], method: str,
             code: str) -> float:  # fmt: skip
    return _value(samples, "pacs_rpc_handled_total", method=method, code=code)


def _upload(ticket: mask_pb2.UploadTicket, body: bytes) -> int:
    fields: dict[str, Any] = dict(ticket.fields)
    fields["file"] = ("mask.png", body, "image/png")
    return int(_http.request("POST", ticket.url, fields=fields).status)


def _push(pipeline: Pipeline, images: list[bytes]) -> Iterator[mask_pb2.PushMasksRequest]:
    yield mask_pb2.PushMasksRequest(
        target=mask_pb2.PushTarget(annotation_id=pipeline.annotation_id, group_id=pipeline.group_id)
    )
    for index, image in enumerate(images):
        yield mask_pb2.PushMasksRequest(
            slice=mask_pb2.PushSliceHeader(
                slice_index=index, content_type="image/png", size_bytes=len(image),
                width=16, height=16, md5=hashlib.md5(image).hexdigest(),
            )
        )  # fmt: skip
        yield mask_pb2.PushMasksRequest(chunk=image)


async def test_metrics_count_calls_tickets_completions_and_pushes_without_naming_anyone(
    live_stack: LocalStack, server: LimitedServer, admin: ApiUser, channel: aio.Channel
) -> None:
    uploader = await _pipeline(live_stack, channel, admin, slice_count=2)
    pusher = await _pipeline(live_stack, channel, admin, slice_count=2)
    masks = mask_pb2_grpc.MaskServiceStub(channel)
    images = [png(16, 16, seed) for seed in range(2)]
    before = await asyncio.to_thread(_scrape, server.metrics_url)

    tickets = await masks.CreateUploadUrls(
        _tickets_request(uploader, images), metadata=uploader.user.metadata()
    )
    statuses = [await asyncio.to_thread(_upload, t, images[t.slice_index]) for t in tickets.tickets]
    assert statuses == [204, 204]
    done = await masks.CompleteUpload(
        mask_pb2.CompleteUploadRequest(
            annotation_id=uploader.annotation_id,
            group_id=uploader.group_id,
            uploads=[
                mask_pb2.CompletedUpload(upload_id=t.upload_id, width=16, height=16)
                for t in tickets.tickets
            ],
        ),
        metadata=uploader.user.metadata(),
    )
    assert len(done.masks) == 2
    pushed = await masks.PushMasks(_push(pusher, images), metadata=pusher.user.metadata())
    assert pushed.bytes_received == sum(len(i) for i in images)
    granted, refusal = 1, None
    while refusal is None:
        try:
            await masks.CreateUploadUrls(
                _tickets_request(uploader, images[:1]), metadata=uploader.user.metadata()
            )
            granted += 1
        except aio.AioRpcError as error:
            refusal = error
    assert refusal.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    after = await asyncio.to_thread(_scrape, server.metrics_url)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert moved("pacs_upload_tickets_issued_total") == 2 + (granted - 1)
    assert moved("pacs_upload_slices_completed_total") == 2
    assert moved("pacs_pushed_masks_total") == 2
    assert moved("pacs_pushed_bytes_total") == pushed.bytes_received
    assert moved("pacs_rate_limited_total", limit="tickets") == 1
    assert _handled(after, TICKETS, "OK") - _handled(before, TICKETS, "OK") == granted
    assert (
        _handled(after, TICKETS, "RESOURCE_EXHAUSTED")
        - _handled(before, TICKETS, "RESOURCE_EXHAUSTED")
        == 1
    )
    complete = "/pacs.v1.MaskService/CompleteUpload"
    assert _handled(after, complete, "OK") - _handled(before, complete, "OK") == 1
    assert moved("pacs_rpc_duration_seconds_count", method=TICKETS) == granted + 1
    assert _value(after, "pacs_db_pool_max_connections") == server.pool_max_size
    assert moved("pacs_db_pool_requests_total") > 0
    assert ("pacs_db_pool_waiting", ()) in after

    names = [p.user.username for p in (uploader, pusher)] + [admin.username]
    forbidden = [
        *names,
        *(subject_for(n) for n in names),
        uploader.project_name,
        pusher.project_name,
        uploader.study_uid,
        pusher.study_uid,
        "masks/",
    ]
    labels = [(k, v) for (_, pairs) in after for k, v in pairs]
    assert labels
    for key, value in labels:
        assert not any(f in value for f in forbidden), (key, value)
        if key == "method":
            assert value in RPC_METHODS or value == "unknown"
        if key == "code":
            assert value in grpc.StatusCode.__members__


async def test_the_deletion_backlog_follows_the_outbox(server: LimitedServer) -> None:
    key = f"masks/test-backlog/{uuid.uuid4().hex}"
    # Not due for an hour: no sweeper takes it while the test looks.
    with psycopg.connect(server.database_url, autocommit=True) as conn:
        conn.execute(
            "insert into storage_deletion_outbox (object_key, next_attempt_at)"
            " values (%s, now() + interval '1 hour')",
            [key],
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            with psycopg.connect(server.database_url) as conn:
                row = conn.execute("select count(*) from storage_deletion_outbox").fetchone()
            assert row is not None
            gauge = _value(await asyncio.to_thread(_scrape, server.metrics_url),
                           "pacs_storage_deletion_backlog")  # fmt: skip
            if gauge == row[0] and gauge >= 1:
                break
            assert time.monotonic() < deadline, (gauge, row[0])
            await asyncio.sleep(0.2)
    finally:
        with psycopg.connect(server.database_url, autocommit=True) as conn:
            conn.execute("delete from storage_deletion_outbox where object_key = %s", [key])


def test_a_metrics_port_in_use_stops_start_up_with_a_line_naming_it(
    live_stack: LocalStack, tmp_path: Path
) -> None:
    grpc_port = free_ports(1)[0]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {
            **live_stack.server_environment(grpc_port),
            "METRICS_HOST": "127.0.0.1",
            "METRICS_PORT": str(taken.getsockname()[1]),
        }
        process = ServerProcess(env, grpc_port, log_path=tmp_path / "server.log")
        with pytest.raises(ServerStartError):
            process.start(timeout=30)
    assert process.process.returncode == 1
    assert "cannot listen on METRICS_HOST:METRICS_PORT" in (tmp_path / "server.log").read_text()
