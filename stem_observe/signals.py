"""The signal bus: one blinker signal per event type, named with Stem's wire names.

Receivers are called as ``receiver(sender, event=event)``; ``sender`` names the source
(``"python"``, ``"celery"``, ``"stem"``). Connect your own with the usual blinker API::

    @signals.task_failed.connect
    def on_failure(sender: object, event: TaskFailed) -> None: ...

Sources send through :func:`emit`, which costs almost nothing when nobody listens and never
lets a receiver's exception reach the task that sent the signal: the error is logged
(rate-limited) and counted in :data:`receiver_errors`.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

from blinker import ANY, NamedSignal, Namespace

from stem_observe import events as ev

__all__ = [
    "SIGNALS",
    "emit",
    "namespace",
    "queue_snapshot",
    "receiver_errors",
    "schedule_entry_dispatched",
    "schedule_entry_due",
    "schedule_entry_failed",
    "send",
    "signal_for",
    "task_dead_lettered",
    "task_failed",
    "task_heartbeat",
    "task_postrun",
    "task_prerun",
    "task_published",
    "task_received",
    "task_retry",
    "task_revoked",
    "task_succeeded",
    "worker_heartbeat",
    "worker_ready",
    "worker_shutdown",
    "worker_stopping",
]

logger = logging.getLogger("stem_observe.signals")

namespace: Final = Namespace()

task_published = namespace.signal("after-task-publish", doc="A producer published a task.")
task_received = namespace.signal("task-received", doc="A worker received a task.")
task_prerun = namespace.signal("task-prerun", doc="A task's handler is about to run.")
task_postrun = namespace.signal("task-postrun", doc="A task's execution ended.")
task_retry = namespace.signal("task-retry", doc="A task attempt failed and will be retried.")
task_succeeded = namespace.signal("task-succeeded", doc="A task attempt succeeded.")
task_failed = namespace.signal("task-failed", doc="A task failed for good.")
task_revoked = namespace.signal("task-revoked", doc="A task was revoked.")
task_dead_lettered = namespace.signal("task-dead-lettered", doc="A task was dead-lettered.")
task_heartbeat = namespace.signal("task-heartbeat", doc="A running task reported progress.")
worker_ready = namespace.signal("worker-ready", doc="A worker started consuming.")
worker_stopping = namespace.signal("worker-stopping", doc="A worker began shutting down.")
worker_shutdown = namespace.signal("worker-shutdown", doc="A worker stopped.")
worker_heartbeat = namespace.signal("worker-heartbeat", doc="A worker heartbeat.")
queue_snapshot = namespace.signal("queue-snapshot", doc="A point-in-time view of a queue.")
schedule_entry_due = namespace.signal("schedule-entry-due", doc="A schedule entry is due.")
schedule_entry_dispatched = namespace.signal(
    "schedule-entry-dispatched", doc="A schedule entry was dispatched."
)
schedule_entry_failed = namespace.signal(
    "schedule-entry-failed", doc="Dispatching a schedule entry failed."
)

#: Event type → the signal that carries it.
SIGNALS: Final[dict[type[ev.Event], NamedSignal]] = {
    ev.TaskPublished: task_published,
    ev.TaskReceived: task_received,
    ev.TaskPrerun: task_prerun,
    ev.TaskPostrun: task_postrun,
    ev.TaskRetry: task_retry,
    ev.TaskSucceeded: task_succeeded,
    ev.TaskFailed: task_failed,
    ev.TaskRevoked: task_revoked,
    ev.TaskDeadLettered: task_dead_lettered,
    ev.TaskHeartbeat: task_heartbeat,
    ev.WorkerReady: worker_ready,
    ev.WorkerStopping: worker_stopping,
    ev.WorkerShutdown: worker_shutdown,
    ev.WorkerHeartbeat: worker_heartbeat,
    ev.QueueSnapshot: queue_snapshot,
    ev.ScheduleEntryDue: schedule_entry_due,
    ev.ScheduleEntryDispatched: schedule_entry_dispatched,
    ev.ScheduleEntryFailed: schedule_entry_failed,
}

#: Receiver exceptions swallowed by :func:`emit`, by signal name.
receiver_errors: Final[Counter[str]] = Counter()

_LOG_EVERY_S: Final = 60.0
_last_logged: dict[str, float] = {}
_errors_lock = threading.Lock()


def signal_for(event_type: type[ev.Event]) -> NamedSignal:
    """The signal that carries ``event_type`` (or the nearest base class that has one)."""
    for klass in event_type.__mro__:
        sig = SIGNALS.get(klass)
        if sig is not None:
            return sig
    raise TypeError(f"no signal carries {event_type.__name__}")


def emit(event: ev.Event, sender: Any = "python") -> None:
    """Send ``event`` on its signal. Never raises; costs one dict lookup when nobody listens."""
    sig = SIGNALS.get(type(event))
    if sig is None:
        sig = signal_for(type(event))
    if sig.receivers:
        send(sig, event, sender)


def send(sig: NamedSignal, event: ev.Event, sender: Any = "python") -> None:
    """:func:`emit` for a caller that already knows ``event``'s signal and checked that it
    has receivers (so as not to build the event otherwise): the worker API's hot path."""
    if sig.is_muted:
        return
    for ref in _route(sig, sender):
        receiver = ref()
        if receiver is None:  # a weakly connected receiver died: let blinker clean up
            _routes.clear()
            continue
        try:
            receiver(sender, event=event)
        except Exception:
            _receiver_failed(sig.name, receiver)


