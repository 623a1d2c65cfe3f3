"""The durable outbox: notifications pass through Redis streams, so one instance sends each
and a crashed instance's notification is taken over by another.

Keys (``prefix`` defaults to ``stem_observe``; ``<g>`` is the SHA-256 of a group key)::

    <prefix>:outbox:q:<receiver>           a receiver's stream of notifications to send
    <prefix>:outbox:lease:<receiver>       the lease of the instance sending for it
    <prefix>:outbox:dead                   notifications given up on (MAXLEN ~ dead_max)
    <prefix>:outbox:ver:<receiver>:<g>     the group's version: notifications queued so far
    <prefix>:outbox:last:<receiver>:<g>    the log entry last queued for the group
    <prefix>:outbox:done:<receiver>:<g>    the highest version delivered

**Enqueue.** Every instance evaluates the same rules and reaches the same transitions. An
instance reads the group's version and last queued state (:meth:`RedisOutbox.last_queued`),
decides against the newest of that and the delivered log, and queues with the version its
decision was based on; one Lua script checks the version is still that, increments it and
``XADD`` s the entry. So a transition enters the stream once however many instances reach
it, and an instance whose view was stale queues nothing (its next flush decides again).
The version counts on from the highest delivered one when that is higher (the version key
expired, or was evicted, before the ``done`` key, written later), so a new notification is
never taken for one delivered already. When Redis cannot be reached the caller sends
locally (fail open).

**Sending.** Each receiver has its own stream and lease, contested only by the instances
that have that receiver configured; the holder reads the stream through the consumer group
``senders``, at most ``capacity`` entries per receiver in flight and no more than the
receiver's queue takes, so a receiver that hangs holds back no other (and what does not fit
stays in the stream). Entries read stay in the group's pending list (PEL) until
:meth:`~RedisOutbox.finish` acknowledges and deletes them. While a delivery runs (back-off
included) the holder refreshes its entries' idle time (``XCLAIM … JUSTID``), and before each
attempt it checks (:meth:`~RedisOutbox.may_send`) that the entry is still its own and that no
later version of the group was delivered meanwhile: an instance cut off from Redis, or one
whose entry was taken over, stops; a stale state is never delivered after a newer one.

**Take-over.** An entry idle longer than ``claim_timeout_s`` (its holder was killed, or
hung) is taken by the leader with ``XAUTOCLAIM``. An entry delivered more than
``max_deliveries`` times without an acknowledgement (an instance died on it each time) goes
to the dead stream instead of being tried again.

**Outcomes.** Delivered: the group's ``done`` version is raised (only while the entry is
still pending in its stream: a request that ends after Redis restarted without persistence
must not mark a version of the new numbering delivered), then ``XACK`` + ``XDEL``.
Given up on: copied to ``:outbox:dead`` with the reason and acknowledged; after transient
failures (time-outs, 5xx, 429 past the retry deadline) the group's last queued state is
forgotten so the next flush queues it again; after permanent ones (4xx, a body that is not
``ok``) it stays, so a poison notification is not retried in a loop. Stopped (``SIGTERM``):
:meth:`~RedisOutbox.close` keeps the leases while the dispatcher drains, then hands every
unfinished entry back (re-added, in order) and releases the leases, so another instance
sends them at once.

**Failure modes.** Redis restarted without persistence: the groups are created again, what
was queued is lost (logged); each active group is notified at most once more. Redis with
AOF: streams and PELs come back and unacknowledged entries are taken over as above; with
``appendfsync everysec`` up to one second of enqueues may be lost by a Redis crash (Redis
7.0 has no ``WAITAOF``; ``appendfsync always`` closes the window). Acknowledging is not
atomic with sending: an instance killed between a receiver's 2xx and the ``done`` write is
re-sent by the next holder (at-least-once; PagerDuty collapses it by ``dedup_key``, webhooks
see the same ``webhook-id``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from stem_observe._throttle import Throttle
from stem_observe.notify import _outbox_scripts as lua
from stem_observe.notify._breaker import Breaker
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

__all__ = ["EnqueueOutcome", "OutboxEntry", "RedisOutbox"]

logger = logging.getLogger("stem_observe.notify.outbox")

EnqueueOutcome = Literal["queued", "duplicate", "unavailable", "full"]
Verdict = Literal["send", "superseded", "not_mine", "orphaned"]
GROUP: Final = "senders"
DEFAULT_CLAIM_TIMEOUT_S: Final = 360.0
"""Longer than the default retry deadline (300 s) plus a request time-out."""
DEFAULT_STATE_TTL_S: Final = 8 * 3600.0
"""How long a group's version and last queued state outlive its last notification."""
PERMANENT_KINDS: Final = frozenset({"auth", "not_found", "gone", "redirect", "client",
                                    "invalid_response", "disabled", "bug"})
