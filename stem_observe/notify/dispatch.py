"""The dispatcher: decides which receiver must hear of a group's state, and delivers on one
thread per receiver so a slow or failing receiver never delays another.

:meth:`Dispatcher.notify` takes a group's current alerts and, per receiver, applies
Alertmanager's dedup rules against a :class:`NotificationLog` (:func:`needs_update`):

1. never notified: send only if something fires (a group that fired and resolved before
   its first flush, or a resolve for an unknown group, sends nothing);
2. alerts fire that the last notification did not list: send (a re-fire after "all
   resolved" counts as a *first* notification);
3. nothing fires: send once if the last notification had firing alerts ("all resolved");
4. ``send_resolved`` and alerts resolved since the last notification: send;
5. otherwise only when ``repeat_interval_s`` has elapsed.

Receivers with ``send_resolved`` false get firing alerts only; when only resolved alerts
remain, the resolution is logged without sending, as Alertmanager does. The log is written
after a successful delivery, so a failed one is re-sent at the next flush (at-least-once).
Each receiver has a bounded queue; a notification that does not fit is dead-lettered and
counted in ``stem_observe_notifications_dropped_total``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from prometheus_client import REGISTRY, CollectorRegistry

from stem_observe.errors import ConfigError
from stem_observe.notify.base import (
    DeadLetterHandler,
    DeliveryError,
    DeliveryPolicy,
    DeliveryResult,
    ErrorKind,
    Receiver,
    RetryPolicy,
)
from stem_observe.notify.clock import SYSTEM_CLOCK, Clock
from stem_observe.notify.model import Alert, Notification, NotificationReason

if TYPE_CHECKING:
    from stem_observe.notify.outbox import OutboxEntry, RedisOutbox

__all__ = [
    "Dispatcher",
    "LogEntry",
    "MemoryNotificationLog",
    "NotificationLog",
    "ReceiverHealth",
    "needs_update",
]

logger = logging.getLogger("stem_observe.notify.dispatch")


@dataclass(frozen=True, slots=True)
class LogEntry:
    """What a receiver was last told of a group: fingerprints, when, and the repeat count."""

    firing: frozenset[str]
    resolved: frozenset[str]
    at: float
    sequence: int = 0


class NotificationLog(Protocol):
    """Where delivered notifications are remembered, per (group key, receiver).

    Called from the engine's thread (:meth:`get`) and the delivery threads (:meth:`put`);
    implementations must be thread-safe and must not block for long.
    """

    def get(self, group_key: str, receiver: str) -> LogEntry | None: ...

    def put(self, group_key: str, receiver: str, entry: LogEntry) -> None: ...


class MemoryNotificationLog:
    """The in-process log: at most ``max_entries`` (group, receiver) pairs, oldest dropped."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], LogEntry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, group_key: str, receiver: str) -> LogEntry | None:
        with self._lock:
            return self._entries.get((group_key, receiver))

    def put(self, group_key: str, receiver: str, entry: LogEntry) -> None:
        with self._lock:
            self._entries[(group_key, receiver)] = entry
            self._entries.move_to_end((group_key, receiver))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


def needs_update(
    entry: LogEntry | None, firing: frozenset[str], resolved: frozenset[str], *,
    send_resolved: bool, repeat_interval_s: float | None, now: float,
) -> NotificationReason | None:
    """Why to notify given the last ``entry``, or ``None`` to stay quiet (see module doc)."""
    if entry is None:
        return "first" if firing else None
    if not firing <= entry.firing:
        return "new_alerts" if entry.firing else "first"
    if not firing:
        return "resolved" if entry.firing else None
    if send_resolved and not resolved <= entry.resolved:
        return "resolved"
    if repeat_interval_s is not None and now - entry.at >= repeat_interval_s:
        return "repeat"
    return None


HealthState = Literal["ok", "failing", "misconfigured", "disabled"]
_MISCONFIGURED: frozenset[ErrorKind] = frozenset(
    {"auth", "not_found", "gone", "redirect", "client", "invalid_response"})


@dataclass(frozen=True, slots=True)
class ReceiverHealth:
    """A receiver's state after its last delivery: ``misconfigured`` after a permanent
    failure (3xx, 4xx, a Slack body that is not ``ok``), ``disabled`` once a webhook answered
    ``410 Gone``, ``failing`` after transient failures given up on."""

    receiver: str
    state: HealthState = "ok"
    consecutive_failures: int = 0
    last_error: str | None = None
    last_error_kind: ErrorKind | None = None


@dataclass(slots=True)
class _Item:
    notification: Notification
    queued_at: float
    on_done: Callable[[DeliveryResult], None] | None
    outboxed: OutboxEntry | None = None


