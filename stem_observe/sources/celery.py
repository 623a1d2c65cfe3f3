"""The Celery worker plugin: Celery's signals mapped onto the bridge's.

One :class:`CeleryPlugin` per process connects to Celery's (global) signals. It reads what
Celery hands it leniently: a missing ``delivery_info``, an odd header or a task name that
is not a string never reaches the worker; the signal is skipped and counted in
``stem_observe_receiver_errors_total{signal="celery:<name>"}``.

Where each signal comes from, and what it becomes:

* **Producer** (``before_task_publish``): the W3C ``traceparent`` / ``tracestate`` of the
  current span and a publish timestamp (:data:`PUBLISHED_AT`) are written into the message
  headers; no producer span is started. ``after_task_publish`` sends ``after-task-publish``.
  A retry is a publish too (from inside the failed attempt), so the next attempt's span is
  a child of the failed one, in the same trace, and its queue wait starts at the retry.
* **The process that runs the task** (a prefork child, or the worker itself with the solo
  and thread pools, or the caller with ``task.apply()``): ``task-received`` and
  ``task-prerun`` at ``task_prerun``; ``task-retry`` / ``task-failed`` from ``task_retry`` /
  ``task_failure``; ``task-succeeded`` and ``task-postrun`` at ``task_postrun`` (a success
  is read from the state Celery hands it, which spares each task a third signal; the
  attempt's runtime and span end there, once Celery has stored the result). Celery's
  ``task_received`` fires in the worker's main process, which in prefork never sees the
  task run: there the plugin only stamps the receive time into the request
  (:data:`RECEIVED_AT`), so the task's span starts when the worker took delivery.
  Queue wait is measured from publish, or from the ETA/countdown when one was set.
* **The worker's main process**: ``task_revoked`` → ``task-revoked`` (reason ``revoked``,
  ``expired`` or ``terminated``; a task revoked before it ran is also counted received);
  ``task_unknown`` → ``task-failed`` (``NotRegistered``) and ``task-dead-lettered``
  (``unregistered-task``); ``task_rejected`` (a message Celery cannot read) →
  ``task-dead-lettered`` (``invalid-message``): it was never a task execution, and Celery
  drops it or the broker dead-letters it. ``worker_ready``, ``heartbeat_sent`` (plus a
  heartbeat thread of the plugin's own, since Celery's needs task events enabled),
  ``worker_shutting_down`` and ``worker_shutdown`` → ``worker-*``.
* A task raising ``Reject(requeue=False)`` failed for good and its message is
  dead-lettered: ``task-failed`` (``Reject``) and ``task-dead-lettered`` (``rejected``);
  with ``requeue=True`` another attempt follows: ``task-retry``. ``task_internal_error``
  (Celery itself failed around the task) → ``task-failed`` and ``task-postrun``.

Prefork: the bridge and the OpenTelemetry SDK re-initialise themselves after ``fork``
(``os.register_at_fork``); at ``worker_process_init`` the plugin resets its own per-process
state and starts fleet forwarding in the child. At ``worker_process_shutdown`` (a child
recycled by ``max_tasks_per_child`` or stopped by a warm shutdown) and at
``worker_shutdown`` it flushes spans and forwarded events before the process exits.

``max_retries`` of a task without a limit (``None``) is reported as ``-1``.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback as _traceback
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

from opentelemetry import trace

from stem_observe import events as ev
from stem_observe import signals as sig
from stem_observe.events import TaskState
from stem_observe.sources._celery_request import (
    DEFAULT_QUEUE,
    _epoch,
    _field,
    _fields_of,
    _header,
    _header_in,
    _int,
    _max_retries,
    _queue,
    _str,
    _trace_headers,
    _trace_headers_in,
)

__all__ = ["PUBLISHED_AT", "RECEIVED_AT", "CeleryPlugin", "RunState"]

logger = logging.getLogger("stem_observe.celery")

SENDER: Final = "celery"
#: Message header with the publish time (epoch seconds, as a string).
PUBLISHED_AT: Final = "stem_observe_published_at"
#: Request field the worker's main process sets to the receive time (epoch seconds).
RECEIVED_AT: Final = "stem_observe_received_at"
MAX_RUNS: Final = 10_000
MAX_FALLBACK_QUEUES: Final = 1_000

_STATES: Final[dict[str, TaskState]] = {
    "SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried", "REVOKED": "revoked",
    "IGNORED": "succeeded",  # the task ended on purpose without a result
}


# --------------------------------------------------------------------------- lenient readers


class RunState:
    """One attempt running in this process: what its events share."""

    __slots__ = ("attempt", "headers", "max_retries", "outcome", "perf_start", "queue",
                 "task_id", "task_name", "worker_id")

    def __init__(self, task_id: str, task_name: str, queue: str, attempt: int, *,
                 max_retries: int, worker_id: str | None,
                 headers: Mapping[str, str] | None) -> None:
        self.task_id = task_id
        self.task_name = task_name
        self.queue = queue
        self.attempt = attempt
        self.max_retries = max_retries
        self.worker_id = worker_id
        self.headers = headers
        self.outcome: TaskState | None = None
        self.perf_start = time.perf_counter()

    def runtime_s(self) -> float:
        return time.perf_counter() - self.perf_start


class CeleryPlugin:
    """Receivers for Celery's signals; see the module docstring for the mapping.

    Receivers run on Celery's threads (the consumer, the task's thread, the heartbeat
    timer); they never raise into Celery and do no I/O, except the flushes at process exit.
    ``on_child_init`` / ``on_flush`` are callbacks the public module sets (fleet forwarding,
    tracer providers).
    """

    def __init__(
        self,
        *,
        flush: Callable[[float], None] | None = None,
        child_init: Callable[[], None] | None = None,
        heartbeat_interval_s: float = 10.0,
        flush_timeout_s: float = 5.0,
    ) -> None:
        self._flush = flush
        self._child_init = child_init
        self.heartbeat_interval_s = heartbeat_interval_s
        self.flush_timeout_s = flush_timeout_s
        self._runs: dict[tuple[str, int], RunState] = {}
        self._fallback_queues: dict[Any, str] = {}
        self.hostname: str | None = None
        self.queues: tuple[str, ...] = ()
        self.concurrency: int | None = None
        self._beat_stop = threading.Event()
        self._beat_thread: threading.Thread | None = None
        self._last_celery_beat = 0.0
        self._connected: list[tuple[Any, Callable[..., None]]] = []

    # ----------------------------------------------------------------- wiring

    def connect(self) -> None:
        from celery import signals as cs

        for name in (
            "before_task_publish", "after_task_publish", "task_received", "task_prerun",
            "task_postrun", "task_retry", "task_failure", "task_revoked",
            "task_rejected", "task_unknown", "task_internal_error", "worker_ready",
            "heartbeat_sent", "worker_shutting_down", "worker_shutdown",
            "worker_process_init", "worker_process_shutdown",
        ):
            signal = getattr(cs, name)
            receiver = _guard(name, getattr(self, f"on_{name}"))
            signal.connect(receiver, weak=False)
            self._connected.append((signal, receiver))

    def disconnect(self) -> None:
        for signal, receiver in self._connected:
            signal.disconnect(receiver)
        self._connected.clear()
        self.stop_heartbeats()

    def reset(self) -> None:
        """Forget per-process state (in a forked child)."""
        self._runs = {}
        self._fallback_queues = {}
        self._beat_stop = threading.Event()
        self._beat_thread = None

    # ----------------------------------------------------------------- producer

    def on_before_task_publish(self, sender: Any = None, headers: Any = None,
                               **kwargs: Any) -> None:
        if not isinstance(headers, dict):
            raise TypeError(f"message headers are {type(headers).__name__}, not a dict")
        headers[PUBLISHED_AT] = repr(time.time())
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            headers["traceparent"] = (
                f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
            )
            state = context.trace_state.to_header() if context.trace_state else ""
            if state:
                headers["tracestate"] = state
            else:
                headers.pop("tracestate", None)

    def on_after_task_publish(self, sender: Any = None, headers: Any = None,
                              routing_key: Any = None, **kwargs: Any) -> None:
        if not sig.task_published.receivers:
            return
        if not isinstance(headers, Mapping):
            raise TypeError(f"message headers are {type(headers).__name__}, not a mapping")
        task_id = headers.get("id")
        if not isinstance(task_id, str):
            raise TypeError("the message has no task id")
        sig.send(sig.task_published, ev.TaskPublished(
            task_id=task_id, task_name=_str(sender, _str(headers.get("task"), "unknown")),
            queue=_str(routing_key, DEFAULT_QUEUE), attempt=_int(headers.get("retries")),
            headers=_trace_headers(headers), in_process=True, eta=_epoch(headers.get("eta")),
        ), SENDER)

    # ----------------------------------------------------------------- the task's process

    def on_task_received(self, sender: Any = None, request: Any = None, **kwargs: Any) -> None:
        # Stamp the receive time into what the pool will hand the task (the child, in
        # prefork); task-received itself is sent by the process that runs the task.
        request_dict = _field(request, "request_dict")
        if isinstance(request_dict, dict):
            request_dict[RECEIVED_AT] = time.time()

    def _run_of(self, task: Any, task_id: Any = None) -> RunState | None:
        fields = _fields_of(_field(task, "request"))
        if task_id is None:
            task_id = fields.get("id")
        if not isinstance(task_id, str):
            return None
        return self._runs.get((task_id, _int(fields.get("retries"))))

    def _queue_of(self, delivery_info: Any, task: Any) -> str:
        """:func:`_queue`, with the task's fallback (eager runs) read once per task."""
        if delivery_info is not None and isinstance(delivery_info, Mapping):
            for key in ("routing_key", "queue"):
                value = delivery_info.get(key)
                if isinstance(value, str) and value:
                    return value
        try:
            return self._fallback_queues[task]
        except KeyError:
            queue = _queue(None, task)
            if len(self._fallback_queues) >= MAX_FALLBACK_QUEUES:
                self._fallback_queues.clear()
            self._fallback_queues[task] = queue
            return queue
        except TypeError:  # an unhashable task
            return _queue(None, task)

    def on_task_prerun(self, sender: Any = None, task_id: Any = None, task: Any = None,
                       **kwargs: Any) -> None:
        task = task if task is not None else sender
        fields = _fields_of(_field(task, "request"))  # the request, read once
        if not isinstance(task_id, str):
            task_id = fields.get("id")
            if not isinstance(task_id, str):
                raise TypeError("the task has no id")
        name = _field(task, "name")
        if not isinstance(name, str) or not name:
            name = _str(fields.get("task"), "unknown")
        attempt = _int(fields.get("retries"))
        hostname = fields.get("hostname")
        run = RunState(
            task_id, name, self._queue_of(fields.get("delivery_info"), task), attempt,
            max_retries=_max_retries(task),
            worker_id=hostname if isinstance(hostname, str) and hostname else (
                self.hostname or None),
            headers=_trace_headers_in(fields),
        )
        self._runs[(task_id, attempt)] = run
        if len(self._runs) > MAX_RUNS:  # prerun without postrun, many times over
            self._runs.pop(next(iter(self._runs)), None)
        now = time.time()
        published = _header_in(fields, PUBLISHED_AT)
        enqueued_at = None if published is None else _epoch(published)
        eta = fields.get("eta")
        if eta is not None:
            eta = _epoch(eta)
        if sig.task_received.receivers:
            received_at = fields.get(RECEIVED_AT)
            if received_at is not None:
                received_at = _epoch(received_at)
            if received_at is None or received_at > now:
                received_at = now
            elif eta is not None and eta > received_at:  # held for its ETA, not working
                received_at = min(eta, now)
            # Fields by position (their declaration order), the hot path's constructor.
            sig.send(sig.task_received, ev.TaskReceived._new(
                received_at, task_id, name, run.queue, attempt, run.max_retries,
                run.worker_id, run.headers, True, enqueued_at, eta,
            ), SENDER)
        if sig.task_prerun.receivers:
            sig.send(sig.task_prerun, ev.TaskPrerun._new(
                now, task_id, name, run.queue, attempt, run.max_retries, run.worker_id,
                run.headers, True, enqueued_at, eta,
            ), SENDER)
        run.perf_start = time.perf_counter()

    def on_task_retry(self, sender: Any = None, request: Any = None, reason: Any = None,
                      **kwargs: Any) -> None:
        task_id = _field(request, "id")
        run = self._run_of(sender, task_id)
        if run is not None and run.outcome is not None:
            return
        if run is None:  # sent by the main process when a pool child was lost
            run = self._detached_run(sender, request, task_id)
        run.outcome = "retried"
        exc = _field(reason, "exc")
        when = _field(reason, "when")
        now = time.time()
        next_at = _epoch(when) if isinstance(when, datetime | str) else None
        if next_at is None and isinstance(when, int | float) and not isinstance(when, bool):
            next_at = now + float(when)
        message = _field(reason, "message")
        text = message if isinstance(message, str) and message else (
            str(exc) if exc is not None else ("worker lost" if reason is None else str(reason)))
        emit_retry(run, now, text, exc, next_at)

    def on_task_failure(self, sender: Any = None, task_id: Any = None, exception: Any = None,
                        einfo: Any = None, **kwargs: Any) -> None:
        run = self._run_of(sender, task_id)
        if run is not None and run.outcome is not None:
            return
        if run is None:
            run = self._detached_run(sender, _field(sender, "request"), task_id)
        run.outcome = "failed"
        stack = _field(einfo, "traceback")
        emit_failed(run, exception, stack if isinstance(stack, str) else None)

    def on_task_postrun(self, sender: Any = None, task_id: Any = None, task: Any = None,
                        retval: Any = None, state: Any = None, **kwargs: Any) -> None:
        task = task if task is not None else sender
        fields = _fields_of(_field(task, "request"))
        if not isinstance(task_id, str):
            task_id = fields.get("id")
        if not isinstance(task_id, str):
            raise TypeError("the task has no id")
        run = self._runs.pop((task_id, _int(fields.get("retries"))), None)
        if run is None:
            return
        if run.outcome is None and state == "SUCCESS":
            # Celery's task_success comes just before this, from the same place; reading
            # the outcome here spares every task a third signal (and a third request read).
            run.outcome = "succeeded"
            if sig.task_succeeded.receivers:
                sig.send(sig.task_succeeded, ev.TaskSucceeded._new(
                    time.time(), run.task_id, run.task_name, run.queue, run.attempt,
                    run.max_retries, run.worker_id, run.headers, True, run.runtime_s(),
                ), SENDER)
        elif run.outcome is None and state == "REJECTED":
            if _field(retval, "requeue"):
                run.outcome = "retried"
                emit_retry(run, time.time(), "rejected and requeued", None, None)
            else:
                run.outcome = "failed"
                emit_failed(run, retval, None)
                emit_dead_lettered(run, "rejected", str(retval) if retval else None)
        outcome = run.outcome or _STATES.get(state if isinstance(state, str) else "", "failed")
        emit_postrun(run, outcome)

    def on_task_internal_error(self, sender: Any = None, task_id: Any = None,
                               request: Any = None, exception: Any = None, einfo: Any = None,
                               **kwargs: Any) -> None:
        if not isinstance(task_id, str):
            task_id = _field(request, "id")
        run = self._run_of(sender, task_id)
        if run is None:
            run = self._detached_run(sender, request, task_id)
        else:
            self._runs.pop((run.task_id, run.attempt), None)
        if run.outcome is None:
            run.outcome = "failed"
            stack = _field(einfo, "traceback")
            emit_failed(run, exception, stack if isinstance(stack, str) else None)
        emit_postrun(run, "failed")  # Celery sends no postrun after an internal error

    def _detached_run(self, task: Any, request: Any, task_id: Any) -> RunState:
        """Fields for an event about a task that is not running in this process."""
        if not isinstance(task_id, str):
            raise TypeError("the task has no id")
        return RunState(
            task_id, _str(_field(task, "name"), _str(_field(request, "task"), "unknown")),
            _queue(_field(request, "delivery_info"), task),
            _int(_field(request, "retries")), max_retries=_max_retries(task),
            worker_id=_str(_field(request, "hostname"), self.hostname or "") or None,
            headers=_trace_headers(request),
        )

    # ----------------------------------------------------------------- the worker's main process

    def on_task_revoked(self, sender: Any = None, request: Any = None, terminated: Any = False,
                        expired: Any = False, **kwargs: Any) -> None:
        task_id = _field(request, "id")
        run = self._run_of(sender, task_id)
        in_process = run is not None
        if run is None:
            run = self._detached_run(sender, request, task_id)
            if not terminated and sig.task_received.receivers:  # never reached a pool
                received_at = _epoch(_field(request, RECEIVED_AT))
                sig.send(sig.task_received, ev.TaskReceived(
                    occurred_at=received_at or time.time(), task_id=run.task_id,
                    task_name=run.task_name, queue=run.queue, attempt=run.attempt,
                    max_retries=run.max_retries, worker_id=run.worker_id,
                    headers=run.headers, enqueued_at=_epoch(_header(request, PUBLISHED_AT)),
                    eta=_epoch(_field(request, "eta")),
                ), SENDER)
        elif run.outcome is not None:
            return
        run.outcome = "revoked"
        reason = "expired" if expired else "terminated" if terminated else "revoked"
        if sig.task_revoked.receivers:
            sig.send(sig.task_revoked, ev.TaskRevoked(
                task_id=run.task_id, task_name=run.task_name, queue=run.queue,
                attempt=run.attempt, max_retries=run.max_retries, worker_id=run.worker_id,
                headers=run.headers, in_process=in_process, reason=reason,
            ), SENDER)

    def on_task_unknown(self, sender: Any = None, message: Any = None, exc: Any = None,
                        name: Any = None, id: Any = None, **kwargs: Any) -> None:
        run = self._message_run(message, id, name)
        run.outcome = "failed"
        emit_failed(run, None, None, error_type="NotRegistered",
                    error_message=f"task {run.task_name!r} is not registered", in_process=False)
        emit_dead_lettered(run, "unregistered-task", str(exc) if exc else None, in_process=False)

    def on_task_rejected(self, sender: Any = None, message: Any = None, exc: Any = None,
                         **kwargs: Any) -> None:
        run = self._message_run(message, None, None)
        emit_dead_lettered(run, "invalid-message", str(exc) if exc else None, in_process=False)

    def _message_run(self, message: Any, task_id: Any, name: Any) -> RunState:
        headers = _field(message, "headers")
        headers = headers if isinstance(headers, Mapping) else {}
        if not isinstance(task_id, str):
            task_id = _str(headers.get("id"), "unknown")
        return RunState(
            task_id, _str(name, _str(headers.get("task"), "unknown")),
            _queue(_field(message, "delivery_info")), _int(headers.get("retries")),
            max_retries=0, worker_id=self.hostname, headers=_trace_headers(headers),
        )

    def on_worker_ready(self, sender: Any = None, **kwargs: Any) -> None:
        self.hostname = _str(_field(sender, "hostname"), self.hostname or "celery")
        queues = _field(_field(sender, "task_consumer"), "queues")
        if isinstance(queues, list | tuple):
            self.queues = tuple(q for q in (_field(q, "name") for q in queues)
                                if isinstance(q, str))
        controller = _field(sender, "controller")
        concurrency = _field(controller, "concurrency")
        self.concurrency = concurrency if isinstance(concurrency, int) else None
        sig.emit(ev.WorkerReady(worker_id=self.hostname, queues=self.queues,
                                namespace=SENDER, concurrency=self.concurrency), SENDER)
        self._heartbeat()
        self.start_heartbeats()

    def on_heartbeat_sent(self, sender: Any = None, **kwargs: Any) -> None:
        interval = _field(sender, "interval")
        self._last_celery_beat = time.monotonic()
        self._heartbeat(interval if isinstance(interval, float | int) else None)

    def _heartbeat(self, interval_s: float | None = None) -> None:
        if self.hostname is None or not sig.worker_heartbeat.receivers:
            return
        from celery.worker import state

        now = time.time()
        sig.send(sig.worker_heartbeat, ev.WorkerHeartbeat(
            occurred_at=now, timestamp=now, worker_id=self.hostname, queues=self.queues,
            namespace=SENDER, inflight=len(state.active_requests),
            concurrency=self.concurrency, interval_s=interval_s or self.heartbeat_interval_s,
        ), SENDER)

    def start_heartbeats(self) -> None:
        if self.heartbeat_interval_s <= 0 or self._beat_thread is not None:
            return
        self._beat_stop.clear()
        self._beat_thread = threading.Thread(
            target=self._beat, name="stem-observe-celery-heartbeat", daemon=True)
        self._beat_thread.start()

    def stop_heartbeats(self) -> None:
        self._beat_stop.set()
        thread, self._beat_thread = self._beat_thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)

    def _beat(self) -> None:
        while not self._beat_stop.wait(self.heartbeat_interval_s):
            if time.monotonic() - self._last_celery_beat < self.heartbeat_interval_s:
                continue  # Celery's own heartbeat (task events on) already reported
            try:
                self._heartbeat()
            except Exception:
                sig._receiver_failed("celery:heartbeat", self._heartbeat)

    def on_worker_shutting_down(self, sender: Any = None, how: Any = None,
                                **kwargs: Any) -> None:
        self.stop_heartbeats()
        reason = how.lower() if isinstance(how, str) else None
        sig.emit(ev.WorkerStopping(worker_id=_str(sender, self.hostname or "celery"),
                                   queues=self.queues, namespace=SENDER, reason=reason), SENDER)

    def on_worker_shutdown(self, sender: Any = None, **kwargs: Any) -> None:
        self.stop_heartbeats()
        worker_id = self.hostname or _str(_field(sender, "hostname"), "celery")
        sig.emit(ev.WorkerShutdown(worker_id=worker_id, queues=self.queues,
                                   namespace=SENDER, reason="warm"), SENDER)
        self.flush()

    def on_worker_process_init(self, sender: Any = None, **kwargs: Any) -> None:
        self.reset()
        if isinstance(sender, str) and sender:
            self.hostname = sender
        if self._child_init is not None:
            self._child_init()

    def on_worker_process_shutdown(self, sender: Any = None, **kwargs: Any) -> None:
        self.flush()

    def flush(self) -> None:
        """Export what this process still holds (spans, forwarded events)."""
        if self._flush is not None:
            self._flush(self.flush_timeout_s)


