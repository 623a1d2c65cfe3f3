"""Prometheus metrics from signals, with task IDs and trace IDs as exemplars.

Task IDs never become labels. The counters of troubled outcomes (failed, retried, revoked,
dead-lettered) and the duration histogram carry an exemplar ``{task_id, trace_id}``, which
Prometheus sees when it scrapes in the OpenMetrics format; successes are found through the
duration histogram's exemplars (an exemplar costs about 2 µs per update, so it goes only where
someone will click it). Label values are bounded per
label (task name, queue, worker, error type, reason, schedule): past the limit a new value
folds into ``__overflow__`` and ``stem_observe_label_overflow_total{label}`` counts it.

Handlers run on the thread that sent the signal (often a task's own thread); they do no
I/O, take no lock on the fast path, and look series up in one dict per event.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from typing import Any, Final

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from stem_observe import events as ev
from stem_observe.config import Settings
from stem_observe.sinks._instruments import BASE_KEYS, build_instruments
from stem_observe.sinks._labels import OVERFLOW, LabelLimiter, clean_label_value
from stem_observe.sinks._traceparent import sampled_trace_id
from stem_observe.sinks._workers import WorkerGauges

__all__ = ["MetricsSink"]

_MAX_EXEMPLAR_TASK_ID: Final = 80  # exemplar label sets are limited to 128 characters
_QUEUE_GAUGES: Final = (
    "queue_pending", "queue_inflight", "queue_delayed", "queue_delayed_overdue",
    "queue_oldest_age", "dlq_depth", "dlq_oldest_age",
)
_TASK_ROLES: Final = (  # the roles bound once per (task, queue[, worker]): _TaskSeries
    "published", "received", "started", "succeeded", "failed", "retried", "revoked",
    "duration", "queue_wait",
)

Exemplar = dict[str, str] | None


class _TaskSeries:
    """The label children of one (task, queue[, worker]) combination, bound once."""

    __slots__ = (
        "duration", "extra", "failed", "published", "queue_wait", "received", "retried",
        "revoked", "started", "succeeded", "values",
    )

    def __init__(self, sink: MetricsSink, values: dict[str, str]) -> None:
        child = sink._base_child
        self.values = values
        self.extra: dict[tuple[str, str], Any] = {}
        self.published: Any = child("published", values)
        self.received: Any = child("received", values)
        self.started: Any = child("started", values)
        self.succeeded: Any = child("succeeded", values)
        self.failed: Any = child("failed", values)
        self.retried: Any = child("retried", values)
        self.revoked: Any = child("revoked", values)
        self.duration: Any = child("duration", values)
        self.queue_wait: Any = child("queue_wait", values)


class MetricsSink:
    """Receives task, worker, queue and schedule events and keeps Prometheus series.

    ``registry`` defaults to prometheus-client's global registry. Handlers may be called from
    any thread and never block; :meth:`close` unregisters every instrument.
    """

    def __init__(
        self, settings: Settings | None = None, *, registry: CollectorRegistry = REGISTRY
    ) -> None:
        self.settings = settings or Settings()
        self.registry = registry
        # Registered first, so staleness is judged before the worker gauges are collected.
        self._sweeper = _Sweeper(self)
        registry.register(self._sweeper)
        try:
            self._metrics, self._specs = build_instruments(self.settings, registry)
        except Exception:
            registry.unregister(self._sweeper)
            raise
        self._uses_worker = any(
            "worker" in self._specs[role].keys for role in _TASK_ROLES if role in self._specs
        )
        s = self.settings
        self._limits: dict[str, LabelLimiter] = {
            "task": LabelLimiter("task", s.max_task_names),
            "queue": LabelLimiter("queue", s.max_queues),
            "worker": LabelLimiter("worker", s.max_workers),
            "error_type": LabelLimiter("error_type", s.max_label_values),
            "reason": LabelLimiter("reason", s.max_label_values),
            "schedule": LabelLimiter("schedule", s.max_label_values),
            "namespace": LabelLimiter("namespace", s.max_label_values),
        }
        self._overflow: dict[str, Any] = {
            label: self._metrics["label_overflow"].labels(label) for label in self._limits
        }
        self._series: dict[tuple[str, ...], _TaskSeries] = {}
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._lock = threading.Lock()
        self.workers = WorkerGauges(
            self.settings, self._metrics, self._specs, self._admit,
            lambda key, value: self._limits[key].forget(value),
        )

    def after_fork(self) -> None:
        """Replace locks a parent thread may have held at fork time."""
        self._lock = threading.Lock()
        for limiter in self._limits.values():
            limiter.after_fork()
        self.workers.after_fork()

    # ----------------------------------------------------------------- plumbing

    def handlers(self) -> dict[type[ev.Event], Callable[[Any, str | None], None]]:
        """Event type → handler ``(event, trace_id)``; ``trace_id`` is the sampled trace, if any."""
        return {
            ev.TaskPublished: self.on_published,
            ev.TaskReceived: self.on_received,
            ev.TaskPrerun: self.on_prerun,
            ev.TaskSucceeded: self.on_succeeded,
            ev.TaskFailed: self.on_failed,
            ev.TaskRetry: self.on_retry,
            ev.TaskRevoked: self.on_revoked,
            ev.TaskDeadLettered: self.on_dead_lettered,
            ev.TaskPostrun: self.on_postrun,
            ev.WorkerReady: self.on_worker_ready,
            ev.WorkerShutdown: self.on_worker_shutdown,
            ev.WorkerHeartbeat: self.on_worker_heartbeat,
            ev.QueueSnapshot: self.on_queue_snapshot,
            ev.ScheduleEntryDue: self.on_schedule_due,
            ev.ScheduleEntryDispatched: self.on_schedule_dispatched,
            ev.ScheduleEntryFailed: self.on_schedule_failed,
        }

    def close(self) -> None:
        """Unregister every instrument from the registry."""
        for metric in (self._sweeper, *self._metrics.values()):
            with contextlib.suppress(KeyError):
                self.registry.unregister(metric)

    def _admit(self, key: str, value: str | None) -> str:
        admitted = self._limits[key].admit(value)
        if admitted == OVERFLOW:
            self._overflow[key].inc()
        return admitted

    def _base_child(self, role: str, values: dict[str, str]) -> Any:
        spec = self._specs.get(role)
        if spec is None or not set(spec.keys) <= BASE_KEYS:
            return None
        return self._metrics[role].labels(*(values[key] for key in spec.keys))

    def _task(self, event: ev.TaskEvent) -> _TaskSeries:
        key: tuple[str, ...]
        if self._uses_worker:
            key = (event.task_name, event.queue, event.worker_id or "")
        else:
            key = (event.task_name, event.queue)
        series = self._series.get(key)
        if series is not None:
            return series
        values = {
            "task": self._admit("task", event.task_name),
            "queue": self._admit("queue", event.queue),
            "worker": self._admit("worker", event.worker_id) if self._uses_worker else "",
        }
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = _TaskSeries(self, values)
                if OVERFLOW not in values.values():  # keep the cache bounded
                    self._series[key] = series
        return series

    def _extra(self, role: str, series: _TaskSeries, key: str, value: str | None) -> Any:
        """The child of a task-level metric with one more label (error type, reason)."""
        cache_key = (role, value or "")
        child = series.extra.get(cache_key)
        if child is None:
            spec = self._specs[role]
            values = dict(series.values)
            values[key] = self._admit(key, value)
            child = self._metrics[role].labels(*(values[k] for k in spec.keys))
            if values[key] != OVERFLOW:
                series.extra[cache_key] = child
        return child

    def _child(self, role: str, *values: str) -> Any:
        """The child of a worker, queue or schedule metric, by admitted label values."""
        key = (role, values)
        child = self._children.get(key)
        if child is None:
            if role not in self._specs:
                return None
            child = self._metrics[role].labels(*values)
            self._children[key] = child  # bounded: admitted values are
        return child

    def _exemplar(self, event: ev.TaskEvent, trace_id: str | None) -> Exemplar:
        if not self.settings.exemplars:
            return None
        task_id = event.task_id
        if not isinstance(task_id, str) or not task_id.isascii():
            task_id = clean_label_value(str(task_id))
        task_id = task_id[:_MAX_EXEMPLAR_TASK_ID]
        if trace_id is None:
            trace_id = sampled_trace_id(event.headers)
        if trace_id is None:
            return {"task_id": task_id}
        return {"task_id": task_id, "trace_id": trace_id}

    # ----------------------------------------------------------------- tasks

    def on_published(self, event: ev.TaskPublished, trace_id: str | None) -> None:
        self._task(event).published.inc()

    def on_received(self, event: ev.TaskReceived, trace_id: str | None) -> None:
        self._task(event).received.inc()

    def on_prerun(self, event: ev.TaskPrerun, trace_id: str | None) -> None:
        series = self._task(event)
        series.started.inc()
        if event.enqueued_at is not None:
            ready_at = event.enqueued_at if event.eta is None else max(event.enqueued_at, event.eta)
            wait = event.occurred_at - ready_at
            if wait >= 0:
                series.queue_wait.observe(wait)
        if event.in_process and event.worker_id:
            self.workers.task_started(event.worker_id)

    def on_succeeded(self, event: ev.TaskSucceeded, trace_id: str | None) -> None:
        series = self._task(event)
        series.succeeded.inc()  # successes' task ids ride on the duration histogram
        if event.runtime_s is not None:
            series.duration.observe(event.runtime_s, self._exemplar(event, trace_id))

    def on_failed(self, event: ev.TaskFailed, trace_id: str | None) -> None:
        series = self._task(event)
        exemplar = self._exemplar(event, trace_id)
        failed = series.failed
        if failed is None:  # the profile labels failures by exception
            failed = self._extra("failed", series, "error_type", event.error_type)
        failed.inc(1, exemplar)
        if "failed_by_error" in self._specs:
            self._extra("failed_by_error", series, "error_type", event.error_type).inc(
                1, exemplar
            )
        if event.runtime_s is not None and self.settings.metrics_profile == "stem":
            series.duration.observe(event.runtime_s, exemplar)

    def on_retry(self, event: ev.TaskRetry, trace_id: str | None) -> None:
        series = self._task(event)
        exemplar = self._exemplar(event, trace_id)
        series.retried.inc(1, exemplar)
        if event.runtime_s is not None and self.settings.metrics_profile == "stem":
            series.duration.observe(event.runtime_s, exemplar)

    def on_revoked(self, event: ev.TaskRevoked, trace_id: str | None) -> None:
        self._task(event).revoked.inc(1, self._exemplar(event, trace_id))

    def on_dead_lettered(self, event: ev.TaskDeadLettered, trace_id: str | None) -> None:
        series = self._task(event)
        child = self._extra("dead_lettered", series, "reason", event.reason)
        child.inc(1, self._exemplar(event, trace_id))

    def on_postrun(self, event: ev.TaskPostrun, trace_id: str | None) -> None:
        if event.in_process and event.worker_id:
            self.workers.task_finished(event.worker_id)

    # ----------------------------------------------------------------- workers, queues

    def on_worker_ready(self, event: ev.WorkerReady, trace_id: str | None) -> None:
        self.workers.ready(event.worker_id, event.namespace, event.concurrency)

    def on_worker_shutdown(self, event: ev.WorkerShutdown, trace_id: str | None) -> None:
        if event.gone:
            self.workers.forget(event.worker_id)
        else:
            self.workers.shutdown(event.worker_id, event.namespace)

    def on_worker_heartbeat(self, event: ev.WorkerHeartbeat, trace_id: str | None) -> None:
        self.workers.heartbeat(
            event.worker_id, event.namespace, timestamp=event.timestamp,
            inflight=event.inflight, concurrency=event.concurrency,
            interval_s=event.interval_s,
        )

    def on_queue_snapshot(self, event: ev.QueueSnapshot, trace_id: str | None) -> None:
        labels = {
            "queue": self._admit("queue", event.queue),
            "namespace": self._admit("namespace", event.namespace),
        }
        if event.gone:
            self._forget_queue(labels)
            return
        for role, value in (
            ("queue_pending", event.pending),
            ("queue_inflight", event.inflight),
            ("queue_delayed", event.delayed),
            ("queue_delayed_overdue", event.delayed_overdue),
            ("queue_oldest_age", event.oldest_pending_age_s),
            ("dlq_depth", event.dead_letters),
            ("dlq_oldest_age", event.oldest_dead_letter_age_s),
        ):
            if value is not None and role in self._specs:
                self._child(role, *(labels[k] for k in self._specs[role].keys)).set(value)

    def _forget_queue(self, labels: dict[str, str]) -> None:
        """Drop a vanished queue's gauges (its counters stay)."""
        for role in _QUEUE_GAUGES:
            spec = self._specs.get(role)
            if spec is None:
                continue
            values = tuple(labels[k] for k in spec.keys)
            self._children.pop((role, values), None)
            with contextlib.suppress(KeyError):
                self._metrics[role].remove(*values)
        # The label slot stays taken: the queue's task counters still use it.

    def on_schedule_due(self, event: ev.ScheduleEntryDue, trace_id: str | None) -> None:
        self._child("schedule_due", self._admit("schedule", event.entry_id)).inc()

    def on_schedule_dispatched(
        self, event: ev.ScheduleEntryDispatched, trace_id: str | None
    ) -> None:
        schedule = self._admit("schedule", event.entry_id)
        self._child("schedule_dispatched", schedule).inc()
        if event.drift_s is not None:
            self._child("schedule_drift", schedule).observe(abs(event.drift_s))

    def on_schedule_failed(self, event: ev.ScheduleEntryFailed, trace_id: str | None) -> None:
        self._child("schedule_failed", self._admit("schedule", event.entry_id)).inc()

    # ----------------------------------------------------------------- introspection

    def metric(self, role: str) -> MetricWrapperBase:
        """The instrument that measures ``role`` in this sink's profile."""
        return self._metrics[role]

    def folded(self) -> dict[str, int]:
        """Values folded into ``__overflow__`` so far, by label."""
        return {label: limiter.folded for label, limiter in self._limits.items()}


class _Sweeper(Collector):
    """Yields nothing; judges worker staleness when the registry is collected."""

    def __init__(self, sink: MetricsSink) -> None:
        self._sink = sink

    def collect(self) -> Iterable[Metric]:
        workers = getattr(self._sink, "workers", None)
        if workers is not None:
            workers.sweep()
        return ()
