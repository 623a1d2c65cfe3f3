"""One log line per key and period: how every background loop reports a failure that may
repeat every few milliseconds (Redis down, a receiver failing) without flooding the log."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Final

__all__ = ["LOG_EVERY_S", "Throttle"]

LOG_EVERY_S: Final = 60.0


class Throttle:
    """:meth:`allow` is true at most once per ``every_s`` for each key (thread-safe)."""

    def __init__(self, every_s: float = LOG_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self._last: dict[Hashable, float] = {}
        self._lock = threading.Lock()

    def allow(self, key: Hashable, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.every_s:
                return False
            self._last[key] = now
            return True
