"""A one-line progress bar on a terminal, redrawn at most ten times a second."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

_WIDTH = 30


class ProgressLine:
    def __init__(
        self,
        stream: TextIO,
        label: str,
        *,
        unit: str = "slices",
        clock: Callable[[], float] = time.monotonic,
        interval: float = 0.1,
    ) -> None:
        self._stream = stream
        self._label = label
        self._unit = unit
        self._clock = clock
        self._interval = interval
        self._drawn_at: float | None = None
        self._shown = False

    def __call__(self, done: int, total: int) -> None:
        now = self._clock()
        final = done >= total
        if not final and self._drawn_at is not None and now - self._drawn_at < self._interval:
            return
        self._drawn_at = now
        filled = _WIDTH * done // total if total else _WIDTH
        bar = "#" * filled + "-" * (_WIDTH - filled)
        self._stream.write(f"\r{self._label} [{bar}] {done}/{total} {self._unit}")
        self._stream.flush()
        self._shown = True

    def close(self) -> None:
        """End the line, so what follows starts on a fresh one."""
        if self._shown:
            self._stream.write("\n")
            self._stream.flush()
            self._shown = False
