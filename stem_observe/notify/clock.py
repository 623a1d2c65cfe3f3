"""Time for delivery: a :class:`Clock` reads monotonic and wall time and sleeps.

Every wait of the notify package (backoff, ``Retry-After``, pacing) goes through a clock so
tests can pass a :class:`FakeClock`, whose sleeps return at once and only move its time.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """Monotonic time for intervals, wall time for timestamps, and an interruptible sleep.

    Called from the delivery threads; ``sleep`` blocks the calling thread only.
    """

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (intervals, deadlines)."""
        ...

    def time(self) -> float:
        """Epoch seconds (``webhook-timestamp``, ``Retry-After`` dates)."""
        ...

    def sleep(self, seconds: float, cancel: threading.Event | None = None) -> bool:
        """Wait ``seconds``; return early with ``True`` when ``cancel`` is set."""
        ...


class SystemClock:
    """The real clocks; :meth:`sleep` waits on ``cancel`` so a shutdown interrupts it."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float, cancel: threading.Event | None = None) -> bool:
        if seconds <= 0:
            return bool(cancel and cancel.is_set())
        if cancel is None:
            time.sleep(seconds)
            return False
        return cancel.wait(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()
"""The default clock of every delivery."""


class FakeClock:
    """A clock for tests: :meth:`sleep` advances time instantly and records the request.

    Thread-safe; ``sleeps`` lists every positive sleep in order.
    """

    def __init__(self, start: float = 1_000.0, wall_start: float = 1_700_000_000.0) -> None:
        self._lock = threading.Lock()
        self._now = start
        self._offset = wall_start - start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def time(self) -> float:
        with self._lock:
            return self._now + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float, cancel: threading.Event | None = None) -> bool:
        if cancel is not None and cancel.is_set():
            return True
        if seconds > 0:
            with self._lock:
                self.sleeps.append(seconds)
                self._now += seconds
        return False

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"
