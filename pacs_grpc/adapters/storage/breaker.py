"""A circuit breaker for calls to a dependency: object storage, the PACS.

When storage is down, every completion would otherwise wait out its connect timeout and
retries in a worker thread, and the requests pile up behind each other. After
`failure_threshold` outages in a row the breaker opens: calls fail at once with
UNAVAILABLE for `open_seconds`. Then one call at a time is let through as a trial; its
success closes the breaker, its failure opens it again for another period.
"""

from __future__ import annotations

import asyncio
import enum
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import TypeVar

from pacs_grpc.domain.errors import Unavailable

_T = TypeVar("_T")


class BreakerState(enum.Enum):
    """A snapshot of CircuitBreaker.state, taken under its lock; it may change right after.

    CLOSED: calls pass. OPEN: calls fail at once with Unavailable for `open_seconds`.
    HALF_OPEN: one trial call at a time is let through; its success closes, its failure reopens.
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Thread-safe: guarded calls finish in worker threads, the event loop starts them.

    `dependency` names what is guarded in the refusal's message ("object storage", "the PACS").
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        open_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        dependency: str = "object storage",
    ) -> None:
        if failure_threshold < 1 or open_seconds <= 0:
            raise ValueError("failure_threshold must be >= 1 and open_seconds > 0")
        self._threshold = failure_threshold
        self._open_seconds = open_seconds
        self._clock = clock
        self._dependency = dependency
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state()

    def before_call(self) -> bool:
        """Admit a call, or raise Unavailable while the breaker is open. True when the call is
        the half-open trial, which must end in record_success, record_failure or release."""
        with self._lock:
            state = self._state()
            if state is BreakerState.CLOSED:
                return False
            if state is BreakerState.HALF_OPEN and not self._trial_running:
                self._trial_running = True
                return True
            raise Unavailable(
                f"{self._dependency} is unavailable; retry in {self._retry_after()} s"
            )

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_running = False

    def release(self) -> None:
        """The call ended without telling whether the dependency works (e.g. its input failed)."""
        with self._lock:
            self._trial_running = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            trial_failed = self._trial_running
            self._trial_running = False
            if trial_failed or self._failures >= self._threshold:
                self._opened_at = self._clock()

    def _state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at < self._open_seconds:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def _retry_after(self) -> int:
        if self._opened_at is None:
            return 1
        left = self._open_seconds - (self._clock() - self._opened_at)
        return max(1, math.ceil(left))


async def run_admitted(
    breaker: CircuitBreaker, trial: bool, executor: Executor, work: Callable[[], _T]
) -> _T:
    """Await `work` in `executor` for a call `breaker.before_call` admitted (`trial` is what it
    returned); `work` itself tells the breaker how the dependency did.

    A trial whose `work` never starts (its caller cancelled while it waited for a worker, or
    the executor shut down) is released here: nothing else would, and the breaker would stay
    half-open with no trial running, refusing every call for good.
    """
    try:
        future = executor.submit(work)
    except BaseException:
        if trial:
            breaker.release()
        raise
    if trial:
        future.add_done_callback(lambda done: _release_unstarted(breaker, done))
    return await asyncio.wrap_future(future)


def _release_unstarted(breaker: CircuitBreaker, future: Future[_T]) -> None:
    # Only a future that never ran is cancelled; one that ran has recorded its verdict.
    if future.cancelled():
        breaker.release()