class _Lane:
    """One receiver's bounded FIFO and delivery thread."""

    def __init__(self, receiver: Receiver, max_queue: int) -> None:
        self.receiver = receiver
        self.max_queue = max_queue
        self.items: deque[_Item] = deque()
        self.busy = False
        self.closing = False
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None

    def put(self, item: _Item) -> int | None:
        with self.cond:
            if self.closing or len(self.items) >= self.max_queue:
                return None
            self.items.append(item)
            self.cond.notify_all()
            return len(self.items)

    def take(self) -> tuple[_Item, int] | None:
        with self.cond:
            self.cond.wait_for(lambda: bool(self.items) or self.closing)
            if not self.items:
                return None
            self.busy = True
            return self.items.popleft(), len(self.items)

    def done(self) -> None:
        with self.cond:
            self.busy = False
            self.cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: not self.items and not self.busy, timeout_s)


class Dispatcher:
    """Delivers notifications to ``receivers``, each on its own daemon thread.

    ``retry``, ``clock``, ``registry`` and ``dead_letter`` configure the shared
    :class:`DeliveryPolicy`; ``log`` remembers what was sent (memory by default);
    ``max_queue`` bounds each receiver's queue; ``on_result`` is called on the delivery
    thread with every :class:`DeliveryResult`. With an ``outbox``
    (:class:`~stem_observe.notify.outbox.RedisOutbox`), notifications go through it and this
    instance sends only what it reads from it as leader (or, Redis unreachable, what it
    queues itself). The dispatcher owns the receivers and the outbox: :meth:`close` closes
    them. Use as a context manager, or :meth:`start` and :meth:`close`.
    """

    def __init__(
        self, receivers: Iterable[Receiver], *, retry: RetryPolicy | None = None,
        clock: Clock = SYSTEM_CLOCK, registry: CollectorRegistry = REGISTRY,
        dead_letter: DeadLetterHandler | None = None, log: NotificationLog | None = None,
        max_queue: int = 1000, on_result: Callable[[DeliveryResult], None] | None = None,
        outbox: RedisOutbox | None = None,
    ) -> None:
        self.outbox = outbox
        self.policy = DeliveryPolicy(retry, clock=clock, registry=registry,
                                     dead_letter=dead_letter)
        self.clock = clock
        self.log: NotificationLog = log if log is not None else MemoryNotificationLog()
        self.on_result = on_result
        if max_queue < 1:
            raise ConfigError("max_queue", f"must be at least 1, got {max_queue!r}")
        self._lanes: dict[str, _Lane] = {}
        for receiver in receivers:
            if receiver.name in self._lanes:
                raise ConfigError(f"receivers.{receiver.name}", "receiver names must be unique")
            self._lanes[receiver.name] = _Lane(receiver, max_queue)
            self.policy.metrics.declare(receiver.name)
        self._health = {name: ReceiverHealth(name) for name in self._lanes}
        self._pending: dict[tuple[str, str], LogEntry] = {}
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._started = False

    @property
    def receivers(self) -> Mapping[str, Receiver]:
        return {name: lane.receiver for name, lane in self._lanes.items()}

    def start(self) -> None:
        """Start the delivery threads (idempotent)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        for name, lane in self._lanes.items():
            lane.thread = threading.Thread(
                target=self._run, args=(lane,), name=f"stem-observe-notify-{name}", daemon=True)
            lane.thread.start()
        if self.outbox is not None:
            self.outbox.start(list(self._lanes), self._take_from_outbox, self._room)

    def notify(
        self, group_key: str, alerts: Sequence[Alert], *,
        group_labels: Mapping[str, str] | None = None, receivers: Sequence[str] | None = None,
        repeat_interval_s: float | None = None, external_url: str = "",
    ) -> list[Notification]:
        """Queue what each receiver (all, or those named) must hear of the group's current
        ``alerts``; return the notifications queued."""
        names = list(self._lanes) if receivers is None else list(receivers)
        unknown = [name for name in names if name not in self._lanes]
        if unknown:
            raise ConfigError(f"receivers.{unknown[0]}", "no such receiver")
        if not alerts:  # nothing this instance announced: nothing to tell (or log)
            return []
        firing = frozenset(a.fingerprint for a in alerts if a.firing)
        resolved = frozenset(a.fingerprint for a in alerts if not a.firing)
        now = self.clock.time()
        queued: list[Notification] = []
        for name in names:
            receiver = self._lanes[name].receiver
            key = (group_key, name)
            logged = self.log.get(group_key, name)
            state = (self.outbox.last_queued(group_key, name)
                     if self.outbox is not None else None)
            with self._lock:
                last = _newest(logged, state[1] if state else None, self._pending.get(key))
                reason = needs_update(last, firing, resolved,
                                      send_resolved=receiver.send_resolved,
                                      repeat_interval_s=repeat_interval_s, now=now)
                if reason is None:
                    continue
                sequence = last.sequence + 1 if (last and reason == "repeat") else 0
                entry = LogEntry(firing, resolved, now, sequence)
                shown = [a for a in alerts if a.firing or receiver.send_resolved]
                if not shown:  # all resolved, and this receiver is not told of resolutions
                    self.log.put(group_key, name, entry)
                    continue
            notification = Notification(
                receiver=name, group_key=group_key, alerts=tuple(shown),
                group_labels=group_labels or {}, reason=reason, sequence=sequence,
                external_url=external_url)
            if self.outbox is not None and state is not None:
                outcome = self.outbox.enqueue(notification, entry, state[0])
                if outcome == "queued":
                    queued.append(notification)
                elif outcome == "full":
                    self._overflow(notification, "outbox full")
                if outcome != "unavailable":  # queued, decided elsewhere first, or full
                    continue
            elif self.outbox is not None:
                self.outbox.count_unavailable(name)
            with self._lock:  # sent from here: no outbox, or Redis unreachable
                self._pending[key] = entry
            if self._enqueue(notification, self._recorder(key, entry)):
                queued.append(notification)
        return queued

    def submit(self, notification: Notification) -> bool:
        """Queue a ready notification for ``notification.receiver``, bypassing the log."""
        if notification.receiver not in self._lanes:
            raise ConfigError(f"receivers.{notification.receiver}", "no such receiver")
        return self._enqueue(notification, None)

    def health(self) -> dict[str, ReceiverHealth]:
        with self._lock:
            return dict(self._health)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queue is empty and no delivery runs; ``False`` on timeout."""
        deadline = time.monotonic() + timeout_s  # real time: threads really run
        return all(lane.wait_idle(max(0.0, deadline - time.monotonic()))
                   for lane in self._lanes.values())

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued for up to ``timeout_s``, then cancel (waits end at once,
        what is left is dead-lettered as cancelled, or handed back to the outbox), stop the
        threads, close receivers and the outbox."""
        if self.outbox is not None:
            self.outbox.pause()
        for lane in self._lanes.values():
            with lane.cond:
                lane.closing = True
                lane.cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for lane in self._lanes.values():
            if lane.thread is not None:
                lane.thread.join(max(0.0, deadline - time.monotonic()))
        self._cancel.set()
        for lane in self._lanes.values():  # abort requests in flight: they fail at once
            if lane.thread is not None and lane.thread.is_alive():
                try:
                    lane.receiver.close()
                except Exception:
                    logger.exception("closing receiver %s failed", lane.receiver.name)
        for lane in self._lanes.values():
            if lane.thread is not None:
                lane.thread.join(getattr(lane.receiver, "timeout_s", 10.0) + 1.0)
            if lane.thread is None or not lane.thread.is_alive():
                self._drop_queued(lane)
            try:
                lane.receiver.close()
            except Exception:
                logger.exception("closing receiver %s failed", lane.receiver.name)
        if self.outbox is not None:
            self.outbox.close()

    def __enter__(self) -> Dispatcher:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- internals ----------------------------------------------------------------------

    def _recorder(self, key: tuple[str, str], entry: LogEntry) -> Callable[[DeliveryResult],
                                                                           None]:
        def record(result: DeliveryResult) -> None:
            with self._lock:
                if result.delivered:
                    self.log.put(key[0], key[1], entry)
                if self._pending.get(key) is entry:
                    del self._pending[key]
        return record

    def _enqueue(self, notification: Notification,
                 on_done: Callable[[DeliveryResult], None] | None) -> bool:
        lane = self._lanes[notification.receiver]
        depth = lane.put(_Item(notification, self.clock.monotonic(), on_done))
        if depth is not None:
            self.policy.metrics.queue_depth.labels(lane.receiver.name).set(depth)
            return True
        self.policy.metrics.dropped.labels(lane.receiver.name).inc()
        self._finish(lane, _Item(notification, 0.0, on_done), self.policy.reject(
            lane.receiver, notification,
            DeliveryError("queue full" if not lane.closing else "dispatcher closed",
                          kind="queue_full" if not lane.closing else "cancelled",
                          retryable=False)))
        return False

    def _run(self, lane: _Lane) -> None:
        name = lane.receiver.name
        while True:
            taken = lane.take()
            if taken is None:
                return
            item, depth = taken
            self.policy.metrics.queue_depth.labels(name).set(depth)
            try:
                outboxed = item.outboxed
                result = self.policy.deliver(
                    lane.receiver, item.notification, cancel=self._cancel,
                    handed_over_at=item.queued_at, hand_back=outboxed is not None,
                    proceed=None if outboxed is None else functools.partial(self._check,
                                                                            outboxed))
                self._finish(lane, item, result)
            except Exception:  # never let the thread die: later notifications still go
                logger.exception("delivery to receiver %s failed unexpectedly", name)
            finally:
                lane.done()

    # --- the outbox -----------------------------------------------------------------------

    def _take_from_outbox(self, taken: OutboxEntry) -> bool:
        """Queue an entry read from the outbox (called on the outbox's thread)."""
        notification = taken.notification
        lane = self._lanes.get(notification.receiver)
        if lane is None:
            return False
        outbox = self.outbox
        assert outbox is not None
        key = (notification.group_key, notification.receiver)

        def settle(result: DeliveryResult) -> None:
            if result.delivered and not result.detail.get("superseded"):
                self.log.put(key[0], key[1], taken.entry)
            outbox.finish(taken, result)

        depth = lane.put(_Item(notification, self.clock.monotonic(), settle, taken))
        if depth is None:  # closing, or full: another instance (or this one later) sends it
            outbox.finish(taken, _handed_back(notification))
            return True
        self.policy.metrics.queue_depth.labels(notification.receiver).set(depth)
        return True

    def _room(self, name: str) -> int:
        """How many more notifications the receiver's queue takes now."""
        lane = self._lanes[name]
        with lane.cond:
            return 0 if lane.closing else lane.max_queue - len(lane.items)

    def _check(self, taken: OutboxEntry) -> DeliveryResult | None:
        """Before each attempt of an outbox entry: go on (``None``), or stop because it was
        delivered already or a later state of the group was (``superseded``: settled without
        sending), or because it is no longer this instance's (taken over, or Redis cannot
        tell: left pending for its holder). An entry Redis lost with a restart is sent on
        unless the log shows a newer state of its group."""
        assert self.outbox is not None
        verdict = self.outbox.may_send(taken)
        if verdict == "send":
            return None
        notification = taken.notification
        if verdict == "orphaned":  # Redis lost it: this holder is the only one left
            logged = self.log.get(notification.group_key, notification.receiver)
            if logged is None or logged.at <= taken.entry.at:
                return None
            verdict = "superseded"
        if verdict == "superseded":
            return DeliveryResult(notification.receiver, notification.notification_id, True,
                                  0, 0.0, detail={"superseded": "true"})
        self.policy.metrics.count(notification.receiver, "handed_back")
        return _handed_back(notification)

    def _overflow(self, notification: Notification, why: str) -> None:
        lane = self._lanes[notification.receiver]
        self.policy.metrics.dropped.labels(lane.receiver.name).inc()
        self._finish(lane, _Item(notification, 0.0, None), self.policy.reject(
            lane.receiver, notification, DeliveryError(why, kind="queue_full",
                                                       retryable=False)))

    def _finish(self, lane: _Lane, item: _Item, result: DeliveryResult) -> None:
        name = lane.receiver.name
        with self._lock:
            before = self._health[name]
            if result.delivered:
                self._health[name] = ReceiverHealth(name)
            else:
                kind = result.error_kind
                state: HealthState = ("disabled" if kind == "disabled" else "misconfigured"
                                      if kind in _MISCONFIGURED else "failing")
                self._health[name] = ReceiverHealth(
                    name, state, before.consecutive_failures + 1, result.error, kind)
        for callback in (item.on_done, self.on_result):
            if callback is not None:
                try:
                    callback(result)
                except Exception:
                    logger.exception("a notification result callback failed")

    def _drop_queued(self, lane: _Lane) -> None:
        with lane.cond:
            left = list(lane.items)
            lane.items.clear()
        for item in left:
            if item.outboxed is not None:  # not lost: another instance sends it
                self._finish(lane, item, _handed_back(item.notification))
                continue
            self._finish(lane, item, self.policy.reject(
                lane.receiver, item.notification,
                DeliveryError("dispatcher closed", kind="cancelled", retryable=False)))
        self.policy.metrics.queue_depth.labels(lane.receiver.name).set(0)


def _newest(*entries: LogEntry | None) -> LogEntry | None:
    """The latest of the log entries given (by ``at``), ``None`` when all are."""
    present = [entry for entry in entries if entry is not None]
    return max(present, key=lambda entry: entry.at) if present else None


def _handed_back(notification: Notification) -> DeliveryResult:
    return DeliveryResult(notification.receiver, notification.notification_id, False, 0, 0.0,
                          error="handed back to the outbox", error_kind="cancelled")
