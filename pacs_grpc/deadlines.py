"""The current RPC's deadline, for waits deep below the servicer.

A client that gives a deadline wants an answer before it, and a wait that outlives it is
wasted: the call is cancelled and the client hears DEADLINE_EXCEEDED, not the retryable
UNAVAILABLE it could act on. The edge records the deadline here once per call, and adapters
bound their waits (a pool connection, say) by what is left of it.
"""

from __future__ import annotations

import contextvars
import time

# Answer this long before the deadline, so the reply still reaches the client in time.
_MARGIN_SECONDS = 0.25

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "pacs_call_deadline", default=None
)


def start(seconds_remaining: float | None) -> contextvars.Token[float | None]:
    """Record the deadline of the call this task serves (None: the client set none)."""
    deadline = None if seconds_remaining is None else time.monotonic() + seconds_remaining
    return _deadline.set(deadline)


def reset(token: contextvars.Token[float | None]) -> None:
    _deadline.reset(token)


def bounded(seconds: float) -> float:
    """`seconds`, or less if the call's deadline comes sooner (never below zero)."""
    deadline = _deadline.get()
    if deadline is None:
        return seconds
    return max(0.0, min(seconds, deadline - time.monotonic() - _MARGIN_SECONDS))
