"""Wall time from the Redis server, so instances sharing one Redis share one clock.

Several ``serve`` instances decide "has the repeat interval passed?" and "is this silence
still active?" from timestamps other instances wrote; with local clocks, an instance 90 s
ahead would re-send 90 s early. :class:`ServerClock` reads Redis' ``TIME`` now and then
(every ``refresh_s``), keeps the offset to the local monotonic clock, and answers
:meth:`time` from that without a round trip. When Redis is unreachable it keeps the last
offset (before the first reading: the local wall clock). Monotonic time and sleeps are the
local clock's.
"""

from __future__ import annotations

import logging
import threading
from typing import Final

import redis

from stem_observe.notify._breaker import Breaker
from stem_observe.notify.clock import SYSTEM_CLOCK, Clock

__all__ = ["ServerClock"]

logger = logging.getLogger("stem_observe.notify.server_clock")

DEFAULT_REFRESH_S: Final = 10.0


class ServerClock:
    """A :class:`~stem_observe.notify.clock.Clock` whose wall time is Redis' ``TIME``.

    ``local`` supplies monotonic time, sleeps and the fallback wall time.
    """

    def __init__(self, client: redis.Redis, *, local: Clock = SYSTEM_CLOCK,
                 refresh_s: float = DEFAULT_REFRESH_S, breaker: Breaker | None = None) -> None:
        self.client = client
        self.breaker = breaker or Breaker()
        self.local = local
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._offset: float | None = None  # server wall time - local monotonic
        self._read_at = float("-inf")
        self._failed_at = float("-inf")

    def monotonic(self) -> float:
        return self.local.monotonic()

    def sleep(self, seconds: float, cancel: threading.Event | None = None) -> bool:
        return self.local.sleep(seconds, cancel)

    def time(self) -> float:
        now = self.local.monotonic()
        with self._lock:
            stale = now - self._read_at >= self.refresh_s
            retry = now - self._failed_at >= min(self.refresh_s, 1.0)
            offset = self._offset
        if stale and retry and self.breaker.allow():
            offset = self._read(now)
        if offset is None:
            return self.local.time()
        return self.local.monotonic() + offset

    @property
    def skew_s(self) -> float | None:
        """Server wall time minus local wall time at the last reading (``None`` before)."""
        with self._lock:
            offset = self._offset
        if offset is None:
            return None
        return self.local.monotonic() + offset - self.local.time()

    def _read(self, now: float) -> float | None:
        before = self.local.monotonic()
        try:
            seconds, micros = self.client.time()
        except redis.RedisError as exc:
            self.breaker.failure()
            with self._lock:
                first_failure = self._failed_at == float("-inf")
                self._failed_at = now
                offset = self._offset
            if first_failure:  # once per outage; a later success re-arms it
                logger.warning("redis: reading server time failed (keeping the last offset):"
                               " %s: %s", type(exc).__name__, exc)
            return offset
        self.breaker.success()
        after = self.local.monotonic()
        server = int(seconds) + int(micros) / 1e6
        offset = server - (before + after) / 2  # the reply was read halfway through
        with self._lock:
            self._offset = offset
            self._read_at = after
            self._failed_at = float("-inf")
        return offset

    def __repr__(self) -> str:
        return f"ServerClock(refresh_s={self.refresh_s}, skew_s={self.skew_s})"
