"""The PostgreSQL connection pool and its health probe."""

from __future__ import annotations

import time
import weakref
from typing import Any

import orjson
import psycopg
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool

from pacs_grpc.config import DatabaseSettings


def create_pool(settings: DatabaseSettings, freshness: PingWhenIdle) -> AsyncConnectionPool:
    """A pool that is not open yet: opening it is I/O and belongs to start-up. `freshness`
    decides which checkouts ping (give Database its `distrust`)."""
    return AsyncConnectionPool(
        settings.url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        max_waiting=settings.pool_max_waiting,
        timeout=settings.pool_timeout_seconds,
        open=False,
        check=freshness.check,
        configure=_use_orjson,
        name="pacs",
        kwargs={
            "autocommit": True,
            "connect_timeout": settings.connect_timeout_seconds,
            "application_name": "pacs-grpc",
            # Server-side, because cancelling an asyncio task does not
            # reliably stop a query that is already running.
            "options": f"-c statement_timeout={settings.statement_timeout_ms}",
        },
    )


async def _use_orjson(conn: psycopg.AsyncConnection[Any]) -> None:
    """json and jsonb through orjson: a third of the standard library's CPU, and a page of
    annotations decodes 50 JSON documents."""
    set_json_loads(orjson.loads, conn)
    set_json_dumps(orjson.dumps, conn)


class PingWhenIdle:
    """The pool's checkout check: a round trip only for connections that sat idle.

    Without a check, a restarted server leaves dead connections in the pool and the first
    query on each fails. Pinging every checkout (psycopg_pool's check_connection) costs a
    round trip per call, a fifth of a read's. A connection handed out moments ago was working
    then; one idle longer than `idle_seconds` since its last checkout is pinged. Once a call
    finds a connection dead (`distrust`), every checkout pings for the next `idle_seconds`,
    so the other dead ones are replaced by the pool instead of failing a call each.
    """

    def __init__(self, idle_seconds: float) -> None:
        self._idle_seconds = idle_seconds
        self._checked_out_at: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        self._distrust_until = 0.0

    async def check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if conn.broken or conn.closed:
            raise psycopg.OperationalError("the connection is closed")
        now = time.monotonic()
        last = self._checked_out_at.get(conn)
        fresh = last is not None and now - last < self._idle_seconds
        if not fresh or now < self._distrust_until:
            await AsyncConnectionPool.check_connection(conn)
        self._checked_out_at[conn] = now

    def distrust(self) -> None:
        """A connection was found dead: ping every checkout for a while."""
        self._distrust_until = time.monotonic() + self._idle_seconds


class PostgresProbe:
    """Answers whether PostgreSQL runs a trivial query through the pool."""

    name = "postgresql"

    def __init__(self, pool: AsyncConnectionPool, timeout_seconds: float) -> None:
        self._pool = pool
        self._timeout = timeout_seconds

    async def check(self) -> None:
        async with self._pool.connection(timeout=self._timeout) as conn:
            await conn.execute("SELECT 1")
