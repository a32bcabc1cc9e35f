"""A clock that only moves when a test moves it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

START = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


class FakeClock:
    """Both clocks of the Clock port, advanced together and only by `advance`."""

    def __init__(self, start: datetime = START, monotonic_start: float = 1_000.0) -> None:
        if start.tzinfo is None:
            raise ValueError("the fake clock keeps aware UTC time, as the port promises")
        self._now = start.astimezone(UTC)
        self._monotonic = monotonic_start

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go back on this clock")
        self._now += timedelta(seconds=seconds)
        self._monotonic += seconds
