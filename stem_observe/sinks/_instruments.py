"""Metric naming profiles and the instruments they define.

A profile maps each *role* (what is measured) to a metric name, help text and label names.
Label names map to logical keys the sink knows how to fill: ``task``, ``queue``, ``worker``,
``error_type``, ``reason``, ``schedule``, ``namespace``, ``label``.

``stem`` uses the names Stem's OTLP metrics get in Prometheus (``stem_tasks_started_total``
…) plus what Stem does not ship. ``celery-exporter`` renames the metrics celery-exporter has
(``celery_task_*_total{name,hostname,queue_name}``, ``celery_task_runtime`` …) so celery-mixin
dashboards keep working; the rest keep their ``stem`` names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from stem_observe.config import Settings

__all__ = ["BASE_KEYS", "PROFILES", "Spec", "build_instruments"]

Kind = Literal["counter", "gauge", "histogram"]

#: Keys every task-level series is addressed by; other keys are "extra" (one more lookup).
BASE_KEYS: Final = frozenset({"task", "queue", "worker"})

_TQ = (("task", "task"), ("queue", "queue"))
_CELERY_TQ = (("name", "task"), ("hostname", "worker"), ("queue_name", "queue"))


@dataclass(frozen=True, slots=True)
class Spec:
    """One metric: kind, name (without ``_total``), help, and ``(label, key)`` pairs."""

    kind: Kind
    name: str
    doc: str
    labels: tuple[tuple[str, str], ...]
    buckets: Literal["duration", "wait", "drift"] | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(key for _, key in self.labels)


def _c(name: str, doc: str, labels: tuple[tuple[str, str], ...] = _TQ) -> Spec:
    return Spec("counter", name, doc, labels)


def _g(name: str, doc: str, labels: tuple[tuple[str, str], ...]) -> Spec:
    return Spec("gauge", name, doc, labels)


# As Stem labels them: stem.worker.* by {worker, namespace}, queue gauges by namespace too.
_Q = (("queue", "queue"), ("namespace", "namespace"))
_W = (("worker", "worker"), ("namespace", "namespace"))

STEM_PROFILE: Final[Mapping[str, Spec]] = {
    "published": _c("stem_tasks_published", "Tasks published by producers."),
    "received": _c("stem_tasks_received", "Tasks received by workers."),
    "started": _c("stem_tasks_started", "Task executions started."),
    "succeeded": _c("stem_tasks_succeeded", "Task executions that succeeded."),
    "failed": _c("stem_tasks_failed", "Tasks that failed for good (no retry follows)."),
    "failed_by_error": _c(
        "stem_task_failures_by_error",
        "Tasks that failed for good, by exception type.",
        (*_TQ, ("error_type", "error_type")),
    ),
    "retried": _c("stem_tasks_retried", "Task attempts that failed and were retried."),
    "revoked": _c("stem_tasks_revoked", "Tasks revoked."),
    "dead_lettered": _c(
        "stem_tasks_dead_lettered",
        "Tasks moved to a dead-letter queue, by reason.",
        (*_TQ, ("reason", "reason")),
    ),
    "duration": Spec(
        "histogram", "stem_task_duration_seconds",
        "Task execution time, every outcome.", _TQ, "duration",
    ),
    "queue_wait": Spec(
        "histogram", "stem_task_queue_wait_seconds",
        "Time from publish (or ETA) to start of execution.", _TQ, "wait",
    ),
    "worker_up": _g("stem_worker_up", "1 while the worker is running and heartbeating.", _W),
    "worker_inflight": _g("stem_worker_inflight", "Tasks the worker is executing.", _W),
    "worker_concurrency": _g("stem_worker_concurrency", "The worker's concurrency.", _W),
    "worker_last_heartbeat": _g(
        "stem_worker_last_heartbeat_timestamp_seconds",
        "Unix time of the worker's last heartbeat.", _W,
    ),
    "queue_pending": _g("stem_queue_depth", "Messages waiting to be delivered.", _Q),
    "queue_inflight": _g("stem_queue_inflight", "Messages delivered and not acknowledged.", _Q),
    "queue_delayed": _g("stem_queue_delayed", "Messages scheduled for later (ETA, retries).", _Q),
    "queue_delayed_overdue": _g(
        "stem_queue_delayed_overdue", "Delayed messages already past their due time.", _Q
    ),
    "queue_oldest_age": _g(
        "stem_queue_oldest_message_age_seconds",
        "Age of the oldest message not yet delivered.", _Q,
    ),
    "dlq_depth": _g("stem_dlq_depth", "Entries in the queue's dead-letter list.", _Q),
    "dlq_oldest_age": _g(
        "stem_dlq_oldest_age_seconds", "Age of the oldest dead-letter entry.", _Q
    ),
    "schedule_due": _c(
        "stem_scheduler_due", "Schedule entries found due.", (("schedule", "schedule"),)
    ),
    "schedule_dispatched": _c(
        "stem_scheduler_dispatch_success", "Schedule entries dispatched.",
        (("schedule", "schedule"),),
    ),
    "schedule_failed": _c(
        "stem_scheduler_dispatch_failed", "Schedule dispatches that failed.",
        (("schedule", "schedule"),),
    ),
    "schedule_drift": Spec(
        "histogram", "stem_scheduler_drift_seconds",
        "How late schedule entries were dispatched.", (("schedule", "schedule"),), "drift",
    ),
    "label_overflow": _c(
        "stem_observe_label_overflow",
        "Label values folded into __overflow__ because a label reached its limit.",
        (("label", "label"),),
    ),
}

CELERY_PROFILE: Final[Mapping[str, Spec]] = {
    **STEM_PROFILE,
    "published": _c("celery_task_sent", "Sent when a task message is published.", _CELERY_TQ),
    "received": _c("celery_task_received", "Sent when the worker receives a task.", _CELERY_TQ),
    "started": _c("celery_task_started", "Sent just before the worker executes the task.",
                  _CELERY_TQ),
    "succeeded": _c("celery_task_succeeded", "Sent if the task executed successfully.",
                    _CELERY_TQ),
    "failed": _c(
        "celery_task_failed", "Sent if the execution of the task failed.",
        (("name", "task"), ("hostname", "worker"), ("exception", "error_type"),
         ("queue_name", "queue")),
    ),
    "retried": _c("celery_task_retried",
                  "Sent if the task failed, but will be retried in the future.", _CELERY_TQ),
    "revoked": _c("celery_task_revoked", "Sent if the task has been revoked.", _CELERY_TQ),
    "duration": Spec("histogram", "celery_task_runtime",
                     "Histogram of task runtime measurements.", _CELERY_TQ, "duration"),
    "worker_up": _g("celery_worker_up",
                    "Indicates if a worker has recently sent a heartbeat.",
                    (("hostname", "worker"),)),
    "worker_inflight": _g("celery_worker_tasks_active",
                          "The number of tasks the worker is currently processing",
                          (("hostname", "worker"),)),
    "queue_pending": _g("celery_queue_length", "The number of message in broker queue.",
                        (("queue_name", "queue"),)),
}

PROFILES: Final[Mapping[str, Mapping[str, Spec]]] = {
    "stem": STEM_PROFILE,
    "celery-exporter": CELERY_PROFILE,
}

# Dense around a minute, where the scheduler-drift alert draws its line (p95 > 60 s).
_DRIFT_BUCKETS: Final = (
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 90.0, 120.0, 300.0, 900.0)


def build_instruments(
    settings: Settings, registry: CollectorRegistry
) -> tuple[dict[str, MetricWrapperBase], dict[str, Spec]]:
    """Create (and register) the profile's instruments; returns them and their specs by role."""
    profile = dict(PROFILES[settings.metrics_profile])
    if settings.metrics_profile == "celery-exporter":
        # celery-exporter's runtime histogram uses prometheus-client's default buckets.
        profile["duration"] = replace(profile["duration"], buckets=None)
    instruments: dict[str, MetricWrapperBase] = {}
    built: list[MetricWrapperBase] = []
    try:
        for role, spec in profile.items():
            labels = [label for label, _ in spec.labels]
            metric: MetricWrapperBase
            if spec.kind == "counter":
                metric = Counter(spec.name, spec.doc, labels, registry=registry)
            elif spec.kind == "gauge":
                metric = Gauge(spec.name, spec.doc, labels, registry=registry)
            else:
                buckets: tuple[float, ...] = Histogram.DEFAULT_BUCKETS
                if spec.buckets == "duration":
                    buckets = settings.duration_buckets
                elif spec.buckets == "wait":
                    buckets = settings.queue_wait_buckets
                elif spec.buckets == "drift":
                    buckets = _DRIFT_BUCKETS
                metric = Histogram(spec.name, spec.doc, labels, registry=registry,
                                   buckets=buckets)
            built.append(metric)
            instruments[role] = metric
    except Exception:
        for metric in built:
            registry.unregister(metric)
        raise
    return instruments, profile
