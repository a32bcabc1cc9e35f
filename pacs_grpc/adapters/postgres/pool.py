"""The PostgreSQL connection pool and its health probe."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

from pacs_grpc.config import DatabaseSettings


def create_pool(settings: DatabaseSettings) -> AsyncConnectionPool:
    """A pool that is not open yet: opening it is I/O and belongs to start-up."""
    return AsyncConnectionPool(
        settings.url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        max_waiting=settings.pool_max_waiting,
        timeout=settings.pool_timeout_seconds,
        open=False,
        # Without a check, a restarted server leaves dead connections in the
        # pool and the first query on each fails.
        check=AsyncConnectionPool.check_connection,
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


class PostgresProbe:
    """Answers whether PostgreSQL runs a trivial query through the pool."""

    name = "postgresql"

    def __init__(self, pool: AsyncConnectionPool, timeout_seconds: float) -> None:
        self._pool = pool
        self._timeout = timeout_seconds

    async def check(self) -> None:
        async with self._pool.connection(timeout=self._timeout) as conn:
            await conn.execute("SELECT 1")
