"""Transactions, and the translation of connection-level failures.

Repositories translate the errors that mean something about the data
(unique violations and the like); everything that means "the database is not
there right now" becomes Unavailable here, once, so clients can retry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeAlias

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from pacs_grpc import deadlines
from pacs_grpc.domain.errors import Conflict, Unavailable

Connection: TypeAlias = psycopg.AsyncConnection[TupleRow]

_log = logging.getLogger(__name__)


class Database:
    """Transactions (pacs_grpc.services.ports) on the psycopg pool: one pooled connection, one
    transaction per block, or one autocommit connection for blocks that only read.

    Connection-level failures are mapped here, once for every store: no connection in time, a
    cancelled statement or a lost server become Unavailable; a serialization failure or deadlock
    becomes Conflict. Errors about the data are the repositories' to map.
    """

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool
        self._pool_check: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        async with self._mapped_errors(), self._connection() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[Connection]:
        """A connection on which every statement commits by itself.

        For blocks that only read (and then write their audit row): under READ COMMITTED
        each statement sees the data committed when it starts, inside a transaction or not,
        so this reads the same while sparing the BEGIN and COMMIT round trips.
        """
        async with self._mapped_errors(), self._connection() as conn:
            yield conn

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A pooled connection, waiting no longer than the call's deadline allows: the client
        then hears UNAVAILABLE, which it may retry, instead of its own deadline expiring."""
        wait = deadlines.bounded(self._pool.timeout)
        if wait <= 0:
            raise Unavailable("database busy, retry shortly")
        async with self._pool.connection(timeout=wait) as conn:
            yield conn

    @asynccontextmanager
    async def _mapped_errors(self) -> AsyncIterator[None]:
        try:
            yield
        except (PoolTimeout, TooManyRequests):
            raise Unavailable("database busy, retry shortly") from None
        except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected):
            raise Conflict("a concurrent change interfered; retry") from None
        except pg_errors.QueryCanceled:
            raise Unavailable("database timed out, retry shortly") from None
        except psycopg.OperationalError as error:
            _log.warning("database unavailable", extra={"sqlstate": error.sqlstate})
            self._check_idle_connections()
            raise Unavailable("database unavailable, retry shortly") from None

    def _check_idle_connections(self) -> None:
        """Have the pool ping its idle connections, once at a time, after one was found dead.

        Checkouts ping only connections that idled (PingWhenIdle); after a restart of the
        server every connection is dead, and this spares the next callers finding that out
        one failed call at a time.
        """
        if self._pool_check is None or self._pool_check.done():
            self._pool_check = asyncio.ensure_future(self._pool.check())
            self._pool_check.add_done_callback(_log_check_failure)


def _log_check_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.warning("checking the pool's idle connections failed", exc_info=task.exception())
