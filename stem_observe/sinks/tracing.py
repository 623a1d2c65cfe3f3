"""OpenTelemetry spans from signals: one ``stem.consume`` span per task attempt.

A span opens at ``task-received`` or ``task-prerun`` (whichever comes first) and ends at
``task-succeeded``, ``task-failed``, ``task-retry``, ``task-revoked`` or, failing those,
``task-postrun``. Start and end times are the events' ``occurred_at``, so a source that
reconstructs a task from a status record gets the task's real times. A W3C ``traceparent``
in the event's headers makes the span a child of the producer's span.

For in-process events the span is made current between prerun and postrun (within the task
scope the bridge opens, see ``_scopes``), so spans and logs the task creates nest under it.
Handlers run on the sender's thread and do no I/O;
export happens in the tracer provider's span processor. With an SDK tracer provider the
spans are recorded as ``_span.TaskSpan`` (same sampler, ids, limits and processors, a
fraction of the SDK span's cost); with any other provider through its tracer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from stem_observe import events as ev
from stem_observe.config import Settings
from stem_observe.sinks._scopes import TASKS
from stem_observe.sinks._span import SpanStarter
from stem_observe.sinks._traceparent import remote_parent, sampled_trace_id

__all__ = ["SPAN_NAME", "TracingSink"]

SPAN_NAME: Final = "stem.consume"
_SCOPE: Final = "stem_observe"


class _Open:
    """A span between its start and end, with its trace id when sampled."""

    __slots__ = ("span", "trace_id")

    def __init__(self, span: Span, trace_id: str | None) -> None:
        self.span = span
        self.trace_id = trace_id


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


class TracingSink:
    """Receives task events and records spans through ``tracer_provider``.

    ``tracer_provider`` defaults to the global one. At most ``settings.max_open_spans`` spans
    are open at once; past that the oldest is ended early and counted in ``evicted``.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.settings = settings or Settings()
        provider = tracer_provider or trace.get_tracer_provider()
        from stem_observe import __version__ as version  # the package is imported by now

        self._spans = SpanStarter(provider.get_tracer(_SCOPE, version),
                                  InstrumentationScope(_SCOPE, version))
        self._open: dict[str, _Open] = {}
        # Tasks whose span was ended early: their late outcome must not start a new span.
        self._evicted_ids: dict[str, None] = {}
        self._lock = threading.Lock()
        self.evicted = 0
        self.late_outcomes = 0

    def handlers(self) -> dict[type[ev.Event], Callable[[Any], str | None]]:
        """Event type → handler; each returns the trace id of the task's sampled span."""
        return {
            ev.TaskReceived: self.on_received,
            ev.TaskPrerun: self.on_prerun,
            ev.TaskSucceeded: self.on_succeeded,
            ev.TaskFailed: self.on_failed,
            ev.TaskRetry: self.on_retry,
            ev.TaskRevoked: self.on_revoked,
            ev.TaskDeadLettered: self.on_dead_lettered,
            ev.TaskHeartbeat: self.on_heartbeat,
            ev.TaskPostrun: self.on_postrun,
        }

    def after_fork(self) -> None:
        """Forget spans inherited from the parent process (called in a forked child)."""
        self._open = {}
        self._evicted_ids = {}
        self._lock = threading.Lock()

    def open_spans(self) -> int:
        return len(self._open)

    def close(self) -> None:
        """End every span still open (at shutdown), marked incomplete."""
        with self._lock:
            pending, self._open = self._open, {}
        for record in pending.values():
            record.span.set_attribute("stem.span.incomplete", True)
            record.span.end()

    # ----------------------------------------------------------------- span lifecycle

    def _start(self, event: ev.TaskEvent) -> _Open:
        parent = remote_parent(event.headers)
        if parent is not None:
            pass
        elif event.in_process:
            parent = None  # nest under whatever the worker has current
        else:
            parent = Context()  # observed from outside: a fresh root, as Stem does
        attributes: dict[str, Any] = {
            "stem.task": event.task_name,
            "stem.task.id": event.task_id,
            "stem.task.attempt": event.attempt,
            "stem.task.max_retries": event.max_retries,
            "stem.queue": event.queue,
            "messaging.system": self.settings.messaging_system,
            "messaging.operation.type": "process",
            "messaging.destination.name": event.queue,
            "messaging.message.id": event.task_id,
        }
        if event.worker_id:
            attributes["stem.worker.id"] = event.worker_id
        span = self._spans.start(SPAN_NAME, parent, SpanKind.CONSUMER, attributes,
                                 _ns(event.occurred_at))
        span_context = span.get_span_context()
        trace_id = None
        if span_context.trace_flags.sampled:
            trace_id = format(span_context.trace_id, "032x")
        record = _Open(span, trace_id)
        previous = self._open.get(event.task_id)
        if previous is not None:  # a new attempt began without an outcome for the last one
            self._end(event.task_id, previous, event.occurred_at, incomplete=True)
        self._open[event.task_id] = record
        if len(self._open) > self.settings.max_open_spans:
            self._evict()
        return record

    def _evict(self) -> None:
        with self._lock:
            while len(self._open) > self.settings.max_open_spans:
                try:  # other threads add and end spans without the lock
                    task_id = next(iter(self._open))
                    record = self._open.pop(task_id)
                except (RuntimeError, KeyError, StopIteration):
                    continue
                self.evicted += 1
                self._evicted_ids[task_id] = None
                if len(self._evicted_ids) > self.settings.max_open_spans:
                    self._evicted_ids.pop(next(iter(self._evicted_ids)), None)
                record.span.set_attribute("stem.span.incomplete", True)
                record.span.end()

    def _end(
        self, task_id: str, record: _Open, at: float, *, incomplete: bool = False
    ) -> None:
        if self._open.get(task_id) is record:
            self._open.pop(task_id, None)
        if incomplete:
            record.span.set_attribute("stem.span.incomplete", True)
        record.span.end(end_time=_ns(at))

    def _finish(self, event: ev.TaskEvent, outcome: str) -> _Open | None:
        record = self._open.get(event.task_id)
        if record is None:
            if self._evicted_ids and event.task_id in self._evicted_ids:
                # Its span was ended early; a second span for one attempt would mislead.
                self._evicted_ids.pop(event.task_id, None)
                self.late_outcomes += 1
                return None
            record = self._start(event)
        if record.span.is_recording():
            record.span.set_attribute("stem.task.outcome", outcome)
        return record

    # ----------------------------------------------------------------- handlers

    def on_received(self, event: ev.TaskReceived) -> str | None:
        record = self._open.get(event.task_id)
        if record is None:
            record = self._start(event)
        return record.trace_id

    def on_prerun(self, event: ev.TaskPrerun) -> str | None:
        record = self._open.get(event.task_id)
        if record is None:
            record = self._start(event)
        if event.enqueued_at is not None and record.span.is_recording():
            # As the metrics sink measures it: from publish, or from the ETA if one was set.
            ready_at = event.enqueued_at if event.eta is None else max(event.enqueued_at, event.eta)
            if event.occurred_at >= ready_at:
                record.span.set_attribute("stem.task.queue_wait_s", event.occurred_at - ready_at)
        if event.in_process:
            # The bridge opened this task's scope; make the span current within it.
            scope = TASKS.current()
            if scope is not None and scope.task_id == event.task_id and scope.token is None:
                scope.token = otel_context.attach(trace.set_span_in_context(record.span))
        return record.trace_id

    def on_succeeded(self, event: ev.TaskSucceeded) -> str | None:
        record = self._finish(event, "succeeded")
        if record is None:
            return None
        self._end(event.task_id, record, event.occurred_at)
        return record.trace_id

    def on_failed(self, event: ev.TaskFailed) -> str | None:
        record = self._finish(event, "failed")
        if record is None:
            return None
        span = record.span
        if span.is_recording():
            if event.exception is not None:
                span.record_exception(event.exception, timestamp=_ns(event.occurred_at))
            else:
                attributes: dict[str, Any] = {
                    "exception.type": event.error_type,
                    "exception.message": event.error_message,
                    "exception.escaped": True,
                }
                if event.stacktrace:
                    attributes["exception.stacktrace"] = event.stacktrace
                span.add_event("exception", attributes, timestamp=_ns(event.occurred_at))
            span.set_status(Status(StatusCode.ERROR, f"{event.error_type}: {event.error_message}"))
        self._end(event.task_id, record, event.occurred_at)
        return record.trace_id

    def on_retry(self, event: ev.TaskRetry) -> str | None:
        record = self._finish(event, "retried")
        if record is None:
            return None
        span = record.span
        if span.is_recording():
            attributes: dict[str, Any] = {"stem.retry.reason": event.reason}
            if event.error_type is not None:
                attributes["exception.type"] = event.error_type
            if event.error_message is not None:
                attributes["exception.message"] = event.error_message
            if event.next_retry_at is not None:
                attributes["stem.retry.next_at"] = _iso(event.next_retry_at)
            if event.retry_delay_s is not None:
                attributes["stem.retry.delay_s"] = event.retry_delay_s
            span.add_event("retry", attributes, timestamp=_ns(event.occurred_at))
        self._end(event.task_id, record, event.occurred_at)
        return record.trace_id

    def on_revoked(self, event: ev.TaskRevoked) -> str | None:
        record = self._finish(event, "revoked")
        if record is None:
            return None
        if record.span.is_recording():
            record.span.set_attribute("stem.revoke.reason", event.reason)
        self._end(event.task_id, record, event.occurred_at)
        return record.trace_id

    def on_dead_lettered(self, event: ev.TaskDeadLettered) -> str | None:
        record = self._open.get(event.task_id)
        if record is None:
            return sampled_trace_id(event.headers)
        if record.span.is_recording():
            attributes: dict[str, Any] = {"stem.dead_letter.reason": event.reason}
            if event.error:
                attributes["stem.dead_letter.error"] = event.error
            record.span.add_event("dead-lettered", attributes, timestamp=_ns(event.occurred_at))
        return record.trace_id

    def on_heartbeat(self, event: ev.TaskHeartbeat) -> str | None:
        record = self._open.get(event.task_id)
        if record is None:
            return None
        if record.span.is_recording():
            attributes: dict[str, Any] = {}
            if event.progress is not None:
                attributes["stem.task.progress"] = event.progress
            if event.message:
                attributes["stem.task.progress_message"] = event.message
            record.span.add_event("progress", attributes, timestamp=_ns(event.occurred_at))
        return record.trace_id

    def on_postrun(self, event: ev.TaskPostrun) -> str | None:
        record = self._open.get(event.task_id)
        if record is None:
            return None
        # No outcome event came: end the span here.
        if record.span.is_recording():
            record.span.set_attribute("stem.task.outcome", event.state)
        self._end(event.task_id, record, event.occurred_at)
        return record.trace_id