# --------------------------------------------------------------------------- emitting


def emit_retry(run: RunState, now: float, reason: str, exc: Any,
               next_at: float | None) -> None:
    if not sig.task_retry.receivers:
        return
    sig.send(sig.task_retry, ev.TaskRetry(
        occurred_at=now, task_id=run.task_id, task_name=run.task_name, queue=run.queue,
        attempt=run.attempt, max_retries=run.max_retries, worker_id=run.worker_id,
        headers=run.headers, in_process=True, reason=reason,
        error_type=type(exc).__name__ if exc is not None else None,
        error_message=str(exc) if exc is not None else None,
        next_retry_at=next_at,
        retry_delay_s=None if next_at is None else max(0.0, next_at - now),
        runtime_s=run.runtime_s(),
    ), SENDER)


def emit_failed(run: RunState, exc: Any, stack: str | None, *, error_type: str | None = None,
                error_message: str | None = None, in_process: bool = True) -> None:
    if not sig.task_failed.receivers:
        return
    exception = exc if isinstance(exc, BaseException) else None
    if stack is None and exception is not None and exception.__traceback__ is not None:
        stack = "".join(_traceback.format_exception(exception))
    sig.send(sig.task_failed, ev.TaskFailed(
        task_id=run.task_id, task_name=run.task_name, queue=run.queue, attempt=run.attempt,
        max_retries=run.max_retries, worker_id=run.worker_id, headers=run.headers,
        in_process=in_process,
        error_type=error_type or (type(exc).__name__ if exc is not None else "Exception"),
        error_message=error_message if error_message is not None else (
            str(exc) if exc is not None else ""),
        stacktrace=stack, runtime_s=run.runtime_s() if in_process else None,
        exception=exception,
    ), SENDER)


