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


def create_pool(settings: DatabaseSettings) -> AsyncConnectionPool:
    """A pool that is not open yet: opening it is I/O and belongs to start-up."""
    freshness = PingWhenIdle(settings.pool_check_idle_seconds)
    return AsyncConnectionPool(
        settings.url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        max_waiting=settings.pool_max_waiting,
        timeout=settings.pool_timeout_seconds,
        open=False,
        check=freshness.check,
        reset=freshness.returned,
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
    round trip per call, a fifth of a read's. A connection handed back moments ago was
    working then; one that idled longer is pinged. Connections that die while busy are
    found by the call that uses them, and Database then has the pool check the idle rest.
    """

    def __init__(self, idle_seconds: float) -> None:
        self._idle_seconds = idle_seconds
        self._returned_at: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    async def check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if conn.broken or conn.closed:
            raise psycopg.OperationalError("the connection is closed")
        returned_at = self._returned_at.get(conn)
        if returned_at is not None and time.monotonic() - returned_at < self._idle_seconds:
            return
        await AsyncConnectionPool.check_connection(conn)

    async def returned(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """The pool's reset callback, run on every connection handed back."""
        self._returned_at[conn] = time.monotonic()


class PostgresProbe:
    """Answers whether PostgreSQL runs a trivial query through the pool."""

    name = "postgresql"

    def __init__(self, pool: AsyncConnectionPool, timeout_seconds: float) -> None:
        self._pool = pool
        self._timeout = timeout_seconds

    async def check(self) -> None:
        async with self._pool.connection(timeout=self._timeout) as conn:
            await conn.execute("SELECT 1")
