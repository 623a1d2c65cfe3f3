"""A :class:`~stem_observe.notify.dispatch.NotificationLog` in Redis, shared by every
``serve`` instance.

Entries live at ``<prefix>:nflog:<receiver>:<sha256(group key)>`` as JSON and expire after
``2 * repeat_interval_s``. The dispatcher writes an entry only after a delivery succeeded
(Alertmanager's ``SetNotifiesStage`` order). That each transition is *sent* once is the
outbox's work (:mod:`stem_observe.notify.outbox`); the log says what was delivered, so an
instance compares a group's state with it and a taken-over entry already delivered is
recognised.

Redis unreachable: fail open. :meth:`RedisNotificationLog.get`/``put`` use a local copy of
what this instance last read or wrote, so an outage does not re-send every tick. Redis
restarted without persistence: entries are gone; each active group is notified at most once
more, then the log is back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import uuid
from typing import Final

import redis

from stem_observe.notify.clock import SYSTEM_CLOCK, Clock
from stem_observe.notify.dispatch import LogEntry, MemoryNotificationLog

__all__ = ["RedisNotificationLog"]

logger = logging.getLogger("stem_observe.notify.redis_log")

DEFAULT_REPEAT_INTERVAL_S: Final = 4 * 3600.0
LOG_EVERY_S: Final = 60.0


def default_instance() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RedisNotificationLog:
    """The shared log (see the module doc). ``client`` should have short socket timeouts."""

    def __init__(
        self, client: redis.Redis, *, prefix: str = "stem_observe",
        repeat_interval_s: float = DEFAULT_REPEAT_INTERVAL_S, clock: Clock = SYSTEM_CLOCK,
        max_entries: int = 100_000,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.entry_ttl_ms = max(1, int(2 * repeat_interval_s * 1000))
        self.clock = clock
        self._local = MemoryNotificationLog(max_entries)
        self._lock = threading.Lock()
        self._last_log: dict[str, float] = {}

    # --- the NotificationLog protocol ---------------------------------------------------

    def get(self, group_key: str, receiver: str) -> LogEntry | None:
        try:
            raw = self.client.get(self._key(group_key, receiver))
        except redis.RedisError as exc:
            self._error("reading the notification log", exc)
            return self._local.get(group_key, receiver)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            entry = LogEntry(frozenset(data["firing"]), frozenset(data["resolved"]),
                             float(data["at"]), int(data["sequence"]))
        except (ValueError, KeyError, TypeError) as exc:
            self._error("decoding a notification log entry", exc)
            return self._local.get(group_key, receiver)
        self._local.put(group_key, receiver, entry)
        return entry

    def put(self, group_key: str, receiver: str, entry: LogEntry) -> None:
        self._local.put(group_key, receiver, entry)
        value = json.dumps({"firing": sorted(entry.firing), "resolved": sorted(entry.resolved),
                            "at": entry.at, "sequence": entry.sequence})
        try:
            self.client.set(self._key(group_key, receiver), value, px=self.entry_ttl_ms)
        except redis.RedisError as exc:
            self._error("writing the notification log", exc)

    # --- internals ----------------------------------------------------------------------

    def _key(self, group_key: str, receiver: str) -> str:
        digest = hashlib.sha256(group_key.encode()).hexdigest()
        return f"{self.prefix}:nflog:{receiver}:{digest}"

    def _error(self, what: str, exc: BaseException) -> None:
        now = self.clock.monotonic()
        with self._lock:
            last = self._last_log.get(what)
            if last is not None and now - last < LOG_EVERY_S:
                return
            self._last_log[what] = now
        logger.warning("redis: %s failed (failing open): %s: %s", what,
                       type(exc).__name__, exc)

    def __repr__(self) -> str:
        return f"RedisNotificationLog(prefix={self.prefix!r})"
