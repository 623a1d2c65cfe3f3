"""A :class:`~stem_observe.notify.dispatch.NotificationLog` in Redis, shared by every
``serve`` instance, and the claim that keeps two instances from sending the same
notification.

Entries live at ``<prefix>:nflog:<receiver>:<sha256(group key)>`` as JSON and expire after
``2 * repeat_interval_s``. The dispatcher writes an entry only after a delivery succeeded
(Alertmanager's ``SetNotifiesStage`` order).

The claim: before delivering, the dispatcher asks :meth:`RedisNotificationLog.claim`, which
runs ``SET <prefix>:claim:<notification id> <instance> NX PX <claim_ttl>`` (re-entrant for
the holder). The loser does not send and counts nothing as sent; its own log write for that
(group, receiver) is skipped so only the winner's entry, written after the winner's real
delivery, lands in Redis. After a delivery that failed for good the dispatcher calls
:meth:`~RedisNotificationLog.release` (compare-and-delete), so another instance may try.

Failure modes (documented, tested):

* Redis unreachable: fail open. The claim counts as ``unclaimed`` and the notification is
  sent; :meth:`RedisNotificationLog.get`/``put`` use a local copy of what this instance last
  read or wrote, so an outage does not re-send every tick.
* Redis restarted without persistence: entries and claims are gone; each active group is
  notified at most once more (the next flush finds no entry and re-sends, the claim again
  letting one instance through), then the log is back.
* The claim is an efficiency lock, not a fence: a holder paused past the TTL, a failover or
  a restart can let a second instance send. Receivers dedup by ``dedup_key``/``webhook-id``.

Counted in ``stem_observe_notification_claims_total{receiver, outcome}`` with outcomes
``won``, ``lost`` and ``unclaimed`` (Redis unreachable: sent without a claim).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import uuid
from typing import Final, Literal

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from stem_observe.notify.clock import SYSTEM_CLOCK, Clock
from stem_observe.notify.dispatch import LogEntry, MemoryNotificationLog
from stem_observe.notify.model import Notification

__all__ = ["RedisNotificationLog"]

logger = logging.getLogger("stem_observe.notify.redis_log")

DEFAULT_REPEAT_INTERVAL_S: Final = 4 * 3600.0
DEFAULT_CLAIM_TTL_S: Final = 360.0
"""Longer than the default retry deadline (300 s) plus a request timeout."""
LOG_EVERY_S: Final = 60.0

ClaimOutcome = Literal["won", "lost", "unclaimed"]

# Take the claim if free, or keep it if this instance holds it; else return the holder.
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return holder
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def default_instance() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RedisNotificationLog:
    """The shared log and claims (see the module doc). ``client`` should have short socket
    timeouts; ``instance`` names this process in claims."""

    def __init__(
        self, client: redis.Redis, *, prefix: str = "stem_observe", instance: str | None = None,
        repeat_interval_s: float = DEFAULT_REPEAT_INTERVAL_S,
        claim_ttl_s: float = DEFAULT_CLAIM_TTL_S, registry: CollectorRegistry = REGISTRY,
        clock: Clock = SYSTEM_CLOCK, max_entries: int = 100_000,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.instance = instance or default_instance()
        self.entry_ttl_ms = max(1, int(2 * repeat_interval_s * 1000))
        self.claim_ttl_ms = max(1, int(claim_ttl_s * 1000))
        self.clock = clock
        self._local = MemoryNotificationLog(max_entries)
        self._lost: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._last_log: dict[str, float] = {}
        self.claims = Counter(
            "stem_observe_notification_claims", "Claims on notifications shared through "
            "Redis, by outcome (won, lost to another instance, unclaimed: Redis unreachable, "
            "sent anyway).", ["receiver", "outcome"], registry=registry)

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
        with self._lock:
            if (group_key, receiver) in self._lost:
                self._lost.discard((group_key, receiver))
                return  # another instance sent it and writes the entry
        self._local.put(group_key, receiver, entry)
        value = json.dumps({"firing": sorted(entry.firing), "resolved": sorted(entry.resolved),
                            "at": entry.at, "sequence": entry.sequence})
        try:
            self.client.set(self._key(group_key, receiver), value, px=self.entry_ttl_ms)
        except redis.RedisError as exc:
            self._error("writing the notification log", exc)

    # --- claims -------------------------------------------------------------------------

    def claim(self, notification: Notification) -> tuple[ClaimOutcome, str]:
        """Claim ``notification`` for this instance: ``won`` (or already held), ``lost``
        with the holder's name, or ``unclaimed`` when Redis is unreachable."""
        key = self._claim_key(notification.notification_id)
        try:
            held = self.client.eval(_CLAIM, 1, key, self.instance, str(self.claim_ttl_ms))
        except redis.RedisError as exc:
            self._error("claiming a notification", exc)
            outcome: ClaimOutcome = "unclaimed"
            holder = ""
        else:
            if held == 1:
                outcome, holder = "won", self.instance
            else:
                outcome = "lost"
                holder = held.decode() if isinstance(held, bytes) else str(held)
                with self._lock:
                    self._lost.add((notification.group_key, notification.receiver))
        self.claims.labels(notification.receiver, outcome).inc()
        return outcome, holder

    def release(self, notification: Notification) -> None:
        """Drop this instance's claim (after a permanent failure), so another may send."""
        try:
            self.client.eval(_RELEASE, 1, self._claim_key(notification.notification_id),
                             self.instance)
        except redis.RedisError as exc:
            self._error("releasing a claim", exc)

    # --- internals ----------------------------------------------------------------------

    def _key(self, group_key: str, receiver: str) -> str:
        digest = hashlib.sha256(group_key.encode()).hexdigest()
        return f"{self.prefix}:nflog:{receiver}:{digest}"

    def _claim_key(self, notification_id: str) -> str:
        return f"{self.prefix}:claim:{notification_id}"

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
        return f"RedisNotificationLog(prefix={self.prefix!r}, instance={self.instance!r})"