CONSUMER_IDLE_MS: Final = 3_600_000

@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A notification read from a receiver's stream: ``ticket`` is its stream id,
    ``version`` its place in the group's sequence of notifications."""

    ticket: str
    notification: Notification
    entry: LogEntry
    version: int


Deliver = Callable[[OutboxEntry], bool]
"""Hands an entry to its receiver's queue; ``False`` when it cannot be taken now."""
Room = Callable[[str], int]
"""How many more entries a receiver's queue takes now."""


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.enqueued = Counter(
            "stem_observe_outbox_enqueued", "Notifications offered to the Redis outbox, by "
            "outcome: queued, duplicate (another instance queued the transition first), "
            "unavailable (Redis unreachable: sent locally) and full.",
            ["receiver", "outcome"], registry=registry)
        self.reclaimed = Counter(
            "stem_observe_outbox_reclaimed", "Outbox entries taken over from an instance "
            "that held them past the claim timeout.", ["receiver"], registry=registry)
        self.dead = Counter(
            "stem_observe_outbox_dead_letters", "Outbox entries moved to the dead stream, by "
            "reason: failed (given up on), max_deliveries (never acknowledged) and "
            "undecodable.", ["receiver", "reason"], registry=registry)
        self.leader = Gauge(
            "stem_observe_outbox_leader", "1 while this instance holds a receiver's sending "
            "lease.", ["receiver"], registry=registry)
        self.length = Gauge(
            "stem_observe_outbox_length", "Entries in a receiver's outbox stream (the "
            "leader's view).", ["receiver"], registry=registry)


