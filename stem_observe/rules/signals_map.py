"""Which labels and gauges each signal carries, and how an event maps onto them.

The engine counts an event toward one label set per rule — the values of the rule's
``group_by`` labels, read by :func:`keys_of` — and reads gauges (:func:`gauge_value`) and
error fingerprints (:func:`error_of`) from it. :data:`SIGNAL_LABELS` and
:data:`SIGNAL_GAUGES` are what rule validation checks a rule's signals, ``group_by`` and
gauge fields against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final, Literal

from stem_observe import events as ev

__all__ = [
    "COUNTABLE",
    "ERROR_SIGNALS",
    "LABELS",
    "SIGNAL_GAUGES",
    "SIGNAL_LABELS",
    "UNKNOWN",
    "Key",
    "Label",
    "error_of",
    "gauge_value",
    "keys_of",
]

Label = Literal["task", "queue", "worker", "reason", "error_type"]
Key = tuple[str, ...]
"""A label set as the values of a rule's ``group_by`` labels, in that order."""

LABELS: Final[tuple[Label, ...]] = ("task", "queue", "worker", "reason", "error_type")
UNKNOWN: Final = "unknown"
"""The value of a label the event does not know (a task with no worker id)."""

_T = frozenset({"task", "queue", "worker"})
_W = frozenset({"worker", "queue"})
_S = frozenset({"task", "queue"})
#: The labels each signal carries. Worker signals carry ``queue`` once per queue the worker
#: consumes: one heartbeat of a worker on two queues touches two label sets.
SIGNAL_LABELS: Final[Mapping[str, frozenset[str]]] = MappingProxyType({
    "after-task-publish": _S,
    "task-received": _T,
    "task-prerun": _T,
    "task-postrun": _T,
    "task-succeeded": _T,
    "task-heartbeat": _T,
    "task-retry": _T | {"error_type"},
    "task-failed": _T | {"error_type"},
    "task-revoked": _T | {"reason"},
    "task-dead-lettered": _T | {"reason"},
    "worker-ready": _W,
    "worker-heartbeat": _W,
    "worker-stopping": _W | {"reason"},
    "worker-shutdown": _W | {"reason"},
    "queue-snapshot": frozenset({"queue"}),
    "schedule-entry-due": _S,
    "schedule-entry-dispatched": _S,
    "schedule-entry-failed": _S | {"error_type"},
})
#: Numeric fields a gauge rule (or an absence rule's ``when``) may read, per signal.
SIGNAL_GAUGES: Final[Mapping[str, frozenset[str]]] = MappingProxyType({
    "queue-snapshot": frozenset({
        "pending", "inflight", "delayed", "delayed_overdue", "dead_letters",
        "oldest_pending_age_s", "oldest_dead_letter_age_s",
    }),
    "worker-heartbeat": frozenset({
        "inflight", "concurrency", "max_concurrency", "prefetch", "queue_depth",
        "isolate_count", "memory_bytes", "memory_percent",
    }),
})
COUNTABLE: Final = frozenset(SIGNAL_LABELS) - {"queue-snapshot"}
"""Signals a rate, ratio, spike or absence rule may count (all but ``queue-snapshot``)."""
ERROR_SIGNALS: Final = frozenset({"task-failed", "task-retry", "task-dead-lettered"})
"""Signals that carry an error, which a poison pill rule fingerprints."""


def _known(value: str | None) -> str:
    return value if value else UNKNOWN


def _label_values(event: ev.Event) -> dict[str, str]:
    if isinstance(event, ev.TaskEvent):
        values = {"task": _known(event.task_name), "queue": _known(event.queue),
                  "worker": _known(event.worker_id)}
        if isinstance(event, ev.TaskFailed | ev.TaskRetry):
            values["error_type"] = _known(event.error_type)
        elif isinstance(event, ev.TaskRevoked | ev.TaskDeadLettered):
            values["reason"] = _known(event.reason)
        return values
    if isinstance(event, ev.WorkerEvent):
        values = {"worker": _known(event.worker_id)}
        if isinstance(event, ev.WorkerStopping | ev.WorkerShutdown):
            values["reason"] = _known(event.reason)
        return values
    if isinstance(event, ev.QueueSnapshot):
        return {"queue": _known(event.queue)}
    if isinstance(event, ev.ScheduleEntryEvent):
        values = {"task": _known(event.task_name), "queue": _known(event.queue)}
        if isinstance(event, ev.ScheduleEntryFailed):
            values["error_type"] = _known(event.error_type)
        return values
    return {}


def keys_of(event: ev.Event, group_by: Sequence[str]) -> tuple[Key, ...]:
    """The label sets ``event`` counts toward for a rule grouped by ``group_by``.

    One, except for a worker event grouped by ``queue``: one per queue the worker consumes
    (``unknown`` when it names none). Missing or empty values read ``unknown``.
    """
    values = _label_values(event)
    if isinstance(event, ev.WorkerEvent) and "queue" in group_by:
        return tuple(
            tuple(queue if label == "queue" else values.get(label, UNKNOWN)
                  for label in group_by)
            for queue in dict.fromkeys(event.queues or (UNKNOWN,))
        )
    return (tuple(values.get(label, UNKNOWN) for label in group_by),)


def gauge_value(event: ev.Event, field: str) -> float | None:
    """The gauge ``field`` of ``event`` (see :data:`SIGNAL_GAUGES`); ``None`` if unmeasured."""
    value = getattr(event, field, None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def error_of(event: ev.Event) -> tuple[str, str] | None:
    """(error type, message) of a failure, retry or dead letter; ``None`` for other events.

    A dead letter has no error type: its reason stands in for it.
    """
    if isinstance(event, ev.TaskFailed):
        return event.error_type or UNKNOWN, event.error_message or ""
    if isinstance(event, ev.TaskRetry):
        message = event.error_message if event.error_message is not None else event.reason
        return event.error_type or UNKNOWN, message or ""
    if isinstance(event, ev.TaskDeadLettered):
        return event.reason or UNKNOWN, event.error or ""
    return None
