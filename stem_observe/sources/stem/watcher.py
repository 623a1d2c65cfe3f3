"""The Stem watcher: a live Stem deployment's Redis, turned into signals.

Three threads, all started by :meth:`StemWatcher.start`:

* the **poller**, every ``poll_interval_s``: discovers queues, gathers their counts (two
  pipelined round trips for all queues, see ``inspect``) and sends ``queue-snapshot``;
  reads new dead letters (``task-dead-lettered``) and stored worker heartbeats
  (``worker-heartbeat``), and Beat's schedule history (``schedule-entry-dispatched`` with
  its drift, ``schedule-entry-failed``);
* the **reconciler**, every ``reconcile_interval_s`` and whenever the listener
  (re)subscribes: scans every status record, the safety net for transitions that
  notifications missed (its first scan only learns what is there: history is not news);
* the **listener**: Redis keyspace notifications for the status records (when the server
  has them on, or ``notifications="enable"`` turned them on) and the heartbeat pub/sub
  channels. Notified keys are read in batches.

Every status transition is sent once however it was seen (``statuses.StatusTracker``).
Redis going away is logged (rate-limited) and counted; both threads retry with backoff,
and a reconnect triggers a reconcile. Nothing here writes to Redis, except
``notifications="enable"`` (``CONFIG SET notify-keyspace-events``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from stem_observe import events as ev
from stem_observe.signals import emit
from stem_observe.sources.stem.deadletters import DeadLetterTracker
from stem_observe.sources.stem.inspect import QueueStats, discover_queues, queue_stats
from stem_observe.sources.stem.keys import StemKeys
from stem_observe.sources.stem.schedules import ScheduleTracker
from stem_observe.sources.stem.statuses import StatusTracker
from stem_observe.sources.stem.wire import ParseError, parse_heartbeat, parse_status
from stem_observe.sources.stem.wire import text as _text

__all__ = ["StemWatcher", "WatcherOptions"]

logger = logging.getLogger("stem_observe.sources.stem")

Notifications = Literal["auto", "on", "off", "enable"]
T = TypeVar("T")
_BATCH = 1000
_LOG_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class WatcherOptions:
    keys: StemKeys = field(default_factory=StemKeys)
    worker_namespaces: tuple[str, ...] = ("stem",)
    poll_interval_s: float = 5.0
    reconcile_interval_s: float = 60.0
    heartbeat_interval_s: float = 10.0
    """Stem's worker heartbeat interval (heartbeats do not carry it)."""
    notifications: Notifications = "auto"
    discover_interval_s: float = 30.0
    """How often queues are rediscovered by ``SCAN`` (the whole keyspace); between, the
    known queues (and any a heartbeat names) are counted."""
    include_control_queues: bool = False
    clock_skew_s: float = 60.0
    """How far Stem workers' clocks may be from the sidecar's (``updatedAt`` is theirs)."""
    max_tasks: int = 200_000
    """Status records remembered to de-duplicate transitions."""