class RedisOutbox:
    """The outbox (see the module doc). ``client`` should have short socket timeouts; a
    second connection pool is made for the blocking reads. ``breaker`` (shared with the
    notification log) makes an unresponsive Redis cost one time-out per period on the
    engine's path instead of one per call."""

    def __init__(
        self, client: redis.Redis, *, prefix: str = "stem_observe",
        instance: str | None = None, claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S,
        lease_s: float | None = None, state_ttl_s: float = DEFAULT_STATE_TTL_S,
        max_deliveries: int = 5, max_length: int = 100_000, dead_max: int = 10_000,
        block_s: float = 1.0, capacity: int = 100, registry: CollectorRegistry = REGISTRY,
        breaker: Breaker | None = None,
    ) -> None:
        self.client = client
        kwargs = dict(client.connection_pool.connection_kwargs)
        kwargs["socket_timeout"] = block_s + 5.0
        self.reader = redis.Redis(connection_pool=redis.ConnectionPool(
            connection_class=client.connection_pool.connection_class, **kwargs))
        self.instance = instance or default_instance()
        self.prefix = prefix
        self.dead_stream = f"{prefix}:outbox:dead"
        self.claim_timeout_s = claim_timeout_s
        self.lease_s = lease_s if lease_s is not None else min(30.0, claim_timeout_s / 2)
        self.state_ttl_ms = max(1, int(state_ttl_s * 1000))
        self.max_deliveries = max_deliveries
        self.max_length = max_length
        self.dead_max = dead_max
        self.block_ms = max(1, int(block_s * 1000))
        self.capacity = capacity
        self.breaker = breaker or Breaker()
        self.metrics = _Metrics(registry)
        self._scripts = {name.lower(): client.register_script(getattr(lua, name))
                         for name in lua.__all__}
        self._lock = threading.Lock()
        self._inflight: dict[str, OutboxEntry] = {}
        self._receivers: tuple[str, ...] = ()
        self._led: frozenset[str] = frozenset()
        self._reading = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._deliver: Deliver | None = None
        self._room: Room | None = None
        self._throttle = Throttle()

    # --- keys -------------------------------------------------------------------------

    def stream(self, receiver: str) -> str:
        return f"{self.prefix}:outbox:q:{receiver}"

    def _leader_key(self, receiver: str) -> str:
        return f"{self.prefix}:outbox:lease:{receiver}"

    def _state_key(self, kind: str, receiver: str, group_key: str) -> str:
        digest = hashlib.sha256(group_key.encode()).hexdigest()
        return f"{self.prefix}:outbox:{kind}:{receiver}:{digest}"

    # --- the engine's side: enqueue --------------------------------------------------------

    def last_queued(self, group_key: str, receiver: str) -> tuple[int, LogEntry | None] | None:
        """The group's version and the log entry last queued for it (``None`` for the entry
        when there is none); ``None`` when Redis cannot be read: then send locally. The
        version is the higher of the version queued and the version delivered."""
        if not self.breaker.allow():
            return None
        try:
            version, last, done = self.client.mget([
                self._state_key("ver", receiver, group_key),
                self._state_key("last", receiver, group_key),
                self._state_key("done", receiver, group_key)])
        except redis.RedisError as exc:
            self.breaker.failure()
            self._error("reading the outbox state", exc)
            return None
        self.breaker.success()
        try:
            return (max(int(version or 0), int(done or 0)),
                    None if last is None else decode_entry(last))
        except ValueError as exc:  # written by something else: decide against the log
            self._error("decoding the outbox state", exc)
            return None

    def enqueue(self, notification: Notification, entry: LogEntry,
                version: int) -> EnqueueOutcome:
        """Queue ``notification`` if the group is still at ``version`` (what the decision
        to send was based on, from :meth:`last_queued`)."""
        receiver, group_key = notification.receiver, notification.group_key
        entry_json = encode_entry(entry)
        fields = ["notification", encode_notification(notification), "entry", entry_json]
        keys = [self.stream(receiver), self._state_key("ver", receiver, group_key),
                self._state_key("last", receiver, group_key),
                self._state_key("done", receiver, group_key)]
        outcome: EnqueueOutcome
        if not self.breaker.allow():
            outcome = "unavailable"
        else:
            try:
                added = self._scripts["enqueue"](keys=keys, args=[
                    self.max_length, self.state_ttl_ms, version, entry_json, *fields])
            except redis.RedisError as exc:
                self.breaker.failure()
                self._error("queueing a notification", exc)
                outcome = "unavailable"
            else:
                self.breaker.success()
                outcome = "queued" if added == 1 else "duplicate" if added == 0 else "full"
        self.metrics.enqueued.labels(receiver, outcome).inc()
        return outcome

    def count_unavailable(self, receiver: str) -> None:
        """Count a notification sent locally because Redis could not be read."""
        self.metrics.enqueued.labels(receiver, "unavailable").inc()

    # --- the sender's side ----------------------------------------------------------------

    def start(self, receivers: Sequence[str], deliver: Deliver,
              room: Room | None = None) -> None:
        """Contend for the leases of ``receivers``; as leader, hand entries to ``deliver``,
        reading no more for a receiver than ``room`` says its queue takes."""
        self._receivers = tuple(receivers)
        for receiver in self._receivers:
            self.metrics.leader.labels(receiver).set(0)
        self._deliver = deliver
        self._room = room
        self._reading.set()
        self._thread = threading.Thread(target=self._run, name="stem-observe-outbox",
                                        daemon=True)
        self._thread.start()

    def may_send(self, item: OutboxEntry) -> Verdict:
        """Before an attempt: ``send``; ``superseded`` (this or a later version of the group
        was delivered already); ``not_mine`` (taken over, or Redis cannot tell: the entry
        stays pending for whoever holds it); ``orphaned`` (Redis lost the entry with a
        restart: nobody else can send it, so this holder goes on unless the notification log
        shows a newer state)."""
        receiver, group_key = item.notification.receiver, item.notification.group_key
        try:
            answer = self._scripts["may_send"](
                keys=[self.stream(receiver), self._state_key("done", receiver, group_key)],
                args=[GROUP, self.instance, item.ticket, item.version])
        except redis.RedisError as exc:
            self._error("checking a notification before sending", exc)
            return "not_mine"
        verdicts: dict[int, Verdict] = {1: "send", -1: "superseded", 2: "orphaned"}
        return verdicts.get(int(answer), "not_mine")

    def finish(self, item: OutboxEntry, result: DeliveryResult) -> None:
        """Settle an entry after its delivery (called on the delivery thread)."""
        if result.error_kind == "cancelled" and not result.dead_lettered:
            self.hand_back([item])  # a no-op for an entry no longer ours
            return
        with self._lock:
            self._inflight.pop(item.ticket, None)
        notification = item.notification
        receiver, group_key = notification.receiver, notification.group_key
        stream = self.stream(receiver)
        try:
            with self.client.pipeline(transaction=True) as pipe:
                if result.delivered:
                    self._scripts["delivered"](
                        keys=[self._state_key("done", receiver, group_key), stream],
                        args=[item.version, self.state_ttl_ms, GROUP, item.ticket],
                        client=pipe)
                else:
                    pipe.xadd(self.dead_stream, _dead_fields(item, result),
                              maxlen=self.dead_max, approximate=True)
                    if result.error_kind not in PERMANENT_KINDS:  # the next flush retries
                        self._scripts["forget"](
                            keys=[self._state_key("last", receiver, group_key)],
                            args=[encode_entry(item.entry)], client=pipe)
                pipe.xack(stream, GROUP, item.ticket)
                pipe.xdel(stream, item.ticket)
                pipe.execute()
        except redis.RedisError as exc:
            self._error("acknowledging a notification", exc)
        if not result.delivered:
            self.metrics.dead.labels(receiver, "failed").inc()

    def hand_back(self, items: Iterable[OutboxEntry] | None = None) -> int:
        """Give entries this instance holds back to their streams (all it holds, by
        default), so another instance sends them; returns how many moved."""
        with self._lock:
            chosen = list(self._inflight.values()) if items is None else list(items)
            for item in chosen:
                self._inflight.pop(item.ticket, None)
        by_stream: dict[str, list[str]] = {}
        for item in chosen:
            by_stream.setdefault(self.stream(item.notification.receiver), []).append(
                item.ticket)
        moved = 0
        for stream, ids in by_stream.items():
            try:
                moved += int(self._scripts["hand_back"](
                    keys=[stream], args=[GROUP, self.instance, *sorted(ids, key=_id_order)]))
            except redis.RedisError as exc:
                self._error("handing notifications back", exc)
        return moved

    def pause(self) -> None:
        """Stop reading new entries; leases and deliveries under way are kept (until
        :meth:`close`), so nobody takes over what is still being delivered."""
        self._reading.clear()

    def close(self) -> None:
        """Stop, hand back what is unfinished, release the leases and leave the consumer
        group (idempotent). Call after the delivery threads have stopped or given up."""
        self._reading.clear()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.block_ms / 1000 + 6.0)
        moved = self.hand_back()
        if moved:
            logger.info("handed %d unfinished notification(s) back to the outbox", moved)
        for receiver in self._receivers:
            try:
                self._scripts["release"](keys=[self._leader_key(receiver)],
                                         args=[self.instance])
                stream = self.stream(receiver)
                if not self.client.xpending_range(stream, GROUP, min="-", max="+", count=1,
                                                  consumername=self.instance):
                    self.client.xgroup_delconsumer(stream, GROUP, self.instance)
            except redis.ResponseError:
                pass  # no such stream or group: nothing to leave
            except redis.RedisError as exc:
                self._error("releasing the outbox", exc)
            self.metrics.leader.labels(receiver).set(0)
        self._led = frozenset()
        self.reader.close()

    def leads(self, receiver: str) -> bool:
        return receiver in self._led

    # --- the loop -----------------------------------------------------------------------

    def _run(self) -> None:
        renew_every = self.lease_s / 3
        keep_every = max(0.05, min(self.claim_timeout_s / 4, renew_every))
        reclaim_every = max(0.05, min(self.claim_timeout_s / 2, 10.0))
        next_renew = next_keep = next_reclaim = 0.0
        ready: set[str] = set()
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_renew:
                    next_renew = now + renew_every
                    self._renew()
                if now >= next_keep:
                    next_keep = now + keep_every
                    self._keep_alive()
                led = self._led if self._reading.is_set() else frozenset()
                if not led:
                    self._stop.wait(max(0.0, min(next_renew, next_keep) - time.monotonic()))
                    continue
                for receiver in led - ready:
                    self._create_group(receiver)
                    ready.add(receiver)
                if now >= next_reclaim:
                    next_reclaim = now + reclaim_every
                    for receiver in led:
                        self._reclaim(receiver)
                self._read(led, max(0.0, min(next_renew, next_keep, next_reclaim)
                                    - time.monotonic()))
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    self._error("reading the outbox", exc)
                    self._stop.wait(1.0)
                    continue
                if ready:
                    logger.warning("an outbox stream or its group is gone (Redis restarted "
                                   "without persistence?); what was queued there is lost, "
                                   "creating it again")
                ready.clear()
                self._stop.wait(0.05)
            except redis.RedisError as exc:
                self._error("reading the outbox", exc)
                self._set_led(frozenset())
                ready.clear()
                next_renew = time.monotonic() + 1.0
                self._stop.wait(1.0)
            except Exception:  # never let the thread die
                logger.exception("the outbox loop failed; continuing")
                self._stop.wait(1.0)

    def _renew(self) -> None:
        ttl = max(1, int(self.lease_s * 1000))
        with self.client.pipeline(transaction=False) as pipe:
            for receiver in self._receivers:
                self._scripts["lease"](keys=[self._leader_key(receiver)],
                                       args=[self.instance, ttl], client=pipe)
            held = pipe.execute()
        self._set_led(frozenset(r for r, h in zip(self._receivers, held, strict=True)
                                if h == 1))

    def _set_led(self, led: frozenset[str]) -> None:
        for receiver in led ^ self._led:
            gained = receiver in led
            logger.info("outbox: this instance %s notifications to %s",
                        "sends" if gained else "no longer sends", receiver)
            self.metrics.leader.labels(receiver).set(1 if gained else 0)
        self._led = led

    def _create_group(self, receiver: str) -> None:
        try:
            self.client.xgroup_create(self.stream(receiver), GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _keep_alive(self) -> None:
        with self._lock:
            held = list(self._inflight.values())
        by_stream: dict[str, list[str]] = {}
        for item in held:
            by_stream.setdefault(self.stream(item.notification.receiver), []).append(
                item.ticket)
        for stream, ids in by_stream.items():
            try:
                self._scripts["keep"](keys=[stream], args=[GROUP, self.instance, *ids])
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):  # gone with a restart: nothing held there
                    raise

    def _in_flight(self, receiver: str) -> int:
        with self._lock:
            return sum(1 for item in self._inflight.values()
                       if item.notification.receiver == receiver)

    def _read(self, led: frozenset[str], wait_s: float) -> None:
        room = {r: self.capacity - self._in_flight(r) for r in led}
        if self._room is not None:  # a full queue would hand entries back, to be read again
            room = {r: min(free, self._room(r)) for r, free in room.items()}
        streams: dict[Any, Any] = {self.stream(r): ">" for r, free in room.items() if free > 0}
        if not streams:
            self._stop.wait(min(wait_s, 0.05))
            return
        count = min(free for free in room.values() if free > 0)
        block = max(1, min(self.block_ms, int(wait_s * 1000)))
        reply: Any = self.reader.xreadgroup(GROUP, self.instance, streams, count=count,
                                            block=block)
        for stream, messages in reply or ():
            for ticket, fields in messages:
                self._take(_text(stream), _text(ticket), fields)

    def _reclaim(self, receiver: str) -> None:
        """Take over entries idle past the claim timeout, and forget consumers long gone."""
        stream = self.stream(receiver)
        min_idle = max(1, int(self.claim_timeout_s * 1000))
        cursor = "0-0"
        while True:
            reply: Any = self.client.xautoclaim(stream, GROUP, self.instance, min_idle,
                                                start_id=cursor, count=100)
            cursor, messages = _text(reply[0]), reply[1]
            taken = [(_text(t), f) for t, f in messages if f is not None]
            with self._lock:
                taken = [(t, f) for t, f in taken if t not in self._inflight]
            counts = self._delivery_counts(stream, [t for t, _ in taken])
            for ticket, fields in taken:
                self.metrics.reclaimed.labels(receiver).inc()
                if counts.get(ticket, 0) > self.max_deliveries:
                    self._bury(stream, ticket, fields, "max_deliveries",
                               f"delivered {counts[ticket]} times without an acknowledgement")
                else:
                    self._take(stream, ticket, fields)
            if cursor == "0-0":
                break
        self.metrics.length.labels(receiver).set(self.client.xlen(stream))
        consumers: Any = self.client.xinfo_consumers(stream, GROUP)
        for consumer in consumers:
            name = _text(consumer["name"])
            if (name != self.instance and int(consumer["pending"]) == 0
                    and int(consumer["idle"]) > CONSUMER_IDLE_MS):
                self.client.xgroup_delconsumer(stream, GROUP, name)

    def _delivery_counts(self, stream: str, ids: list[str]) -> dict[str, int]:
        if not ids:
            return {}
        with self.client.pipeline(transaction=False) as pipe:
            for ticket in ids:
                pipe.xpending_range(stream, GROUP, min=ticket, max=ticket, count=1)
            replies = pipe.execute()
        return {ticket: int(reply[0]["times_delivered"])
                for ticket, reply in zip(ids, replies, strict=True) if reply}

    def _take(self, stream: str, ticket: str, fields: dict[bytes, bytes]) -> None:
        try:
            notification = decode_notification(fields[b"notification"])
            item = OutboxEntry(ticket, notification, decode_entry(fields[b"entry"]),
                               int(fields[b"version"]))
            if self.stream(notification.receiver) != stream:
                raise ValueError(f"receiver {notification.receiver!r} on another's stream")
        except (KeyError, ValueError, TypeError) as exc:
            self._bury(stream, ticket, fields, "undecodable", f"undecodable entry: {exc}")
            return
        with self._lock:
            self._inflight[ticket] = item
        assert self._deliver is not None
        if not self._deliver(item):
            with self._lock:
                self._inflight.pop(ticket, None)

    def _bury(self, stream: str, ticket: str, fields: dict[bytes, bytes], reason: str,
              error: str) -> None:
        dead: dict[Any, Any] = {_text(k): v for k, v in fields.items()}
        dead.update({"reason": reason, "error": error, "ticket": ticket})
        with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_stream, dead, maxlen=self.dead_max, approximate=True)
            pipe.xack(stream, GROUP, ticket)
            pipe.xdel(stream, ticket)
            pipe.execute()
        receiver = stream.removeprefix(f"{self.prefix}:outbox:q:")
        self.metrics.dead.labels(receiver, reason).inc()
        logger.error("outbox: entry %s of %s moved to %s: %s", ticket, stream,
                     self.dead_stream, error)

    def _error(self, what: str, exc: BaseException) -> None:
        if not self._throttle.allow(what):
            return
        logger.warning("redis: %s failed: %s: %s", what, type(exc).__name__, exc)

    def __repr__(self) -> str:
        return f"RedisOutbox(prefix={self.prefix!r}, instance={self.instance!r})"


def _dead_fields(item: OutboxEntry, result: DeliveryResult) -> dict[Any, Any]:
    return {"notification": encode_notification(item.notification),
            "entry": encode_entry(item.entry), "version": item.version,
            "receiver": item.notification.receiver, "reason": "failed",
            "error": result.error or "", "error_kind": result.error_kind or "",
            "attempts": str(result.attempts), "ticket": item.ticket}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_order(ticket: str) -> tuple[int, int]:
    ms, _, seq = ticket.partition("-")
    return int(ms), int(seq or 0)
