"""Transactions, and the translation of connection-level failures.

Repositories translate the errors that mean something about the data
(unique violations and the like); everything that means "the database is not
there right now" becomes Unavailable here, once, so clients can retry.
"""

from __future__ import annotations

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
    transaction per block.

    Connection-level failures are mapped here, once for every store: no connection in time, a
    cancelled statement or a lost server become Unavailable; a serialization failure or deadlock
    becomes Conflict. Errors about the data are the repositories' to map.
    """

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """One transaction: committed when the block ends, rolled back if it raises.

        Waiting for a connection stops in time for the call's deadline: the client then
        hears UNAVAILABLE, which it may retry, instead of its own deadline expiring.
        """
        wait = deadlines.bounded(self._pool.timeout)
        if wait <= 0:
            raise Unavailable("database busy, retry shortly")
        try:
            async with self._pool.connection(timeout=wait) as conn, conn.transaction():
                yield conn
        except (PoolTimeout, TooManyRequests):
            raise Unavailable("database busy, retry shortly") from None
        except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected):
            raise Conflict("a concurrent change interfered; retry") from None
        except pg_errors.QueryCanceled:
            raise Unavailable("database timed out, retry shortly") from None
        except psycopg.OperationalError as error:
            _log.warning("database unavailable", extra={"sqlstate": error.sqlstate})
            raise Unavailable("database unavailable, retry shortly") from None
