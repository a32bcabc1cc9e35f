"""Transactions and time: what every use case needs from outside, whatever it stores."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol, TypeVar

# The open transaction a Transactions port hands out and its stores take: a psycopg
# connection in production, a fake's handle in unit tests. Use cases never look inside it;
# they are generic in it, so the wiring can only join stores and transactions of one kind.
TxT = TypeVar("TxT")
TxT_co = TypeVar("TxT_co", covariant=True)
TxT_contra = TypeVar("TxT_contra", contravariant=True)


class Transactions(Protocol[TxT_co]):
    """Opens one transaction: committed when the block ends, rolled back when it raises.

    Raises the domain's Unavailable when the database cannot be reached or is too busy, and
    Conflict when a concurrent change interfered (the caller may retry)."""

    def transaction(self) -> AbstractAsyncContextManager[TxT_co]: ...

    def autocommit(self) -> AbstractAsyncContextManager[TxT_co]:
        """A handle on which every write commits at once, for blocks that only read (and then
        write their audit row): the same reads as in a transaction, minus its round trips."""
        ...


class Clock(Protocol):
    """The time, for use cases that stamp or compare it (ticket expiry, token lifetimes)."""

    def now(self) -> datetime:
        """The wall clock, timezone-aware (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for measuring intervals."""
        ...
