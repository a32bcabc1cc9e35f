"""The server under faults other than the database's: storage going away, SIGTERM under load.

The module runs its own stack, because it stops storage and servers.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import urllib3
from google.protobuf import struct_pb2
from grpc import aio
from grpc_health.v1 import health_pb2
from pacs.v1 import (
    annotation_pb2,
    annotation_pb2_grpc,
    mask_pb2,
    mask_pb2_grpc,
)

from pacs_devstack.server import ServerProcess
from pacs_devstack.stack import LocalStack
from tests.support.load import MixedLoad
from tests.support.png import png
from tests.support.projects import create_project
from tests.support.stacks import ServerStarter, own_stack
from tests.support.users import ApiUser, login

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
GRACE_SECONDS = 5
SETTINGS = {
    "HEALTH_PROBE_INTERVAL_SECONDS": "0.5",
    "HEALTH_PROBE_TIMEOUT_SECONDS": "1",
    "SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
}
_http = urllib3.PoolManager(maxsize=8, retries=False, timeout=urllib3.Timeout(10))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(scratch_dir: Callable[[str], Path]) -> Iterator[LocalStack]:
    with own_stack(scratch_dir("faults"), SETTINGS) as local:
        yield local


@pytest.fixture
def start_server(stack: LocalStack, artifacts_dir: Path) -> Iterator[Callable[[], ServerProcess]]:
    servers = ServerStarter(stack, artifacts_dir, "faults")
    yield servers.start
    servers.stop_all()


async def _project(stack: LocalStack, address: str, name: str) -> tuple[ApiUser, int]:
    assert stack.issuer is not None
    async with aio.insecure_channel(address) as channel:
        admin = await login(channel, stack.issuer, name, admin=True)
        project_id = await create_project(channel, admin, name)
    return admin, project_id


def _upload(ticket: mask_pb2.UploadTicket, body: bytes) -> int:
    fields: dict[str, Any] = dict(ticket.fields)
    fields["file"] = ("mask.png", body, "image/png")
    return int(_http.request("POST", ticket.url, fields=fields).status)


async def _tickets(
    masks: mask_pb2_grpc.MaskServiceAsyncStub, user: ApiUser, annotation_id: int,
    images: list[bytes],
) -> tuple[int, list[mask_pb2.UploadTicket]]:  # fmt: skip
    group = await masks.CreateMaskGroup(
        mask_pb2.CreateMaskGroupRequest(
            annotation_id=annotation_id, mask_group=mask_pb2.MaskGroup(slice_count=len(images))
        ),
        metadata=user.metadata(),
    )
    reply = await masks.CreateUploadUrls(
        mask_pb2.CreateUploadUrlsRequest(
            annotation_id=annotation_id, group_id=group.mask_group.id,
            slices=[
                mask_pb2.SliceUpload(slice_index=i, size_bytes=len(image))
                for i, image in enumerate(images)
            ],
        ),
        metadata=user.metadata(), timeout=5,
    )  # fmt: skip
    return group.mask_group.id, list(reply.tickets)


def _completion(
    annotation_id: int, group_id: int, tickets: list[mask_pb2.UploadTicket]
) -> mask_pb2.CompleteUploadRequest:
    return mask_pb2.CompleteUploadRequest(
        annotation_id=annotation_id, group_id=group_id,
        uploads=[mask_pb2.CompletedUpload(upload_id=t.upload_id, width=8, height=8)
                 for t in tickets],
    )  # fmt: skip


async def test_storage_down_still_issues_tickets_refuses_completion_cleanly_and_recovers(
    stack: LocalStack, start_server: Callable[[], ServerProcess]
) -> None:
    assert stack.s3 is not None
    server = start_server()
    user, project_id = await _project(stack, server.address, "storage-outage")
    images = [png(8, 8, seed) for seed in range(3)]
    async with aio.insecure_channel(server.address) as channel:
        data = struct_pb2.Struct()
        data.update({"model": "seg"})
        annotation = await annotation_pb2_grpc.AnnotationServiceStub(channel).CreateAnnotation(
            annotation_pb2.CreateAnnotationRequest(
                annotation=annotation_pb2.Annotation(
                    project_id=project_id, study_uid="1.2.3.4", annotation_type="segmentation",
                    annotation_data=data,
                )
            ),
            metadata=user.metadata(),
        )  # fmt: skip
        annotation_id = annotation.annotation.id
        masks = mask_pb2_grpc.MaskServiceStub(channel)
        group_id, tickets = await _tickets(masks, user, annotation_id, images)
        with ThreadPoolExecutor(3) as pool:
            assert list(pool.map(_upload, tickets, images)) == [204] * 3

        stack.s3.kill()
        try:
            assert server.wait_for_status(NOT_SERVING, 5)
            # Signing needs no storage: a pipeline can still get its tickets.
            _, more = await _tickets(masks, user, annotation_id, images)
            assert len(more) == 3
            started = time.monotonic()
            with pytest.raises(aio.AioRpcError) as refused:
                await masks.CompleteUpload(
                    _completion(annotation_id, group_id, tickets),
                    metadata=user.metadata(), timeout=20,
                )  # fmt: skip
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 5
            with psycopg.connect(stack.database_url) as conn:
                recorded = conn.execute(
                    "select (select count(*) from annotation_mask where mask_group_id = %(g)s),"
                    " (select count(*) from mask_upload"
                    "  where mask_group_id = %(g)s and completed_at is not null)",
                    {"g": group_id},
                ).fetchone()
            assert recorded == (0, 0), "nothing half-recorded"
        finally:
            stack.s3.restart()
        assert server.wait_for_status(SERVING, 20)
        done = await masks.CompleteUpload(
            _completion(annotation_id, group_id, tickets), metadata=user.metadata(), timeout=20
        )
        assert done.mask_group.completed_slices == 3


async def test_sigterm_under_load_fails_no_call_in_flight_and_exits_within_grace(
    stack: LocalStack, start_server: Callable[[], ServerProcess]
) -> None:
    server = start_server()
    user, project_id = await _project(stack, server.address, "sigterm-load")
    load = MixedLoad(server.address, user, project_id, deadline_seconds=10, workers=8)
    running = asyncio.create_task(load.run())
    await asyncio.sleep(1.5)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    exit_code = await asyncio.to_thread(server.process.wait, GRACE_SECONDS + 5)
    exited = time.monotonic()
    load.stop()
    await running

    assert exit_code == 0
    assert exited - signalled < GRACE_SECONDS + 1
    in_flight = [o for o in load.outcomes if o.started < signalled < o.ended]
    before = [o for o in load.outcomes if o.ended <= signalled]
    assert in_flight, "the signal must have caught calls in flight"
    assert {o.code for o in in_flight} == {grpc.StatusCode.OK}
    assert {o.code for o in before} == {grpc.StatusCode.OK}
    # Calls sent after the signal are turned away: UNAVAILABLE once the port is closed, and
    # CANCELLED from gRPC itself for a call that raced the GOAWAY on an open connection (in
    # Kubernetes the preStop delay keeps new calls away before the signal comes).
    after = {o.code for o in load.outcomes if o.started >= signalled}
    assert after <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert load.acknowledged_writes() <= _stored(stack.database_url, project_id)


def _stored(database_url: str, project_id: int) -> set[int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "select id from annotation_annotation where project_id = %s", [project_id]
        ).fetchall()
    return {row[0] for row in rows}
