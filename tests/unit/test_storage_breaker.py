"""The storage circuit breaker's states, on a clock the test moves."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from pacs_grpc.adapters.storage.breaker import BreakerState, CircuitBreaker, run_admitted
from pacs_grpc.domain.errors import Unavailable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _state(breaker: CircuitBreaker) -> BreakerState:
    # A call, so the type checker does not narrow the property between assertions.
    return breaker.state


def _breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, open_seconds=10, clock=clock)


def test_it_opens_after_the_threshold_of_failures_in_a_row() -> None:
    breaker = _breaker(Clock())
    for _ in range(2):
        breaker.before_call()
        breaker.record_failure()
    breaker.before_call()
    breaker.record_success()  # a success in between starts the count again
    for _ in range(2):
        breaker.record_failure()
    assert _state(breaker) is BreakerState.CLOSED
    breaker.record_failure()
    assert _state(breaker) is BreakerState.OPEN
    with pytest.raises(Unavailable, match=r"retry in 10 s"):
        breaker.before_call()


def test_after_the_open_period_one_trial_at_a_time_decides() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 9.5
    with pytest.raises(Unavailable, match=r"retry in 1 s"):
        breaker.before_call()
    clock.now += 1
    assert _state(breaker) is BreakerState.HALF_OPEN
    breaker.before_call()  # the trial
    with pytest.raises(Unavailable):
        breaker.before_call()  # others still fail fast while it runs
    breaker.record_failure()
    assert _state(breaker) is BreakerState.OPEN  # one failed trial re-opens at once
    clock.now += 10
    breaker.before_call()
    breaker.record_success()
    assert _state(breaker) is BreakerState.CLOSED
    breaker.before_call()
    breaker.before_call()


def test_a_trial_that_ends_without_a_verdict_lets_the_next_one_in() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 10
    breaker.before_call()
    breaker.release()
    breaker.before_call()
    assert _state(breaker) is BreakerState.HALF_OPEN


async def test_a_trial_cancelled_before_its_work_starts_lets_the_next_one_in() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 10
    ran: list[str] = []
    gate = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as executor:
        busy = executor.submit(gate.wait)  # the only worker: the trial's work must wait
        trial = breaker.before_call()
        assert trial
        call = asyncio.create_task(
            run_admitted(breaker, trial, executor, lambda: ran.append("trial"))
        )
        await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        gate.set()
        busy.result()
    assert ran == []  # the guarded work never ran, so nothing recorded a verdict
    assert breaker.before_call()  # yet a new trial is admitted, not refused for good


async def test_a_trial_refused_by_a_shut_down_executor_is_released() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 10
    executor = ThreadPoolExecutor(max_workers=1)
    executor.shutdown()
    with pytest.raises(RuntimeError):
        await run_admitted(breaker, breaker.before_call(), executor, lambda: None)
    assert breaker.before_call()


@pytest.mark.parametrize(("threshold", "seconds"), [(0, 1.0), (1, 0.0)])
def test_nonsense_settings_are_refused(threshold: int, seconds: float) -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=threshold, open_seconds=seconds)
