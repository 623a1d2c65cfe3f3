"""A Stem producer and worker in Python that write Redis state exactly as Stem does.

For tests, the benchmark and ``stem-observe demo --stem``: every method issues the Redis
commands a Dart ``Stem`` producer, ``Worker`` (with ``RedisStreamsBroker`` and
``RedisResultBackend``) issues at the same moment,
with the same keys, TTLs, JSON shapes and key order. § and V numbers refer to sections and
vectors of the Stem Redis reference (``stem-redis.md``). Nothing runs in the background: a
"worker" is whoever calls :meth:`StemSimulator.deliver` and then one outcome method per
delivery, so tests control every step (and the clock, through ``clock``). Beat lives in
:mod:`~stem_observe.sources.stem.beat_simulator`, on top of a simulator.

Where the reference leaves the order of status ``meta`` keys open, the simulator follows
Stem's ``_statusMeta``: ``{...envelope.meta, ...extra, "__stemResultEncoder": "json"}``.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final, Literal, cast

import redis

from stem_observe.sources.stem.keys import StemKeys
from stem_observe.sources.stem.wire import (
    Envelope,
    dart_iso,
    dumps,
    heartbeat_to_json,
    parse_envelope_fields,
    parse_envelope_json,
    parse_time,
)
from stem_observe.sources.stem.wire import (
    text as _text,
)

__all__ = ["HEARTBEAT_TTL_MS", "RESULT_TTL_MS", "Delivery", "StemSimulator", "TaskRun",
           "retry_delay_ms", "uuid7"]

RESULT_TTL_MS: Final = 86_400_000  # RedisResultBackend.defaultTtl, 1 day (§3.7.1)
HEARTBEAT_TTL_MS: Final = 60_000  # RedisResultBackend.heartbeatTtl (§2.6)
_DRAIN_BATCH: Final = 128  # RedisStreamsBroker.delayedDrainBatch (§3.2.1)
_RETRY_BASE_MS: Final = 2_000  # ExponentialJitterRetryStrategy (§5.1)
_RETRY_MAX_MS: Final = 300_000
_ENCODER: Final = "json"
_DEFAULT_KEYS: Final = StemKeys()

Outcome = Literal["succeeded", "retried", "dead-lettered", "cancelled"]


def retry_delay_ms(attempt: int, rng: random.Random) -> int:
    """``ExponentialJitterRetryStrategy.nextDelay`` (§5.1) for the attempt that just failed."""
    capped = min(_RETRY_BASE_MS << min(max(attempt, 0), 30), _RETRY_MAX_MS)
    jitter = rng.randint(0, capped // 4)
    return max(0, min(capped - jitter, _RETRY_MAX_MS))


def uuid7(epoch_ms: int, rng: random.Random) -> str:
    """A UUID version 7 (RFC 9562) as Stem's ``Envelope`` ids are (§3.2.3): 48 bits of
    epoch milliseconds, then random bits from ``rng`` (seed it for reproducible ids)."""
    value = (epoch_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76 | rng.getrandbits(12) << 64 | 0b10 << 62 | rng.getrandbits(62)
    return str(uuid.UUID(int=value))


@dataclass(frozen=True, slots=True)
class Delivery:
    """A stream entry read by a consumer; Stem's receipt is ``stream|group|consumer|id``."""

    envelope: Envelope
    stream: str
    entry_id: str
    consumer: str
    group: str

    @property
    def receipt(self) -> str:
        return f"{self.stream}|{self.group}|{self.consumer}|{self.entry_id}"


@dataclass(frozen=True, slots=True)
class TaskRun:
    """What :meth:`StemSimulator.run_task` did; ``others`` (read in the same ``XREADGROUP``)
    are left in flight for the caller."""

    delivery: Delivery
    outcome: Outcome
    others: tuple[Delivery, ...] = ()


@dataclass(slots=True)
class _WorkerStats:
    started_at_us: int
    started: int = 0
    completed: int = 0
    failed: int = 0
    queues: list[str] = field(default_factory=list)
    last_start_us: int | None = None


