"""The fleet stream as a source: events forwarded by workers, re-emitted in ``serve``.

:class:`FleetConsumer` reads the stream that :class:`~stem_observe.sinks.fleet.FleetForwarder`
writes, with a consumer group so several ``serve`` instances share it (each entry goes to
one of them). Each entry is decoded back into its event and sent through
:mod:`stem_observe.signals` with the sender ``"fleet"``: the metrics sink and the rules
engine see it like any other event; the bridge does not trace it again (the worker exported
its span), and the metrics sink reads the worker's trace id from the event's
``traceparent`` for its exemplars. Entries are acknowledged (``XACK``) after they were
emitted, one round trip per batch.

* **Versions**: entries of record format versions 3, 2 and 1 are all read, so workers can
  be upgraded one at a time (``sources/_fleet_wire.py``).
* **Bad entries** (unknown version or kind, malformed MessagePack, JSON or fields) are
  counted in ``stem_observe_fleet_parse_errors_total{kind}``, logged (rate-limited),
  acknowledged and skipped.
* **Dead consumers**: entries another consumer read and never acknowledged for
  ``claim_idle_s`` are claimed (``XAUTOCLAIM``) and handled here.
* **Redis restarts**: a lost group (``NOGROUP``) is created again, reading from the start of
  the new stream; acknowledgements that failed are retried after reconnecting; the loop
  retries with backoff and never dies.
* **Drops**: a forwarder's ``fleet-dropped`` reports become
  ``stem_observe_fleet_dropped_events_total{worker}``.

A group created at first start begins at the stream's end (``$``): history written before
any ``serve`` ran is not replayed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from redis.backoff import NoBackoff
from redis.retry import Retry

from stem_observe import events as ev
from stem_observe._throttle import Throttle
from stem_observe.errors import ConfigError
from stem_observe.signals import emit
from stem_observe.sinks._labels import LabelLimiter
from stem_observe.sinks.fleet import DEFAULT_STREAM, FLEET_SENDER
from stem_observe.sources._fleet_wire import KINDS, DropReport, WireError, decode

__all__ = ["DEFAULT_GROUP", "FleetConsumer"]

logger = logging.getLogger("stem_observe.sources.fleet")

DEFAULT_GROUP: Final = "stem-observe"
_MAX_WORKERS: Final = 1000


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "stem_observe_fleet_events", "Events read from the fleet stream and emitted, by "
            "kind.", ["kind"], registry=registry)
        self.parse_errors = Counter(
            "stem_observe_fleet_parse_errors", "Fleet stream entries that could not be "
            "decoded and were skipped, by kind (version, kind, malformed).", ["kind"],
            registry=registry)
        self.dropped = Counter(
            "stem_observe_fleet_dropped_events", "Events workers could not forward to the "
            "fleet stream (Redis slow or down), as the workers reported them.", ["worker"],
            registry=registry)
        self.claimed = Counter(
            "stem_observe_fleet_claimed", "Entries claimed from consumers that stopped "
            "before acknowledging them.", registry=registry)
        self.redis_up = Gauge(
            "stem_observe_fleet_redis_up", "1 when the last read of the fleet stream "
            "reached Redis.", registry=registry)
        self.all = (self.events, self.parse_errors, self.dropped, self.claimed, self.redis_up)
        for kind in KINDS:  # known kinds show up at 0
            self.events.labels(kind)


class FleetConsumer:
    """Reads the fleet stream ``stream`` as ``consumer`` of ``group`` and emits its events.

    ``consumer`` defaults to ``host-pid``. ``block_s`` is how long one read waits for new
    entries; ``timeout_s`` bounds connecting and each other command.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        stream: str = DEFAULT_STREAM,
        group: str = DEFAULT_GROUP,
        consumer: str | None = None,
        batch: int = 500,
        block_s: float = 1.0,
        claim_idle_s: float = 60.0,
        timeout_s: float = 5.0,
        max_backoff_s: float = 5.0,
        registry: CollectorRegistry = REGISTRY,
        sender: str = FLEET_SENDER,
    ) -> None:
        if not stream or not group:
            raise ConfigError("stream" if not stream else "group", "must not be empty")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigError("batch", f"must be a positive integer, got {batch!r}")
        for name, value in (("block_s", block_s), ("claim_idle_s", claim_idle_s),
                            ("timeout_s", timeout_s), ("max_backoff_s", max_backoff_s)):
            if not isinstance(value, int | float) or value <= 0:
                raise ConfigError(name, f"must be a positive number of seconds, got {value!r}")
        self.stream = stream
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.batch = batch
        self.block_s = float(block_s)
        self.claim_idle_s = float(claim_idle_s)
        self.max_backoff_s = float(max_backoff_s)
        self.sender = sender
        try:
            self.client = redis.Redis.from_url(
                redis_url, socket_connect_timeout=timeout_s,
                socket_timeout=timeout_s + block_s, retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:
            raise ConfigError("fleet", f"invalid Redis URL: {exc}") from None
        self.registry = registry
        self.metrics = _Metrics(registry)
        self._workers = LabelLimiter("worker", _MAX_WORKERS)
        self._group_ready = False
        self._start_id = "$"
        self._unacked: list[bytes] = []
        self._recover = True  # read this consumer's own pending entries first
        self._next_claim = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._throttle = Throttle()
        self.ready = threading.Event()
        """Set while reads of the stream succeed."""
        self.emitted = 0

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> FleetConsumer:
        if self._thread is not None:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="stem-observe-fleet",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
        with contextlib.suppress(redis.RedisError):
            self._ack_pending()
        self.client.close()

    def close(self) -> None:
        """Stop and unregister the consumer's metrics."""
        self.stop()
        for metric in self.metrics.all:
            with contextlib.suppress(KeyError):
                self.registry.unregister(metric)

    def healthy(self) -> bool:
        return self.ready.is_set() and self._thread is not None and self._thread.is_alive()

    # ----------------------------------------------------------------- the loop

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self.poll_once()
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    self._log("nogroup", "fleet group %s on %s is gone (Redis restarted?); "
                              "creating it again", self.group, self.stream)
                    self._group_ready = False
                    self._start_id = "0"  # everything in a new stream is news
                    self._unacked.clear()
                    continue
                self._failed(exc, backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            except redis.RedisError as exc:
                self._failed(exc, backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            except Exception as exc:  # a bug: log it, keep consuming
                logger.exception("fleet consumer failed; retrying")
                self._failed(exc, backoff, log=False)
                backoff = min(backoff * 2, self.max_backoff_s)
            else:
                backoff = 0.5

    def _failed(self, exc: BaseException, backoff: float, *, log: bool = True) -> None:
        self._recover = True
        self.metrics.redis_up.set(0)
        self.ready.clear()
        if log:
            self._log("read", "fleet consumer cannot read %s (%s); retrying", self.stream,
                      exc)
        self._stop.wait(backoff)

    def poll_once(self) -> int:
        """One step: set up the group, retry acknowledgements, claim, read one batch.

        Returns the entries handled.
        """
        if not self._group_ready:
            self._create_group()
        self._ack_pending()
        handled = 0
        if self._recover:
            handled += self._read_own_pending()
            self._recover = False
        now = time.monotonic()
        if now >= self._next_claim:
            handled += self._claim()
            self._next_claim = now + max(self.claim_idle_s / 2, 0.2)
        reply = self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                       count=self.batch, block=int(self.block_s * 1000))
        self.metrics.redis_up.set(1)
        self.ready.set()
        for entries in _stream_entries(reply):
            handled += self._handle(entries)
        return handled

    def _read_own_pending(self) -> int:
        """Entries delivered to this consumer whose delivery reply was lost (Redis went away
        between delivering and answering): read them again by id and handle them."""
        handled = 0
        start = "0"
        for _ in range(100):
            reply = self.client.xreadgroup(self.group, self.consumer, {self.stream: start},
                                           count=self.batch)
            entries = [e for batch in _stream_entries(reply) for e in batch]
            if not entries:
                break
            handled += self._handle(entries)
            start = _text(entries[-1][0])
        return handled

    def _create_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id=self._start_id,
                                      mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _claim(self) -> int:
        handled = 0
        start = "0-0"
        for _ in range(100):  # bounded: the rest waits for the next round
            reply = self.client.xautoclaim(
                self.stream, self.group, self.consumer,
                min_idle_time=int(self.claim_idle_s * 1000), start_id=start, count=self.batch)
            start = _text(reply[0])
            entries = reply[1] or []
            if entries:
                self.metrics.claimed.inc(len(entries))
                handled += self._handle(entries)
            if start == "0-0" or not entries:
                break
        return handled

    def _handle(self, entries: Iterable[Any]) -> int:
        ids: list[bytes] = []
        for entry_id, fields in entries:
            ids.append(entry_id)
            if fields is None:  # trimmed (MAXLEN) before it was read
                continue
            try:
                items = decode(fields)
            except WireError as exc:
                items = [exc]
            except Exception as exc:  # a decoder bug must not stall the stream
                items = [WireError("malformed", f"undecodable entry: {exc!r}")]
            for item in items:
                if isinstance(item, WireError):
                    self.metrics.parse_errors.labels(item.kind).inc()
                    self._log(f"parse:{item.kind}", "skipped a fleet record in entry %s of "
                              "%s: %s", _text(entry_id), self.stream, item)
                elif isinstance(item, DropReport):
                    if item.count:
                        self.metrics.dropped.labels(self._workers.admit(item.worker)).inc(
                            item.count)
                else:
                    self._emit(item)
        if ids:
            self._unacked.extend(ids)
            self._ack_pending()
        return len(ids)

    def _emit(self, event: ev.Event) -> None:
        emit(event, self.sender)
        self.metrics.events.labels(_KIND_NAMES[type(event)]).inc()
        self.emitted += 1

    def _ack_pending(self) -> None:
        if self._unacked:
            self.client.xack(self.stream, self.group, *self._unacked)
            self._unacked.clear()

    def _log(self, key: str, message: str, *args: object) -> None:
        if self._throttle.allow(key):
            logger.warning(message, *args)


_KIND_NAMES: Final[dict[type[ev.Event], str]] = {cls: kind for kind, cls in KINDS.items()}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _stream_entries(reply: Any) -> Iterable[Any]:
    """The entry lists of an ``XREADGROUP`` reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    if isinstance(reply, Mapping):
        return [entries[0] if entries and isinstance(entries[0], list) else entries
                for entries in reply.values()]
    return [entries for _stream, entries in reply]
