"""PingWhenIdle: which pool checkouts cost a ping, and Database's verdict on lost connections."""

from __future__ import annotations

from types import SimpleNamespace

import psycopg
import pytest
from psycopg import errors as pg_errors

from pacs_grpc.adapters.postgres import database
from pacs_grpc.adapters.postgres.pool import PingWhenIdle


class _Connection:
    """What psycopg_pool's check_connection touches of an autocommit connection."""

    def __init__(self, *, broken: bool = False) -> None:
        self.autocommit = True
        self.broken = broken
        self.closed = False
        self.pings = 0

    async def execute(self, query: str) -> None:
        self.pings += 1


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    # The module's own `time` only: asyncio keeps the real clock.
    monkeypatch.setattr(
        "pacs_grpc.adapters.postgres.pool.time", SimpleNamespace(monotonic=lambda: now[0])
    )
    return now


async def test_only_a_connection_idle_past_the_window_is_pinged(clock: list[float]) -> None:
    freshness = PingWhenIdle(5.0)
    conn = _Connection()
    await freshness.check(conn)  # type: ignore[arg-type]
    assert conn.pings == 1  # never handed out yet
    clock[0] += 4.9
    await freshness.check(conn)  # type: ignore[arg-type]
    assert conn.pings == 1
    clock[0] += 5.0
    await freshness.check(conn)  # type: ignore[arg-type]
    assert conn.pings == 2


async def test_after_a_lost_connection_every_checkout_pings_for_a_while(
    clock: list[float],
) -> None:
    freshness = PingWhenIdle(5.0)
    conn = _Connection()
    await freshness.check(conn)  # type: ignore[arg-type]
    freshness.distrust()
    clock[0] += 1
    await freshness.check(conn)  # type: ignore[arg-type]
    await freshness.check(conn)  # type: ignore[arg-type]
    assert conn.pings == 3
    clock[0] += 4.5  # trusted again, and used 4.5 s ago
    await freshness.check(conn)  # type: ignore[arg-type]
    assert conn.pings == 3


async def test_a_broken_connection_fails_the_check_without_a_round_trip() -> None:
    conn = _Connection(broken=True)
    with pytest.raises(psycopg.OperationalError):
        await PingWhenIdle(5.0).check(conn)  # type: ignore[arg-type]
    assert conn.pings == 0


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (pg_errors.AdminShutdown(), True),
        (pg_errors.CannotConnectNow(), True),
        (pg_errors.LockNotAvailable(), False),
        (pg_errors.DiskFull(), False),
    ],
)
def test_only_a_lost_connection_makes_the_pool_distrust_the_rest(
    error: psycopg.OperationalError, lost: bool
) -> None:
    assert database._connection_lost(error) is lost
