"""PostgreSQL going away under load: killed and restarted, or silently black-holed.

What clients may see meanwhile is UNAVAILABLE (retryable) and nothing else; no call may hang
past its deadline; every write the server acknowledged must be in the database afterwards.
The module runs its own stack, because it stops the database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import psycopg
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2

from pacs_devstack.server import ServerProcess
from pacs_devstack.stack import LocalStack
from tests.support.load import MixedLoad
from tests.support.projects import create_project
from tests.support.stacks import ServerStarter, own_stack
from tests.support.tcp_proxy import TcpProxy
from tests.support.users import ApiUser, login

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SETTINGS = {
    "HEALTH_PROBE_INTERVAL_SECONDS": "0.5",
    "HEALTH_PROBE_TIMEOUT_SECONDS": "1",
    "DATABASE_CONNECT_TIMEOUT_SECONDS": "2",
    "DATABASE_POOL_TIMEOUT_SECONDS": "2",
    "SHUTDOWN_GRACE_SECONDS": "5",
}
DEADLINE = 3.0
RETRYABLE = {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(scratch_dir: Callable[[str], Path]) -> Iterator[LocalStack]:
    # Durable: a crash must not lose what was acknowledged, which is what is tested.
    with own_stack(scratch_dir("pg-faults"), SETTINGS, durable=True) as local:
        yield local


@pytest.fixture
def start_server(
    stack: LocalStack, artifacts_dir: Path
) -> Iterator[Callable[[dict[str, str]], ServerProcess]]:
    servers = ServerStarter(stack, artifacts_dir, "pg-faults")
    yield servers.start
    servers.stop_all()


async def _setup(stack: LocalStack, server: ServerProcess) -> tuple[ApiUser, int]:
    assert stack.issuer is not None
    async with aio.insecure_channel(server.address) as channel:
        admin = await login(channel, stack.issuer, f"admin-{server.port}", admin=True)
        project_id = await create_project(channel, admin, f"faults-{server.port}")
    return admin, project_id


def _stored_ids(database_url: str, project_id: int) -> set[int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "select id from annotation_annotation where project_id = %s", [project_id]
        ).fetchall()
    return {row[0] for row in rows}


async def _until(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return predicate()


async def test_killed_and_restarted_postgres_costs_only_retryable_errors_and_no_writes(
    stack: LocalStack, start_server: Callable[[dict[str, str]], ServerProcess]
) -> None:
    assert stack.postgres is not None
    server = start_server({})
    user, project_id = await _setup(stack, server)
    load = MixedLoad(server.address, user, project_id, deadline_seconds=DEADLINE)
    running = asyncio.create_task(load.run())
    try:
        await asyncio.sleep(1.5)
        stack.postgres.kill()
        went_down = await _until(lambda: server.health() == NOT_SERVING, 5)
        await asyncio.sleep(2)
        stack.postgres.start()
        restarted_at = time.monotonic()
        await _until(
            lambda: any(
                o.code is grpc.StatusCode.OK and o.started > restarted_at for o in load.outcomes
            ),
            15,
        )
        recovered_at = min(
            (o.ended for o in load.outcomes
             if o.code is grpc.StatusCode.OK and o.started > restarted_at),
            default=None,
        )  # fmt: skip
        await asyncio.sleep(1)
    finally:
        load.stop()
        await running

    assert went_down, "health must report NOT_SERVING while PostgreSQL is down"
    codes = {o.code for o in load.outcomes}
    assert codes <= RETRYABLE, f"clients saw {codes - RETRYABLE}"
    assert grpc.StatusCode.UNAVAILABLE in codes, "the outage must have been felt"
    assert max(o.seconds for o in load.outcomes) <= DEADLINE + 1
    assert recovered_at is not None
    assert recovered_at - restarted_at < 10, "serves again within 10 s of the restart"
    assert server.wait_for_status(SERVING, 10)
    acknowledged = load.acknowledged_writes()
    assert len(acknowledged) > 10
    assert acknowledged <= _stored_ids(stack.database_url, project_id)


async def test_black_holed_postgres_ends_every_call_by_its_deadline_then_recovers(
    stack: LocalStack, start_server: Callable[[dict[str, str]], ServerProcess]
) -> None:
    target = urlsplit(stack.server_database_url)
    assert target.hostname is not None
    assert target.port is not None
    with TcpProxy(target.hostname, target.port) as proxy:
        credentials = target.netloc.rpartition("@")[0]
        netloc = f"{credentials}@{proxy.address}" if credentials else proxy.address
        proxied = urlunsplit(target._replace(netloc=netloc))
        server = start_server({"DATABASE_URL": proxied})
        user, project_id = await _setup(stack, server)
        load = MixedLoad(server.address, user, project_id, deadline_seconds=DEADLINE)
        running = asyncio.create_task(load.run())
        try:
            await asyncio.sleep(1)
            proxy.blackhole()
            blackholed_at = time.monotonic()
            await asyncio.sleep(DEADLINE * 3)
            proxy.restore()
            restored_at = time.monotonic()
            await _until(
                lambda: any(
                    o.code is grpc.StatusCode.OK and o.started > restored_at for o in load.outcomes
                ),
                15,
            )
            await asyncio.sleep(1)
        finally:
            load.stop()
            await running

    during = [o for o in load.outcomes if blackholed_at <= o.started < restored_at]
    assert during, "calls were made while the database was unreachable"
    assert max(o.seconds for o in load.outcomes) <= DEADLINE + 1
    # A black hole gives no error to react to: a call either sees the pool give up
    # (UNAVAILABLE) or runs into the client's deadline; nothing else.
    allowed = RETRYABLE | {grpc.StatusCode.DEADLINE_EXCEEDED}
    assert {o.code for o in load.outcomes} <= allowed
    assert any(o.code is grpc.StatusCode.OK and o.started > restored_at for o in load.outcomes)
    assert load.acknowledged_writes() <= _stored_ids(stack.database_url, project_id)
