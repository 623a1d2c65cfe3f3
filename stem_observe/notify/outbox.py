"""The durable outbox: notifications pass through a Redis stream, so one instance sends each
and a crashed instance's notification is taken over by another.

Keys (``prefix`` defaults to ``stem_observe``)::

    <prefix>:outbox                 stream of notifications waiting to be sent
    <prefix>:outbox:dead            stream of notifications given up on (MAXLEN ~ dead_max)
    <prefix>:outbox:once:<sha256>   one key per alert transition (SET NX): dedup at enqueue
    <prefix>:outbox:last:<receiver>:<sha256(group)>   the log entry last queued for a group
    <prefix>:outbox:leader          the sending instance's lease

**Enqueue.** Every instance evaluates the same rules and reaches the same transition; each
calls :meth:`RedisOutbox.enqueue` with the transition's key (group, receiver, what fires and
resolves, and the notification log entry it follows). One Lua script sets the ``once`` key
``NX`` and only then ``XADD`` s the entry, so a transition enters the stream once however
many instances see it. The same script records the queued state as the group's last
(:meth:`RedisOutbox.last_queued`), so every instance compares the group's next state with
what is already on its way, not only with what was delivered. When Redis cannot be reached
the caller sends locally (fail open).

**Sending.** One instance at a time holds the leader lease (``SET NX PX``, renewed every
third of it) and reads the stream through the consumer group ``senders``; only the leader
sends, so a receiver hears one instance's notifications in stream order. Entries read stay
in the group's pending list (PEL) until :meth:`finish` acknowledges and deletes them.
While a delivery runs (retries and back-off included) the holder refreshes its entries'
idle time (``XCLAIM … JUSTID``), so a slow delivery is never taken over.

**Take-over.** An entry idle longer than ``claim_timeout_s`` (its holder was killed, or
hung) is taken by the leader with ``XAUTOCLAIM``. A taken-over entry may be older than one
sent since (a trigger whose resolve already went out): the dispatcher drops an entry whose
log entry is older than the notification log's (``superseded``), so a receiver never hears
a stale state last. An entry
delivered more than ``max_deliveries`` times without an acknowledgement (an instance died
on it each time) goes to the dead stream instead of being tried again.

**Outcomes.** Delivered: ``XACK`` + ``XDEL``. Given up on: copied to ``:outbox:dead`` with
the reason and acknowledged; after transient failures (time-outs, 5xx, 429 past the retry
deadline) the ``once`` key is dropped so the next flush of the group queues it again, after
permanent ones (4xx, a body that is not ``ok``) it is kept for ``dedup_ttl_s`` so a poison
notification is not retried in a loop. Stopped mid-delivery (``SIGTERM``): :meth:`close`
hands every unfinished entry back (``XACK`` + ``XDEL`` + ``XADD`` of the same fields, in
stream order, one script) and releases the lease, so another instance sends them at once.

**Failure modes.** Redis restarted without persistence: the group is created again, what
was pending is lost (logged); each active group is notified at most once more. Redis with
AOF: stream and PEL come back and unacknowledged entries are taken over as above; with
``appendfsync everysec`` up to one second of enqueues may be lost by a Redis crash (Redis
7.0 has no ``WAITAOF``; ``appendfsync always`` closes the window). Acknowledging after a
successful send is not atomic with the send: an instance killed between the two is
re-sent by the next leader (at-least-once; PagerDuty collapses it by ``dedup_key``,
webhooks see the same ``webhook-id``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from stem_observe.notify._codec import (
    decode_entry,
    decode_notification,
    encode_entry,
    encode_notification,
)
from stem_observe.notify.base import DeliveryResult
from stem_observe.notify.dispatch import LogEntry
from stem_observe.notify.model import Notification
from stem_observe.notify.redis_log import default_instance

__all__ = ["EnqueueOutcome", "OutboxEntry", "RedisOutbox", "transition_key"]

logger = logging.getLogger("stem_observe.notify.outbox")

EnqueueOutcome = Literal["queued", "duplicate", "unavailable", "full"]
GROUP: Final = "senders"
DEFAULT_CLAIM_TIMEOUT_S: Final = 360.0
"""Longer than the default retry deadline (300 s) plus a request time-out."""
DEFAULT_DEDUP_TTL_S: Final = 3600.0
PERMANENT_KINDS: Final = frozenset({"auth", "not_found", "gone", "redirect", "client",
                                    "invalid_response", "disabled", "bug"})
LOG_EVERY_S: Final = 60.0

# KEYS: stream, once key, last-queued key. ARGV: max length, ttl ms, instance, log entry,
# then the entry's field/value pairs.
_ENQUEUE = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return -1 end
if not redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[2])
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[1], '*', unpack(fields))
return 1
"""
# After transient failures: forget the transition so the next flush queues it again.
# KEYS: once key, last-queued key. ARGV: the log entry queued.
_FORGET = """
redis.call('DEL', KEYS[1])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""
# Take the lease if free or keep it if held; 1 when held by ARGV[1].
_LEASE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Reset the idle time of the entries this consumer still holds. ARGV: group, consumer, ids.
_KEEP = """
local kept = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept = kept + 1
  end