class StemSimulator:
    """Writes what Stem writes. ``clock`` returns epoch seconds (a fake clock makes delays
    and retries deterministic); ``rng`` drives ids and retry jitter. Not thread-safe: use
    one simulator per thread (they may share a Redis client)."""

    def __init__(
        self, client: redis.Redis, keys: StemKeys = _DEFAULT_KEYS, *,
        worker_namespace: str = "stem", clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.worker_namespace = worker_namespace
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._started: dict[str, int] = {}  # receipt -> start time (µs), as the worker keeps it
        self._workers: dict[str, _WorkerStats] = {}

    # ------------------------------------------------------------------ producer
    def enqueue(
        self, name: str, args: Mapping[str, Any] | None = None, *, queue: str = "default",
        priority: int = 0, max_retries: int = 0, headers: Mapping[str, str] | None = None,
        meta: Mapping[str, Any] | None = None, not_before: float | datetime | None = None,
        task_id: str | None = None, traceparent: str | None = None,
    ) -> Envelope:
        """``Stem.enqueue`` (§3.3.1, §3.7.3, V11): publish, then the ``queued`` status.

        ``not_before`` (epoch seconds or an aware ``datetime``) in the future sends the
        envelope to the delayed set; otherwise it is XADDed with ``notBefore`` set.
        """
        now_us = self._now_us()
        if isinstance(not_before, datetime):
            not_before = not_before.timestamp()
        all_headers = dict(headers or {})
        if traceparent is not None:
            all_headers["traceparent"] = traceparent
        all_headers["stem-args-encoder"] = _ENCODER
        envelope = Envelope(
            id=task_id or uuid7(now_us // 1000, self._rng), name=name, args=dict(args or {}),
            headers=all_headers, enqueued_at=now_us / 1e6,
            not_before=None if not_before is None else _us(not_before) / 1e6,
            priority=priority, max_retries=max_retries, queue=queue,
            meta={**(meta or {}), "stem.task": name, "__stemArgsEncoder": _ENCODER},
        )
        self._publish(envelope, now_us)
        self._set_status(envelope.id, "queued", attempt=0, now_us=now_us, meta={
            **envelope.meta, "queue": queue, "maxRetries": max_retries,
            "__stemResultEncoder": _ENCODER,
        })
        return envelope

    # ------------------------------------------------------------------ consumer
    def deliver(self, queue: str, consumer: str, *, count: int = 1) -> list[Delivery]:
        """One turn of Stem's consume loop (§3.2.2, §3.3.2, §3.3.3): ensure the group on
        all ten streams, move due delayed envelopes to their streams, then one
        ``XREADGROUP ... COUNT <count> STREAMS p9..p1 base > ...`` (no ``BLOCK``).

        As in Redis, ``count`` applies per stream; every entry read is returned (and is in
        the consumer's pending list), highest priority first. An entry without ``name``
        raises ``wire.ParseError`` (it breaks Stem's loop too) and stays pending.
        """
        group = self.keys.group(queue)
        streams = self.keys.streams(queue)
        for stream in streams:
            self._ensure_group(stream, group)
        self._drain_delayed(queue)
        reply = cast(Any, self.client.xreadgroup(
            group, consumer, {stream: ">" for stream in streams}, count=count,
        ))
        items = reply.items() if isinstance(reply, dict) else (reply or [])
        deliveries: list[Delivery] = []
        for stream_key, read in items:
            entries = read[0] if read and isinstance(read[0], list) else read  # RESP3: [[...]]
            for entry_id, raw_fields in entries:
                fields = {_text(k): _text(v) for k, v in (raw_fields or {}).items()}
                deliveries.append(Delivery(
                    envelope=parse_envelope_fields(fields), stream=_text(stream_key),
                    entry_id=_text(entry_id), consumer=consumer, group=group,
                ))
        return deliveries

    def start(self, delivery: Delivery, worker_id: str | None) -> None:
        """The ``running`` status (§3.7.3, V12). ``worker_id`` is the Worker's
        ``consumerName`` and may be ``None`` (then ``meta.worker`` is ``null``)."""
        now_us = self._now_us()
        self._started[delivery.receipt] = now_us
        stats = self._worker(worker_id, now_us)
        stats.started += 1
        stats.last_start_us = now_us
        if delivery.envelope.queue not in stats.queues:
            stats.queues.append(delivery.envelope.queue)
        self._set_status(delivery.envelope.id, "running", attempt=delivery.envelope.attempt,
                         now_us=now_us, meta=self._status_meta(delivery.envelope, {
                             "worker": worker_id, "startedAt": dart_iso(now_us / 1e6)}))

    def succeed(self, delivery: Delivery, worker_id: str | None, result: Any = None) -> None:
        """``XACK`` then the ``succeeded`` status with the result as payload (§3.3.4, §3.7.3)."""
        now_us = self._now_us()
        started = self._started.pop(delivery.receipt, now_us)
        self._ack(delivery)
        self._worker(worker_id, now_us).completed += 1
        self._set_status(delivery.envelope.id, "succeeded", attempt=delivery.envelope.attempt,
                         now_us=now_us, payload=result,
                         meta=self._status_meta(delivery.envelope, {
                             "worker": worker_id, "completedAt": dart_iso(now_us / 1e6),
                             "startedAt": dart_iso(started / 1e6)}))

    def fail(
        self, delivery: Delivery, worker_id: str | None, error_type: str, message: str, *,
        stack: str | None = None, delay_ms: int | None = None,
    ) -> Literal["retried", "dead-lettered"]:
        """The handler threw (§5.3, V12, V13). With retries left: ``XACK``, republish with
        ``attempt + 1`` and ``notBefore = now + delay`` (the delayed set, or the stream when
        the delay is 0), ``retried`` status. Otherwise: ``XACK`` + ``LPUSH`` the dead letter
        (``max-retries-exhausted``), ``failed`` status. ``delay_ms`` defaults to §5.1's
        strategy. Stem writes the error's ``toString()``, modelled as ``"<type>: <message>"``,
        as the status ``error.message`` and as the dead letter's ``meta.error``."""
        envelope = delivery.envelope
        now_us = self._now_us()
        started = self._started.pop(delivery.receipt, now_us)
        text = f"{error_type}: {message}"
        error = {"type": error_type, "message": text, "stack": stack}
        if envelope.attempt < envelope.max_retries:
            delay = retry_delay_ms(envelope.attempt, self._rng) if delay_ms is None else delay_ms
            self._ack(delivery)
            self._publish(replace(envelope, attempt=envelope.attempt + 1,
                                  not_before=(now_us + delay * 1000) / 1e6), now_us)
            self._set_status(envelope.id, "retried", attempt=envelope.attempt, now_us=now_us,
                             error={**error, "retryable": True, "meta": {}},
                             meta=self._status_meta(envelope, {"retryDelayMs": delay}))
            return "retried"
        self._dead_letter(delivery, "max-retries-exhausted", {"error": text}, now_us)
        self._worker(worker_id, now_us).failed += 1
        self._set_status(envelope.id, "failed", attempt=envelope.attempt, now_us=now_us,
                         error={**error, "retryable": False, "meta": {}},
                         meta=self._status_meta(envelope, {
                             "worker": worker_id, "failedAt": dart_iso(now_us / 1e6),
                             "startedAt": dart_iso(started / 1e6)}))
        return "dead-lettered"

    def revoke(
        self, delivery: Delivery, worker_id: str | None, reason: str = "revoked", *,
        requested_by: str | None = None, revoked_at: float | None = None,
    ) -> None:
        """A revoked delivery (§3.7.3, ``_handleRevokedDelivery``): ``XACK`` then the
        ``cancelled`` status; ``revokedReason``/``revokedBy``/``revokedAt`` come from the
        revoke entry and are appended after ``__stemResultEncoder``, as Stem does."""
        now_us = self._now_us()
        self._started.pop(delivery.receipt, None)
        self._ack(delivery)
        meta = self._status_meta(delivery.envelope, {"worker": worker_id, "revoked": True})
        meta["revokedReason"] = reason
        if requested_by is not None:
            meta["revokedBy"] = requested_by
        meta["revokedAt"] = dart_iso(now_us / 1e6 if revoked_at is None else revoked_at)
        self._set_status(delivery.envelope.id, "cancelled", attempt=delivery.envelope.attempt,
                         now_us=now_us, meta=meta)

    def dead_letter_unregistered(self, delivery: Delivery) -> None:
        """No handler for the task name (§3.4.1, §5.3): ``XACK`` + ``LPUSH`` with reason
        ``unregistered-task`` and ``meta`` null; the status record is not touched."""
        self._dead_letter(delivery, "unregistered-task", None, self._now_us())

    def run_task(
        self, name: str, args: Mapping[str, Any] | None = None, *,
        outcome: Literal["succeed", "fail", "revoke", "unregistered"] = "succeed",
        worker_id: str = "stem-worker-sim", queue: str = "default", priority: int = 0,
        max_retries: int = 0, meta: Mapping[str, Any] | None = None, result: Any = None,
        error_type: str = "Exception", message: str = "boom",
        delay_ms: int | None = None,
    ) -> TaskRun:
        """Enqueue, deliver, start and finish one task (for demos and tests). Raises
        :class:`LookupError` when the task is not delivered (e.g. an older backlog)."""
        envelope = self.enqueue(name, args, queue=queue, priority=priority,
                                max_retries=max_retries, meta=meta)
        deliveries = self.deliver(queue, worker_id, count=1)
        mine = [d for d in deliveries if d.envelope.id == envelope.id]
        if not mine:
            raise LookupError(f"task {envelope.id} was not delivered from queue {queue!r}")
        delivery, others = mine[0], tuple(d for d in deliveries if d is not mine[0])
        if outcome == "unregistered":
            self.dead_letter_unregistered(delivery)
            return TaskRun(delivery, "dead-lettered", others)
        self.start(delivery, worker_id)
        if outcome == "revoke":
            self.revoke(delivery, worker_id)
            return TaskRun(delivery, "cancelled", others)
        if outcome == "fail":
            done = self.fail(delivery, worker_id, error_type, message, delay_ms=delay_ms)
            return TaskRun(delivery, done, others)
        self.succeed(delivery, worker_id, result)
        return TaskRun(delivery, "succeeded", others)

    # ------------------------------------------------------------------ heartbeats
    def heartbeat(
        self, worker_id: str, *, queues: Mapping[str, int] | None = None,
        isolate_count: int = 1, inflight: int = 0, extras: Mapping[str, Any] | None = None,
        publish: bool = False, store: bool = True, ttl_ms: int = HEARTBEAT_TTL_MS,
    ) -> dict[str, Any]:
        """A worker heartbeat (§2.4-§2.6). ``store``: ``SET <backend>:worker:heartbeat:<id>
        PX ttl`` + ``SADD <backend>:worker:heartbeats``; ``publish``: ``PUBLISH
        stem:heartbeat:<worker namespace>``. ``queues`` maps queue -> in-flight count;
        ``extras`` override the realistic defaults. Returns the heartbeat JSON object."""
        now_us = self._now_us()
        stats = self._worker(worker_id, now_us)
        concurrency = os.cpu_count() or 1
        uptime_ms = max(0, now_us - stats.started_at_us) // 1000
        subscribed = list(queues or {}) or stats.queues or ["default"]
        defaults: dict[str, Any] = {
            "host": socket.gethostname(), "hostname": socket.gethostname(), "pid": os.getpid(),
            "concurrency": concurrency, "maxConcurrency": concurrency,
            "prefetch": concurrency * 2, "autoscale": False,
            "startedAt": dart_iso(stats.started_at_us / 1e6), "uptimeMs": uptime_ms,
            "uptime": _uptime(uptime_ms), "cpuCount": concurrency, "started": stats.started,
            "completed": stats.completed, "failed": stats.failed,
            "subscriptions": {"queues": subscribed},
        }
        lease = stats.last_start_us / 1e6 if inflight > 0 and stats.last_start_us else None
        beat = heartbeat_to_json(
            worker_id=worker_id, namespace=self.worker_namespace, timestamp=now_us / 1e6,
            isolate_count=isolate_count, inflight=inflight, last_lease_renewal=lease,
            queues=queues, extras={**defaults, **(extras or {})},
        )
        text = dumps(beat)
        if publish:
            self.client.publish(self.keys.heartbeat_channel(self.worker_namespace), text)
        if store:
            self.client.set(self.keys.heartbeat(worker_id), text, px=ttl_ms)
            self.client.sadd(self.keys.heartbeats(), worker_id)
        return beat

    # ------------------------------------------------------------------ internals
    def now(self) -> float:
        """The simulator's clock (epoch seconds)."""
        return self._clock()

    def new_id(self, epoch_ms: int) -> str:
        """A UUIDv7 at ``epoch_ms``, as Stem's ids and lock owners are, from the simulator's rng."""
        return uuid7(epoch_ms, self._rng)

    def _now_us(self) -> int:
        return _us(self._clock())

    def _worker(self, worker_id: str | None, now_us: int) -> _WorkerStats:
        return self._workers.setdefault(worker_id or "", _WorkerStats(started_at_us=now_us))

    def _ensure_group(self, stream: str, group: str) -> None:
        """``XGROUP CREATE <stream> <group> 0 MKSTREAM``, ignoring ``BUSYGROUP`` (§3.2.2)."""
        try:
            self.client.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def xadd(self, envelope: Envelope) -> None:
        """``RedisStreamsBroker._enqueue``: the group, then the 12 fields (§3.2.4, §3.2.5)."""
        stream = self.keys.stream(envelope.queue, envelope.priority)
        self._ensure_group(stream, self.keys.group(envelope.queue))
        fields: dict[Any, Any] = dict(envelope.stream_fields())
        self.client.xadd(stream, fields)

    def _publish(self, envelope: Envelope, now_us: int) -> None:
        """``publish`` (§3.3.1): future ``notBefore`` -> ``ZADD`` (score = epoch ms)."""
        if envelope.not_before is not None and _us(envelope.not_before) > now_us:
            member = dumps(envelope.to_json())
            self.client.zadd(self.keys.delayed(envelope.queue),
                             {member: _us(envelope.not_before) // 1000})
        else:
            self.xadd(envelope)

    def _drain_delayed(self, queue: str) -> None:
        """§3.3.2: due members are ``ZREM``ed (only the winner moves them) and XADDed to
        the stream of their priority, with ``queue`` = the delayed key's queue."""
        key = self.keys.delayed(queue)
        due = cast(list[Any], self.client.zrangebyscore(
            key, "-inf", self._now_us() // 1000, start=0, num=_DRAIN_BATCH))
        for member in due:
            if self.client.zrem(key, member):
                self.xadd(replace(parse_envelope_json(_text(member)), queue=queue))

    def _ack(self, delivery: Delivery) -> None:
        self.client.xack(delivery.stream, delivery.group, delivery.entry_id)

    def _dead_letter(
        self, delivery: Delivery, reason: str, meta: dict[str, Any] | None, now_us: int,
    ) -> None:
        """``deadLetter`` (§3.3.4, §3.4.1): ``XACK``, then ``LPUSH <ns>:dead:<queue>``."""
        self._ack(delivery)
        entry = {"envelope": delivery.envelope.to_json(), "reason": reason, "meta": meta,
                 "deadAt": dart_iso(now_us / 1e6)}
        self.client.lpush(self.keys.dead(delivery.envelope.queue), dumps(entry))

    @staticmethod
    def _status_meta(envelope: Envelope, extra: Mapping[str, Any]) -> dict[str, Any]:
        """``_statusMeta``: envelope meta, the base keys, ``extra``, then the encoder."""
        return {**envelope.meta, "task": envelope.name, "stem.task": envelope.name,
                "queue": envelope.queue, "stem.queue": envelope.queue, **extra,
                "__stemResultEncoder": _ENCODER}

    def _set_status(
        self, task_id: str, state: str, *, attempt: int, now_us: int, meta: dict[str, Any],
        payload: Any = None, error: dict[str, Any] | None = None,
    ) -> None:
        """``RedisResultBackend.set`` (§3.7.2): ``GET`` to keep ``createdAt``, then
        ``SET <ns>:result:<id> <record> PX 86400000``."""
        key = self.keys.result(task_id)
        now = dart_iso(now_us / 1e6)
        created = now
        previous = self.client.get(key)
        if isinstance(previous, bytes | str):
            try:
                data = json.loads(previous)
                stamp = parse_time(data.get("createdAt") if isinstance(data, dict) else None)
            except ValueError:  # unreadable: start over
                stamp = None
            if stamp is not None:
                created = dart_iso(stamp)
        record = {"id": task_id, "state": state, "payload": payload, "error": error,
                  "meta": meta, "attempt": attempt, "createdAt": created, "updatedAt": now}
        self.client.set(key, dumps(record), px=RESULT_TTL_MS)


def _us(epoch_s: float) -> int:
    return round(epoch_s * 1_000_000)


def _uptime(uptime_ms: int) -> str:
    """The worker's ``uptime`` string: ``<d>d <h>h <m>m``, ``<h>h <m>m`` or ``<m>m``."""
    minutes = uptime_ms // 60_000
    days, hours, mins = minutes // 1440, minutes // 60 % 24, minutes % 60
    if days:
        return f"{days}d {hours}h {mins}m"
    return f"{hours}h {mins}m" if hours else f"{mins}m"