def emit_dead_lettered(run: RunState, reason: str, error: str | None, *,
                       in_process: bool = True) -> None:
    if sig.task_dead_lettered.receivers:
        sig.send(sig.task_dead_lettered, ev.TaskDeadLettered(
            task_id=run.task_id, task_name=run.task_name, queue=run.queue,
            attempt=run.attempt, max_retries=run.max_retries, worker_id=run.worker_id,
            headers=run.headers, in_process=in_process, reason=reason, error=error,
        ), SENDER)


def emit_postrun(run: RunState, state: TaskState) -> None:
    if sig.task_postrun.receivers:
        sig.send(sig.task_postrun, ev.TaskPostrun._new(
            time.time(), run.task_id, run.task_name, run.queue, run.attempt,
            run.max_retries, run.worker_id, run.headers, True, state, run.runtime_s(),
        ), SENDER)


def _guard(name: str, handler: Callable[..., None]) -> Callable[..., None]:
    """Never let a receiver's error reach Celery: count it and log it, rate-limited."""
    signal_name = f"celery:{name}"
    fail = sig._receiver_failed

    def receive(*args: Any, **kwargs: Any) -> None:
        try:
            handler(*args, **kwargs)
        except Exception:
            fail(signal_name, handler)

    receive.__qualname__ = f"stem_observe.celery[{name}]"
    return receive
