"""A circuit breaker for Redis calls on the engine's path: after a failure, Redis counts as
down for ``open_s`` and callers take their fallback at once, with one probe let through
each ``open_s``; a success closes it. So a Redis that does not answer costs one socket
time-out per ``open_s``, not one per call."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

__all__ = ["Breaker"]

DEFAULT_OPEN_S: Final = 5.0


class Breaker:
    """Thread-safe; ``clock`` is a monotonic clock (seconds)."""

    def __init__(self, open_s: float = DEFAULT_OPEN_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.open_s = open_s
        self.clock = clock
        self._lock = threading.Lock()
        self._retry_at: float | None = None  # None: closed

    def allow(self) -> bool:
        """Whether to try Redis now (closed, or the probe of an open breaker is due)."""
        with self._lock:
            if self._retry_at is None:
                return True
            now = self.clock()
            if now < self._retry_at:
                return False
            self._retry_at = now + self.open_s  # one probe per period
            return True

    def success(self) -> None:
        with self._lock:
            self._retry_at = None

    def failure(self) -> None:
        with self._lock:
            self._retry_at = self.clock() + self.open_s

    @property
    def open(self) -> bool:
        with self._lock:
            return self._retry_at is not None

    def __repr__(self) -> str:
        return f"Breaker(open_s={self.open_s}, open={self.open})"
