"""Pacing: a token bucket per destination, so a burst of notifications does not trip the
receiver's rate limit (Slack documents about one message per second per webhook, short
bursts allowed).

A :class:`Pacer` is shared by everything that posts to one destination:
:func:`shared_pacer` hands out one per key (a hash of the webhook URL), so two receivers
configured with the same URL share a budget. A ``429`` answer holds the whole destination
back with :meth:`Pacer.hold`.
"""

from __future__ import annotations

import hashlib
import threading

from stem_observe.notify.clock import Clock

__all__ = ["Pacer", "shared_pacer"]


class Pacer:
    """At most ``burst`` requests at once, refilled at ``rate_per_s``.

    Thread-safe; :meth:`acquire` blocks the calling delivery thread.
    """

    def __init__(self, rate_per_s: float, burst: int = 1) -> None:
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s must be positive, got {rate_per_s!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self.rate_per_s = float(rate_per_s)
        self.burst = burst
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._updated: float | None = None
        self._hold_until = float("-inf")

    def _wait_needed(self, now: float) -> float:
        """Take a token and return 0, or return how long to wait for one (lock held)."""
        if self._updated is None:
            self._updated = now
        if now > self._updated:  # after a hold, refilling starts when the hold ends
            elapsed = now - self._updated
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate_per_s)
            self._updated = now
        if now < self._hold_until:
            return self._hold_until - now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s

    def acquire(
        self, clock: Clock, *, cancel: threading.Event | None = None,
        max_wait_s: float | None = None,
    ) -> bool:
        """Wait for a token. ``False`` when cancelled or when the wait would pass
        ``max_wait_s`` (the token is then not taken)."""
        started = clock.monotonic()
        while True:
            now = clock.monotonic()
            with self._lock:
                wait = self._wait_needed(now)
            if wait <= 0:
                return True
            if max_wait_s is not None and now - started + wait > max_wait_s:
                return False
            if clock.sleep(wait, cancel):
                return False

    def hold(self, clock: Clock, seconds: float) -> None:
        """Take no token before ``seconds`` from now (a ``Retry-After``); when the hold ends,
        one request may go and the bucket refills from there."""
        with self._lock:
            self._hold_until = max(self._hold_until, clock.monotonic() + seconds)
            self._updated = self._hold_until
            self._tokens = 1.0

    def __repr__(self) -> str:
        return f"Pacer(rate_per_s={self.rate_per_s!r}, burst={self.burst!r})"


_SHARED: dict[str, Pacer] = {}
_SHARED_LOCK = threading.Lock()


def shared_pacer(destination: str, rate_per_s: float, burst: int) -> Pacer:
    """The pacer of ``destination`` (kept as a hash, never as text), made on first use."""
    key = hashlib.sha256(f"{destination}|{rate_per_s}|{burst}".encode()).hexdigest()
    with _SHARED_LOCK:
        pacer = _SHARED.get(key)
        if pacer is None:
            pacer = _SHARED[key] = Pacer(rate_per_s, burst)
        return pacer
