"""Storage that stops answering: the breaker turns timeouts into fast UNAVAILABLE, then heals."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pacs_devstack.seaweed import SeaweedConfig, SeaweedS3
from pacs_grpc.adapters.storage.breaker import BreakerState, CircuitBreaker
from pacs_grpc.adapters.storage.objects import ObjectStore
from pacs_grpc.adapters.storage.s3 import StorageBreakerOpenError, StorageProbe
from pacs_grpc.config import StorageSettings
from pacs_grpc.domain.errors import Unavailable
from tests.support.tcp_proxy import TcpProxy

ACCESS_KEY = "pacs-breaker-access"
SECRET_KEY = "pacs-breaker-secret-0123456789"
BUCKET = "pacs-breaker"
OPEN_SECONDS = 2.0
TIMEOUT = 0.5


@pytest.fixture(scope="module")
def seaweed(scratch_dir: Callable[[str], Path]) -> Iterator[SeaweedS3]:
    server = SeaweedS3(
        SeaweedConfig(scratch_dir("s3") / "data", ACCESS_KEY, SECRET_KEY, BUCKET, s3_port=0)
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _state(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state


async def _timed(call: Callable[[], Awaitable[object]]) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        await asyncio.wait_for(call(), 30)
    except Exception as error:  # noqa: BLE001 - the test looks at what it was
        return time.monotonic() - started, error
    return time.monotonic() - started, None


async def test_black_holed_storage_fails_fast_once_the_breaker_opens_and_heals(
    seaweed: SeaweedS3,
) -> None:
    target = urlsplit(seaweed.endpoint)
    assert target.hostname is not None
    assert target.port is not None
    with TcpProxy(target.hostname, target.port) as proxy:
        breaker = CircuitBreaker(failure_threshold=2, open_seconds=OPEN_SECONDS)
        store = ObjectStore(
            StorageSettings(f"http://{proxy.address}", ACCESS_KEY, SECRET_KEY, BUCKET),
            breaker=breaker,
            request_timeout_seconds=TIMEOUT,
        )
        try:
            assert await store.stat("missing/key") is None
            proxy.blackhole()
            # The first calls wait out the timeout (and the SDK's retries): the breaker's cost.
            for _ in range(2):
                took, error = await _timed(lambda: store.stat("missing/key"))
                assert isinstance(error, Unavailable)
                assert took >= TIMEOUT
            assert _state(breaker) is BreakerState.OPEN
            # Then nothing piles up: every call is refused at once, with a retry hint.
            fast = [await _timed(lambda: store.stat("missing/key")) for _ in range(20)]
            assert all(isinstance(error, Unavailable) for _, error in fast)
            assert "retry in" in str(fast[0][1])
            assert max(took for took, _ in fast) < 0.2  # against >= 0.5 s each before
            # Storage comes back; after the open period one trial closes the breaker.
            proxy.restore()
            await asyncio.sleep(OPEN_SECONDS)
            assert _state(breaker) is BreakerState.HALF_OPEN
            assert await store.stat("missing/key") is None
            assert _state(breaker) is BreakerState.CLOSED
        finally:
            store.close()


async def test_the_storage_probe_reports_an_open_breaker_without_asking_storage() -> None:
    now = [100.0]
    breaker = CircuitBreaker(failure_threshold=3, open_seconds=10, clock=lambda: now[0])
    for _ in range(3):
        breaker.record_failure()
    # Port 9 on loopback: a probe that did reach for storage would fail differently.
    probe = StorageProbe(StorageSettings("http://127.0.0.1:9", "key", "secret"), 0.5, breaker)
    with pytest.raises(StorageBreakerOpenError):
        await probe.check()
    now[0] += 10  # half-open: the probe asks storage again, and fails to reach it
    with pytest.raises(Exception) as unreachable:  # noqa: PT011 - any transport error
        await probe.check()
    assert not isinstance(unreachable.value, StorageBreakerOpenError)
