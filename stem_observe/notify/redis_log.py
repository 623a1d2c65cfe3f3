"""A :class:`~stem_observe.notify.dispatch.NotificationLog` in Redis, shared by every
``serve`` instance.

Entries live at ``<prefix>:nflog:<receiver>:<sha256(group key)>`` as JSON and expire after
``2 * repeat_interval_s``. The dispatcher writes an entry only after a delivery succeeded
(Alertmanager's ``SetNotifiesStage`` order). That each transition is *sent* once is the
outbox's work (:mod:`stem_observe.notify.outbox`); the log says what was delivered, so an
instance compares a group's state with it and a taken-over entry already delivered is
recognised.

A write never replaces a newer entry (compared by ``at``, the Redis server's time), so an
instance that delivered late cannot take the log back to an older state.

Redis unreachable: fail open. :meth:`RedisNotificationLog.get`/``put`` use a local copy of
what this instance last read or wrote, so an outage does not re-send every tick; a shared
:class:`~stem_observe.notify._breaker.Breaker` makes an unresponsive Redis cost one socket
time-out per period, not one per call. Redis
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

from stem_observe._throttle import Throttle
from stem_observe.notify._breaker import Breaker
from stem_observe.notify.clock import SYSTEM_CLOCK, Clock
from stem_observe.notify.dispatch import LogEntry, MemoryNotificationLog

__all__ = ["RedisNotificationLog"]

logger = logging.getLogger("stem_observe.notify.redis_log")

DEFAULT_REPEAT_INTERVAL_S: Final = 4 * 3600.0


# KEYS: entry. ARGV: JSON, its "at", ttl ms. Keep an entry that is newer than this one.
_PUT_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, data = pcall(cjson.decode, current)
  if ok and type(data) == 'table' and tonumber(data['at'])
      and tonumber(data['at']) > tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""


def default_instance() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RedisNotificationLog:
    """The shared log (see the module doc). ``client`` should have short socket timeouts."""

    def __init__(
        self, client: redis.Redis, *, prefix: str = "stem_observe",
        repeat_interval_s: float = DEFAULT_REPEAT_INTERVAL_S, clock: Clock = SYSTEM_CLOCK,
        max_entries: int = 100_000, breaker: Breaker | None = None,
    ) -> None:
        self.client = client
        self.breaker = breaker or Breaker()
        self._put = client.register_script(_PUT_NEWER)
        self.prefix = prefix
        self.entry_ttl_ms = max(1, int(2 * repeat_interval_s * 1000))
        self.clock = clock
        self._local = MemoryNotificationLog(max_entries)
        self._lock = threading.Lock()
        self._throttle = Throttle()

    # --- the NotificationLog protocol ---------------------------------------------------

    def get(self, group_key: str, receiver: str) -> LogEntry | None:
        if not self.breaker.allow():
            return self._local.get(group_key, receiver)
        try:
            raw = self.client.get(self._key(group_key, receiver))
        except redis.RedisError as exc:
            self.breaker.failure()
            self._error("reading the notification log", exc)
            return self._local.get(group_key, receiver)
        self.breaker.success()
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
        """Record ``entry`` unless the log holds a newer one (a late writer never takes the
        log back to an older state)."""
        local = self._local.get(group_key, receiver)
        if local is None or local.at <= entry.at:
            self._local.put(group_key, receiver, entry)
        value = json.dumps({"firing": sorted(entry.firing), "resolved": sorted(entry.resolved),
                            "at": entry.at, "sequence": entry.sequence})
        if not self.breaker.allow():
            return
        try:
            self._put(keys=[self._key(group_key, receiver)],
                      args=[value, repr(entry.at), self.entry_ttl_ms])
        except redis.RedisError as exc:
            self.breaker.failure()
            self._error("writing the notification log", exc)
        else:
            self.breaker.success()

    # --- internals ----------------------------------------------------------------------

    def _key(self, group_key: str, receiver: str) -> str:
        digest = hashlib.sha256(group_key.encode()).hexdigest()
        return f"{self.prefix}:nflog:{receiver}:{digest}"

    def _error(self, what: str, exc: BaseException) -> None:
        if not self._throttle.allow(what, self.clock.monotonic()):
            return
        logger.warning("redis: %s failed (failing open): %s: %s", what,
                       type(exc).__name__, exc)

    def __repr__(self) -> str:
        return f"RedisNotificationLog(prefix={self.prefix!r})"