end
return kept
"""
# Hand entries back: for each id this consumer holds, re-add its fields at the end of the
# stream and acknowledge and delete the old one. ARGV: group, consumer, ids (in order).
_HAND_BACK = """
local moved = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    local e = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
    if e[1] then redis.call('XADD', KEYS[1], '*', unpack(e[1][2])) moved = moved + 1 end
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
    redis.call('XDEL', KEYS[1], ARGV[i])
  end
end
return moved
"""


def transition_key(group_key: str, receiver: str, *, reason: str, sequence: int,
                   entry: LogEntry, follows_at: float | None) -> str:
    """The identity of one alert transition for one receiver, the same on every instance:
    the group, what fires and what resolved, and the shared log entry it follows
    (``follows_at``; ``None`` for a group's first notification)."""
    digest = hashlib.sha256()
    for part in (group_key, receiver, reason, str(sequence), repr(follows_at),
                 ",".join(sorted(entry.firing)), ",".join(sorted(entry.resolved))):
        digest.update(part.encode())
        digest.update(b"\x00")
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A notification read from the stream: ``ticket`` is its stream id."""

    ticket: str
    notification: Notification
    entry: LogEntry
    once: str


Deliver = Callable[[OutboxEntry], bool]
"""Hands an entry to a receiver's queue; ``False`` when it cannot be taken now."""


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.enqueued = Counter(
            "stem_observe_outbox_enqueued", "Notifications offered to the Redis outbox, by "
            "outcome: queued, duplicate (another instance queued the same transition), "
            "unavailable (Redis unreachable: sent locally) and full.",
            ["receiver", "outcome"], registry=registry)
        self.reclaimed = Counter(
            "stem_observe_outbox_reclaimed", "Outbox entries taken over from an instance "
            "that held them past the claim timeout.", registry=registry)
        self.dead = Counter(
            "stem_observe_outbox_dead_letters", "Outbox entries moved to the dead stream, by "
            "reason: failed (given up on), max_deliveries (never acknowledged) and "
            "undecodable.", ["reason"], registry=registry)
        self.leader = Gauge(
            "stem_observe_outbox_leader", "1 while this instance holds the sending lease.",
            registry=registry)
        self.length = Gauge(
            "stem_observe_outbox_length", "Entries in the outbox stream (leader's view).",
            registry=registry)


class RedisOutbox:
    """The outbox (see the module doc). ``client`` should have short socket timeouts; a
    second connection pool is made for the blocking reads."""

    def __init__(
        self, client: redis.Redis, *, prefix: str = "stem_observe",
        instance: str | None = None, claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S,
        lease_s: float | None = None, dedup_ttl_s: float = DEFAULT_DEDUP_TTL_S,
        max_deliveries: int = 5, max_length: int = 100_000, dead_max: int = 10_000,
        block_s: float = 1.0, registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.client = client
        kwargs = dict(client.connection_pool.connection_kwargs)
        kwargs["socket_timeout"] = block_s + 5.0
        self.reader = redis.Redis(connection_pool=redis.ConnectionPool(
            connection_class=client.connection_pool.connection_class, **kwargs))
        self.instance = instance or default_instance()
        self.stream = f"{prefix}:outbox"
        self.dead_stream = f"{prefix}:outbox:dead"
        self.leader_key = f"{prefix}:outbox:leader"
        self.once_prefix = f"{prefix}:outbox:once:"
        self.last_prefix = f"{prefix}:outbox:last:"
        self.claim_timeout_s = claim_timeout_s
        self.lease_s = lease_s if lease_s is not None else min(30.0, claim_timeout_s)
        self.dedup_ttl_ms = max(1, int(dedup_ttl_s * 1000))
        self.max_deliveries = max_deliveries
        self.max_length = max_length
        self.dead_max = dead_max
        self.block_ms = max(1, int(block_s * 1000))
        self.metrics = _Metrics(registry)
        self._enqueue = client.register_script(_ENQUEUE)
        self._lease = client.register_script(_LEASE)
        self._release = client.register_script(_RELEASE)
        self._forget = client.register_script(_FORGET)
        self._keep = client.register_script(_KEEP)
        self._hand_back = client.register_script(_HAND_BACK)
        self._lock = threading.Lock()
        self._inflight: dict[str, OutboxEntry] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._deliver: Deliver | None = None
        self._leader = False
        self._last_log: dict[str, float] = {}

    # --- enqueue (any instance, the engine's thread) ---------------------------------------

    def enqueue(self, notification: Notification, entry: LogEntry, once: str) -> EnqueueOutcome:
        """Queue ``notification`` unless transition ``once`` is already queued or sent."""
        entry_json = encode_entry(entry)
        fields = ["notification", encode_notification(notification),
                  "entry", entry_json, "once", once, "receiver", notification.receiver]
        keys = [self.stream, self.once_prefix + once,
                self._last_key(notification.group_key, notification.receiver)]
        try:
            added = self._enqueue(keys=keys, args=[
                self.max_length, self.dedup_ttl_ms, self.instance, entry_json, *fields])
        except redis.RedisError as exc:
            self._error("queueing a notification", exc)
            outcome: EnqueueOutcome = "unavailable"
        else:
            outcome = "queued" if added == 1 else "duplicate" if added == 0 else "full"
        self.metrics.enqueued.labels(notification.receiver, outcome).inc()
        return outcome

    def last_queued(self, group_key: str, receiver: str) -> LogEntry | None:
        """The log entry last queued for the group and receiver (``None`` when none, or
        when Redis cannot be read)."""
        try:
            raw = self.client.get(self._last_key(group_key, receiver))
        except redis.RedisError as exc:
            self._error("reading the last queued notification", exc)
            return None
        if raw is None:
            return None
        try:
            return decode_entry(raw)
        except ValueError as exc:
            self._error("decoding the last queued notification", exc)
            return None

    def _last_key(self, group_key: str, receiver: str) -> str:
        digest = hashlib.sha256(group_key.encode()).hexdigest()
        return f"{self.last_prefix}{receiver}:{digest}"

    # --- sending (the leader's thread) -----------------------------------------------------

    def start(self, deliver: Deliver) -> None:
        """Start competing for the lease; as leader, hand entries to ``deliver``."""
        self._deliver = deliver
        self._thread = threading.Thread(target=self._run, name="stem-observe-outbox",
                                        daemon=True)
        self._thread.start()

    def finish(self, item: OutboxEntry, result: DeliveryResult) -> None:
        """Settle an entry after its delivery (called on the delivery thread)."""
        with self._lock:
            self._inflight.pop(item.ticket, None)
        if result.error_kind == "cancelled" and not result.dead_lettered:
            self.hand_back([item.ticket])
            return
        try:
            with self.client.pipeline(transaction=True) as pipe:
                if not result.delivered:
                    pipe.xadd(self.dead_stream, _dead_fields(item, result), maxlen=self.dead_max,
                              approximate=True)
                    if result.error_kind not in PERMANENT_KINDS:  # the next flush retries
                        notification = item.notification
                        self._forget(keys=[
                            self.once_prefix + item.once,
                            self._last_key(notification.group_key, notification.receiver),
                        ], args=[encode_entry(item.entry)], client=pipe)
                pipe.xack(self.stream, GROUP, item.ticket)
                pipe.xdel(self.stream, item.ticket)
                pipe.execute()
        except redis.RedisError as exc:
            self._error("acknowledging a notification", exc)
        if not result.delivered:
            self.metrics.dead.labels("failed").inc()

    def hand_back(self, tickets: Iterable[str] | None = None) -> int:
        """Give entries this instance holds back to the stream (all held, by default), so
        another instance sends them; returns how many moved."""
        with self._lock:
            ids = sorted(self._inflight if tickets is None else tickets, key=_id_order)
            for ticket in ids:
                self._inflight.pop(ticket, None)
        if not ids:
            return 0
        try:
            return int(self._hand_back(keys=[self.stream], args=[GROUP, self.instance, *ids]))
        except redis.RedisError as exc:
            self._error("handing notifications back", exc)
            return 0

    def stop(self) -> None:
        """Stop reading new entries (idempotent); deliveries under way go on."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.block_ms / 1000 + 6.0)

    def close(self) -> None:
        """Stop reading, hand back what is unfinished and release the lease (idempotent).
        Call after the delivery threads have stopped or given up."""
        self.stop()
        moved = self.hand_back()
        if moved:
            logger.info("handed %d unfinished notification(s) back to the outbox", moved)
        try:
            self._release(keys=[self.leader_key], args=[self.instance])
        except redis.RedisError as exc:
            self._error("releasing the outbox lease", exc)
        self.metrics.leader.set(0)
        self.reader.close()

    @property
    def leader(self) -> bool:
        return self._leader

    # --- the loop -----------------------------------------------------------------------

    def _run(self) -> None:
        renew_every = self.lease_s / 3
        keep_every = max(0.05, self.claim_timeout_s / 4)
        reclaim_every = max(0.05, min(self.claim_timeout_s / 2, 10.0))
        next_renew = next_keep = next_reclaim = 0.0
        group_ready = False
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_renew:
                    self._set_leader(self._lease(keys=[self.leader_key], args=[
                        self.instance, max(1, int(self.lease_s * 1000))]) == 1)
                    next_renew = now + renew_every
                if now >= next_keep:
                    self._keep_alive()
                    next_keep = now + keep_every
                if not self._leader:
                    group_ready = False
                    self._stop.wait(max(0.0, next_renew - time.monotonic()))
                    continue
                if not group_ready:
                    self._create_group()
                    group_ready = True
                if now >= next_reclaim:
                    self._reclaim()
                    next_reclaim = now + reclaim_every
                self._read(max(0.0, min(next_renew, next_keep, next_reclaim)
                               - time.monotonic()))
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    logger.warning("the outbox stream or its group is gone (Redis restarted "
                                   "without persistence?); notifications queued there are "
                                   "lost, creating it again")
                    group_ready = False
                    continue
                self._error("reading the outbox", exc)
                self._stop.wait(1.0)
            except redis.RedisError as exc:
                self._error("reading the outbox", exc)
                self._set_leader(False)
                group_ready = False
                next_renew = 0.0
                self._stop.wait(1.0)
            except Exception:  # never let the thread die
                logger.exception("the outbox loop failed; continuing")
                self._stop.wait(1.0)

    def _set_leader(self, leader: bool) -> None:
        if leader != self._leader:
            logger.info("outbox: %s", "this instance sends notifications" if leader
                        else "another instance sends notifications")
        self._leader = leader
        self.metrics.leader.set(1 if leader else 0)

    def _create_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _keep_alive(self) -> None:
        with self._lock:
            ids = list(self._inflight)
        if ids:
            self._keep(keys=[self.stream], args=[GROUP, self.instance, *ids])

    def _capacity(self) -> int:
        with self._lock:
            return max(0, 100 - len(self._inflight))

    def _read(self, wait_s: float) -> None:
        count = self._capacity()
        if count == 0:
            self._stop.wait(min(wait_s, 0.05))
            return
        block = max(1, min(self.block_ms, int(wait_s * 1000)))
        reply: Any = self.reader.xreadgroup(GROUP, self.instance, {self.stream: ">"},
                                            count=count, block=block)
        for _stream, messages in reply or ():
            for ticket, fields in messages:
                self._take(_text(ticket), fields)

    def _reclaim(self) -> None:
        """Take over entries idle past the claim timeout (this instance's own included:
        one its receiver is not configured for comes back here until it is buried)."""
        min_idle = max(1, int(self.claim_timeout_s * 1000))
        cursor = "0-0"
        while True:
            reply = self.client.xautoclaim(self.stream, GROUP, self.instance, min_idle,
                                           start_id=cursor, count=100)
            cursor, messages = _text(reply[0]), reply[1]
            if messages:
                ids = [_text(ticket) for ticket, _ in messages]
                counts = self._delivery_counts(ids)
                for raw_ticket, fields in messages:
                    ticket = _text(raw_ticket)
                    if fields is None:
                        continue
                    with self._lock:
                        mine = ticket in self._inflight
                    if mine:
                        continue
                    self.metrics.reclaimed.inc()
                    if counts.get(ticket, 0) > self.max_deliveries:
                        self._bury(ticket, fields, "max_deliveries",
                                   f"delivered {counts[ticket]} times without an "
                                   "acknowledgement")
                        continue
                    self._take(ticket, fields)
            if cursor == "0-0":
                break
        self.metrics.length.set(self.client.xlen(self.stream))

    def _delivery_counts(self, ids: list[str]) -> dict[str, int]:
        with self.client.pipeline(transaction=False) as pipe:
            for ticket in ids:
                pipe.xpending_range(self.stream, GROUP, min=ticket, max=ticket, count=1)
            replies = pipe.execute()
        counts: dict[str, int] = {}
        for ticket, reply in zip(ids, replies, strict=True):
            if reply:
                counts[ticket] = int(reply[0]["times_delivered"])
        return counts

    def _take(self, ticket: str, fields: dict[bytes, bytes]) -> None:
        try:
            item = OutboxEntry(ticket, decode_notification(fields[b"notification"]),
                               decode_entry(fields[b"entry"]), _text(fields[b"once"]))
        except (KeyError, ValueError, TypeError) as exc:
            self._bury(ticket, fields, "undecodable", f"undecodable entry: {exc}")
            return
        with self._lock:
            self._inflight[ticket] = item
        assert self._deliver is not None
        if not self._deliver(item):
            logger.warning("outbox: receiver %s is not configured here; entry %s left for "
                           "another instance", item.notification.receiver, ticket)
            with self._lock:
                self._inflight.pop(ticket, None)

    def _bury(self, ticket: str, fields: dict[bytes, bytes], reason: str, error: str) -> None:
        dead: dict[Any, Any] = {_text(k): v for k, v in fields.items()}
        dead.update({"reason": reason, "error": error, "ticket": ticket})
        with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_stream, dead, maxlen=self.dead_max, approximate=True)
            pipe.xack(self.stream, GROUP, ticket)
            pipe.xdel(self.stream, ticket)
            pipe.execute()
        self.metrics.dead.labels(reason).inc()
        logger.error("outbox: entry %s moved to %s: %s", ticket, self.dead_stream, error)

    def _error(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last_log.get(what)
            if last is not None and now - last < LOG_EVERY_S:
                return
            self._last_log[what] = now
        logger.warning("redis: %s failed: %s: %s", what, type(exc).__name__, exc)

    def __repr__(self) -> str:
        return f"RedisOutbox(stream={self.stream!r}, instance={self.instance!r})"


def _dead_fields(item: OutboxEntry, result: DeliveryResult) -> dict[Any, Any]:
    return {"notification": encode_notification(item.notification),
            "entry": encode_entry(item.entry), "once": item.once,
            "receiver": item.notification.receiver, "reason": "failed",
            "error": result.error or "", "error_kind": result.error_kind or "",
            "attempts": str(result.attempts), "ticket": item.ticket}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_order(ticket: str) -> tuple[int, int]:
    ms, _, seq = ticket.partition("-")
    return int(ms), int(seq or 0)