# Resolving receivers through blinker's ``receivers_for`` costs about 0.6 µs per signal; a
# worker sends four per task. The resolved list is cached per (signal, sender) and dropped
# whenever any receiver connects or disconnects. Receivers are held by weak reference, as
# blinker holds them (a strongly connected receiver stays alive through blinker itself).
_Ref = Callable[[], Callable[..., Any] | None]
_MAX_CACHED_SENDERS: Final = 32
_routes: dict[NamedSignal, dict[Any, tuple[_Ref, ...]]] = {}


def _route(sig: NamedSignal, sender: Any) -> tuple[_Ref, ...]:
    by_sender = _routes.get(sig)
    if by_sender is None:
        by_sender = _routes[sig] = {}
    route = by_sender.get(sender) if isinstance(sender, str) else None
    if route is None:
        route = tuple(
            _weak(r) for r in sig.receivers_for(sender if sender is not None else ANY)
        )
        # Sources name themselves with a few strings; other senders are not cached, so the
        # cache stays small and never keeps a sender alive.
        if isinstance(sender, str) and len(by_sender) < _MAX_CACHED_SENDERS:
            by_sender[sender] = route
    return route


def _weak(receiver: Callable[..., Any]) -> _Ref:
    try:
        if inspect.ismethod(receiver):
            return weakref.WeakMethod(receiver)
        return weakref.ref(receiver)
    except TypeError:  # not weakly referenceable, so blinker holds it strongly
        return lambda: receiver


def _forget_routes(*args: Any, **kwargs: Any) -> None:
    _routes.clear()


for _sig in SIGNALS.values():
    _sig.receiver_connected.connect(_forget_routes, weak=False)
    _sig.receiver_disconnected.connect(_forget_routes, weak=False)


def _receiver_failed(signal_name: str, receiver: object) -> None:
    now = time.monotonic()
    with _errors_lock:
        receiver_errors[signal_name] += 1
        last = _last_logged.get(signal_name, -_LOG_EVERY_S)
        if now - last < _LOG_EVERY_S:
            return
        _last_logged[signal_name] = now
        count = receiver_errors[signal_name]
    logger.exception(
        "receiver %r of signal %s raised (%d errors on this signal so far); "
        "the task was not affected",
        receiver,
        signal_name,
        count,
    )
