"""Transactions, and the translation of connection-level failures.

Repositories translate the errors that mean something about the data
(unique violations and the like); everything that means "the database is not
there right now" becomes Unavailable here, once, so clients can retry.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
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

    def __init__(
        self, pool: AsyncConnectionPool, *, on_connection_lost: Callable[[], None] = lambda: None
    ) -> None:
        self._pool = pool
        # PingWhenIdle.distrust in production: the other pooled connections may be dead too.
        self._on_connection_lost = on_connection_lost

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
            if _connection_lost(error):
                self._on_connection_lost()
            raise Unavailable("database unavailable, retry shortly") from None


def _connection_lost(error: psycopg.OperationalError) -> bool:
    """No server answer at all (sqlstate None), a connection exception (class 08), or the
    server shutting down or restarting (57P01-57P03): not a lock timeout or a full disk."""
    state = error.sqlstate
    return state is None or state.startswith("08") or state in {"57P01", "57P02", "57P03"}