class _Metrics:
    """The watcher's own health, in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.parse_errors = Counter(
            "stem_observe_stem_parse_errors", "Items in Stem's Redis data that could not be "
            "parsed and were skipped, by kind.", ["kind"], registry=registry)
        self.transitions = Counter(
            "stem_observe_stem_transitions", "Task status transitions turned into signals, "
            "by how they were seen.", ["source"], registry=registry)
        self.poll_seconds = Histogram(
            "stem_observe_stem_poll_seconds", "Duration of one watcher poll cycle.",
            registry=registry, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.redis_up = Gauge(
            "stem_observe_stem_redis_up", "1 when the last poll reached Redis.",
            registry=registry)
        self.queues = Gauge(
            "stem_observe_stem_queues", "Queues the watcher sees.", registry=registry)
        self.notifications = Gauge(
            "stem_observe_stem_keyspace_notifications",
            "1 when status changes arrive by keyspace notifications.", registry=registry)
        self.step_errors = Counter(
            "stem_observe_stem_step_errors", "Poll steps that failed on bad data and were "
            "skipped, by step.", ["step"], registry=registry)
        self.dropped = Counter(
            "stem_observe_stem_dropped", "Items the watcher saw but could not send, by "
            "kind.", ["kind"], registry=registry)
        self.all = (self.parse_errors, self.transitions, self.poll_seconds, self.redis_up,
                    self.queues, self.notifications, self.step_errors, self.dropped)


class StemWatcher:
    """Watches one Stem deployment through ``client`` (broker and backend on one Redis;
    pass ``backend`` when the result backend is a different Redis)."""

    def __init__(
        self,
        client: redis.Redis,
        options: WatcherOptions | None = None,
        *,
        backend: redis.Redis | None = None,
        registry: CollectorRegistry = REGISTRY,
        sender: str = "stem",
    ) -> None:
        self.client = client
        self.backend = backend or client
        self.options = options or WatcherOptions()
        self.keys = self.options.keys
        self.sender = sender
        self.registry = registry
        self.metrics = _Metrics(registry)
        self.statuses = StatusTracker(self._emit, max_tasks=self.options.max_tasks)
        self.dead_letters = DeadLetterTracker(
            client, self.keys, self._emit, self._parse_error,
            lambda kind: self.metrics.dropped.labels(kind).inc(),
        )
        self.schedules = ScheduleTracker(client, self.keys, self._emit, self._parse_error)
        self._queues: dict[str, list[str]] = {}
        self._dead_marks: dict[str, tuple[int, bytes | None]] = {}
        self._heartbeats: dict[str, float] = {}  # worker id -> last timestamp sent
        self._heartbeat_lock = threading.Lock()
        self._stored: set[str] = set()  # workers whose heartbeat key was there last poll
        self._discovered_at: float | None = None
        self._last_scan_started: float | None = None
        self._overflow_reported = 0
        self._stop = threading.Event()
        self._reconcile_now = threading.Event()
        self._wake = threading.Event()  # ends the poller's wait early (stop, reconcile now)
        self._threads: list[threading.Thread] = []
        self._last_log: dict[str, float] = {}
        self.notifications_on = False
        self.polls = 0
        self.reconciles = 0
        self.started_at = time.time()
        """Status records updated before this are history to the first reconcile."""
        self.ready = threading.Event()
        self.listening = threading.Event()
        """Set while the listener is subscribed (notifications and heartbeat channels)."""

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> StemWatcher:
        self._stop.clear()
        self.started_at = time.time()
        self.notifications_on = self._setup_notifications()
        self.metrics.notifications.set(1 if self.notifications_on else 0)
        for target, name in ((self._poll_loop, "poller"), (self._listen_loop, "listener"),
                             (self._reconcile_loop, "reconciler")):
            thread = threading.Thread(target=target, name=f"stem-observe-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._reconcile_now.set()
        for thread in self._threads:
            thread.join(timeout=timeout_s)
        self._threads.clear()

    def close(self) -> None:
        """Stop and unregister the watcher's own metrics."""
        self.stop()
        for metric in self.metrics.all:
            with contextlib.suppress(KeyError):
                self.registry.unregister(metric)

    # ----------------------------------------------------------------- poller

    def poll_once(self, now: float | None = None) -> None:
        """One cycle: heartbeats, queues and dead letters.

        Each step runs on its own: bad data under one key (a wrong type, say) is logged
        and skipped and does not stop the others. Only a lost connection raises.
        """
        started = time.perf_counter()
        now = time.time() if now is None else now
        heartbeat_queues = self._step("heartbeats", lambda: self._poll_heartbeats(now)) or []
        queues = self._queues
        if self._discovered_at is None or (
            now - self._discovered_at >= self.options.discover_interval_s
        ) or set(heartbeat_queues) - set(queues):
            found = self._step("discovery", lambda: discover_queues(
                self.client, self.keys, include_control=self.options.include_control_queues,
                extra=heartbeat_queues,
            ))
            if found is not None:
                queues, self._discovered_at = found, now
        stats = self._step("queues", lambda: queue_stats(self.client, self.keys, queues,
                                                         now=now)) or {}
        self._step("schedules", functools.partial(self.schedules.poll, prime=self.polls == 0))
        self._send_queues(stats, now)
        for gone in set(self._queues) - set(queues):
            self._emit(ev.QueueSnapshot(occurred_at=now, queue=gone,
                                        namespace=self.keys.broker, gone=True))
            self.dead_letters.forget(gone)
            self._dead_marks.pop(gone, None)
        self._queues = queues
        self.metrics.queues.set(len(queues))
        self.polls += 1
        self.metrics.poll_seconds.observe(time.perf_counter() - started)

    def _step(self, name: str, step: Callable[[], T]) -> T | None:
        try:
            return step()
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except Exception as exc:  # bad data, a wrong key type, a bug: skip this step only
            self.metrics.step_errors.labels(name).inc()
            self._log(f"step:{name}", "Stem watcher %s step failed (%s); the rest goes on",
                      name, exc)
            return None

    def _send_queues(self, stats: dict[str, QueueStats], now: float) -> None:
        for name, entry in stats.items():
            for error in entry.parse_errors:
                self._parse_error(error)
            self._emit(ev.QueueSnapshot(
                occurred_at=now, queue=name, namespace=self.keys.broker,
                pending=entry.pending, inflight=entry.inflight, delayed=entry.delayed,
                delayed_overdue=entry.delayed_overdue, dead_letters=entry.dead_letters,
                oldest_pending_age_s=entry.oldest_pending_age_s or 0.0,
                oldest_dead_letter_age_s=entry.oldest_dead_letter_age_s or 0.0,
            ))
            # Read the list only when it changed: a new entry changes its head.
            mark = (entry.dead_letters, entry.newest_dead_letter_raw)
            if entry.dead_letters and self._dead_marks.get(name) != mark:
                self._step("dead_letters", functools.partial(
                    self.dead_letters.poll, name, prime=self.polls == 0))
            self._dead_marks[name] = mark

    def _poll_loop(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self.poll_once()
            except redis.RedisError as exc:
                self.metrics.redis_up.set(0)
                self.ready.clear()
                self._log("poll", "Stem watcher cannot reach Redis (%s); retrying", exc)
                self._wake.wait(backoff)
                self._wake.clear()
                backoff = min(backoff * 2, self.options.poll_interval_s)
                continue
            except Exception:
                logger.exception("Stem watcher poll failed; retrying")
            else:
                backoff = 0.5
                self.metrics.redis_up.set(1)
                self.ready.set()
            self._wake.wait(self.options.poll_interval_s)
            self._wake.clear()

    # ----------------------------------------------------------------- statuses

    def _request_reconcile(self) -> None:
        self._reconcile_now.set()

    def _reconcile_loop(self) -> None:
        primed = False
        while not self._stop.is_set():
            try:
                self.reconcile(prime=not primed)
                primed = True
                self.reconciles += 1
            except redis.RedisError as exc:
                self._log("reconcile", "Stem watcher cannot scan status records (%s)", exc)
                self._stop.wait(1.0)
                continue
            except Exception:
                logger.exception("Stem watcher reconcile failed; retrying")
            self._reconcile_now.wait(self.options.reconcile_interval_s)
            self._reconcile_now.clear()

    def reconcile(self, *, prime: bool = False) -> int:
        """Scan every status record; returns the transitions it found.

        A record last updated before the previous complete scan began (less the allowed
        clock skew) was already seen by that scan, so it is skipped without being kept in
        memory; only recent records need remembering.
        """
        scan_started = time.time()
        horizon = None
        if self._last_scan_started is not None:
            horizon = self._last_scan_started - self.options.clock_skew_s
        found = 0
        batch: list[str] = []
        for raw in self.backend.scan_iter(match=self.keys.result_pattern(), count=_BATCH):
            if self._stop.is_set():
                return found
            batch.append(raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes)
                         else str(raw))
            if len(batch) >= _BATCH:
                found += self._read_statuses(batch, "reconcile", prime=prime, horizon=horizon)
                batch = []
        if batch:
            found += self._read_statuses(batch, "reconcile", prime=prime, horizon=horizon)
        self._last_scan_started = scan_started
        return found

    def _read_statuses(
        self, keys: list[str], source: str, *, prime: bool = False,
        horizon: float | None = None,
    ) -> int:
        values = self.backend.mget(keys)
        found = 0
        for key, raw in zip(keys, values, strict=True):
            if raw is None:
                continue  # expired or deleted meanwhile
            try:
                record = parse_status(raw, task_id=self.keys.task_id_of_result(key))
            except ParseError as exc:
                self._parse_error(exc)
                continue
            if not record.known_state:
                self._parse_error(ParseError("status_state", f"unknown state in {key}"))
            try:
                found += self.statuses.observe(record, prime=prime, since=self.started_at,
                                               horizon=horizon)
            except Exception as exc:  # an odd value in an otherwise valid record
                self._parse_error(ParseError("status", f"{key}: {exc}"))
        if found:
            self.metrics.transitions.labels(source).inc(found)
        overflowed = self.statuses.overflowed - self._overflow_reported
        if overflowed > 0:
            self._overflow_reported += overflowed
            self.metrics.dropped.labels("status_cache").inc(overflowed)
        return found

    # ----------------------------------------------------------------- listener

    def _setup_notifications(self) -> bool:
        mode = self.options.notifications
        if mode == "off":
            return False
        try:
            flags = str(self.backend.config_get("notify-keyspace-events").get(
                "notify-keyspace-events", ""))
            has = "K" in flags and ("$" in flags or "A" in flags)
            if not has and mode == "enable":
                wanted = "".join(sorted(set(flags) | {"K", "$"}))
                self.backend.config_set("notify-keyspace-events", wanted)
                has = True
        except redis.RedisError as exc:
            self._log("config", "cannot read keyspace-notification settings (%s); "
                      "relying on reconcile scans", exc)
            return mode == "on"
        if not has and mode != "on":
            self._log("notifications-off", "Redis keyspace notifications are off: task "
                      "transitions are seen only by reconcile scans (every %ss), and quick "
                      "retries can only be inferred; run with --notifications enable or set "
                      "notify-keyspace-events to K$", self.options.reconcile_interval_s)
        return has or mode == "on"

    def _channels(self) -> tuple[list[str], list[str]]:
        patterns = []
        if self.notifications_on:
            db = self.backend.connection_pool.connection_kwargs.get("db", 0)
            patterns.append(f"__keyspace@{db}__:{self.keys.result_pattern()}")
        channels = [StemKeys.heartbeat_channel(ns) for ns in self.options.worker_namespaces]
        return patterns, channels

    def _listen_loop(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            pubsubs: list[Any] = []
            try:
                self.notifications_on = self._setup_notifications()  # again after a restart
                self.metrics.notifications.set(1 if self.notifications_on else 0)
                patterns, channels = self._channels()
                # Keyspace events come from the backend; Stem publishes heartbeats through
                # the broker's Redis (as `stem worker status --follow` reads them).
                status_pubsub = self.backend.pubsub(  # type: ignore[no-untyped-call]
                    ignore_subscribe_messages=True)
                pubsubs.append(status_pubsub)
                if patterns:
                    status_pubsub.psubscribe(*patterns)
                beat_pubsub = status_pubsub
                if self.client is not self.backend:
                    beat_pubsub = self.client.pubsub(  # type: ignore[no-untyped-call]
                        ignore_subscribe_messages=True)
                    pubsubs.append(beat_pubsub)
                beat_pubsub.subscribe(*channels)
                self.listening.set()
                self._request_reconcile()  # whatever happened while unsubscribed
                backoff = 0.5
                self._listen(pubsubs)
            except Exception as exc:  # never let the listener die: resubscribe
                self.listening.clear()
                self._log("listen", "Stem watcher lost its Redis subscription (%s); "
                          "resubscribing", exc)
                self._request_reconcile()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                for pubsub in pubsubs:
                    with contextlib.suppress(Exception):
                        pubsub.close()

    def _listen(self, pubsubs: list[Any]) -> None:
        prefix = "__keyspace@"
        wait = 0.2 / len(pubsubs)
        while not self._stop.is_set():
            keys: list[str] = []
            for pubsub in pubsubs:
                message = pubsub.get_message(timeout=wait)
                while message is not None:
                    channel = _text(message.get("channel"))
                    data = message.get("data")
                    if channel.startswith(prefix):
                        if _text(data) == "set":
                            keys.append(channel.split(":", 1)[1])
                    elif message.get("type") == "message":
                        self._on_heartbeat_message(data)
                    if len(keys) >= _BATCH:
                        break  # read this batch; the rest waits in the subscription
                    message = pubsub.get_message(timeout=0)
            if keys:
                self._read_statuses(list(dict.fromkeys(keys)), "notification")

    def _on_heartbeat_message(self, data: Any) -> None:
        try:
            event = parse_heartbeat(data, seen_at=time.time(),
                                    interval_s=self.options.heartbeat_interval_s)
        except ParseError as exc:
            self._parse_error(exc)
            return
        self._send_heartbeat(event)

    # ----------------------------------------------------------------- heartbeats

    def _poll_heartbeats(self, now: float) -> list[str]:
        """Send stored heartbeats that are new; returns the queues workers subscribe to."""
        members = sorted(_text(m) for m in self.backend.smembers(self.keys.heartbeats()))
        values = self.backend.mget([self.keys.heartbeat(m) for m in members]) if members else []
        queues: set[str] = set()
        alive: set[str] = set()
        for worker_id, raw in zip(members, values, strict=True):
            if raw is None:
                continue  # its key expired: Stem removes it from the set lazily
            try:
                event = parse_heartbeat(raw, seen_at=now,
                                        interval_s=self.options.heartbeat_interval_s)
            except ParseError as exc:
                self._parse_error(exc)
                continue
            alive.add(worker_id)
            queues.update(event.queues)
            self._send_heartbeat(event)
        for worker_id in self._stored - alive:
            # Its heartbeat key expired (60 s after the last beat): the worker is gone.
            # (Workers seen only on the pub/sub channel age out through their timestamps.)
            with self._heartbeat_lock:
                self._heartbeats.pop(worker_id, None)
            self._emit(ev.WorkerShutdown(occurred_at=now, worker_id=worker_id,
                                         reason="heartbeat-expired", gone=True))
        self._stored = alive
        return sorted(queues)

    def _send_heartbeat(self, event: ev.WorkerHeartbeat) -> None:
        with self._heartbeat_lock:
            last = self._heartbeats.get(event.worker_id)
            if last is not None and event.timestamp <= last:
                return  # already sent, or older (stored key and pub/sub race)
            self._heartbeats[event.worker_id] = event.timestamp
        self._emit(event)

    # ----------------------------------------------------------------- plumbing

    def _emit(self, event: ev.Event) -> None:
        emit(event, self.sender)

    def _parse_error(self, error: ParseError) -> None:
        self.metrics.parse_errors.labels(error.kind).inc()
        self._log(f"parse:{error.kind}", "skipped unparsable Stem data: %s", error)

    def _log(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_log.get(key, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self._last_log[key] = now
            logger.warning(message, *args)

    def healthy(self) -> bool:
        """Ready (the last poll reached Redis) and every thread still running."""
        return self.ready.is_set() and bool(self._threads) and all(
            thread.is_alive() for thread in self._threads)

    def queues(self) -> Iterable[str]:
        return list(self._queues)

