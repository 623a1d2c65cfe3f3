"""The plain-Python worker API: wrap an execution, and the signals follow.

::

    with track_task("emails.send", task_id=msg.id, queue="emails", headers=msg.headers) as run:
        try:
            send(msg)
        except SMTPTimeout as exc:
            run.retry("smtp timeout", countdown=30, exc=exc)

Entering sends ``task-received`` and ``task-prerun``; leaving sends ``task-succeeded``, or
``task-failed`` if an exception escapes (it is re-raised unchanged), or nothing more if
:meth:`TaskRun.retry` was called; then ``task-postrun``. :func:`observe` is the decorator
form; :class:`WorkerSession` adds worker lifecycle signals and periodic heartbeats.

Nothing here raises into the task: signal receivers are guarded by :func:`signals.emit`.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar, cast

from stem_observe import events as ev
from stem_observe import signals as sig
from stem_observe.events import TaskState
from stem_observe.signals import emit

__all__ = [
    "TaskRun",
    "WorkerSession",
    "current_task",
    "observe",
    "send_worker_heartbeat",
    "track_task",
]

P = ParamSpec("P")
R = TypeVar("R")

_SENDER: Final = "python"
_current: Final[contextvars.ContextVar[TaskRun | None]] = contextvars.ContextVar(
    "stem_observe_run", default=None
)


def current_task() -> TaskRun | None:
    """The task run active in this context (inside :func:`track_task`), if any."""
    return _current.get()


class TaskRun:
    """One execution of a task; a context manager. Build it with :func:`track_task`."""

    __slots__ = (
        "_on_enter", "_on_exit", "_perf_start", "_state", "_token", "attempt", "enqueued_at",
        "eta",
        "headers", "max_retries", "queue", "send_received", "task_id", "task_name",
        "worker_id",
    )

    def __init__(
        self,
        task_name: str,
        *,
        task_id: str | None = None,
        queue: str = "default",
        attempt: int = 0,
        max_retries: int = 0,
        worker_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        enqueued_at: float | None = None,
        eta: float | None = None,
        send_received: bool = True,
        on_enter: Callable[[TaskRun], None] | None = None,
        on_exit: Callable[[TaskRun], None] | None = None,
    ) -> None:
        self.task_name = task_name
        self.task_id = task_id if task_id is not None else str(uuid.uuid4())
        self.queue = queue
        self.attempt = attempt
        self.max_retries = max_retries
        self.worker_id = worker_id
        self.headers = headers
        self.enqueued_at = enqueued_at
        self.eta = eta
        self.send_received = send_received
        self._on_enter = on_enter
        self._on_exit = on_exit
        self._state: TaskState | None = None
        self._perf_start = 0.0
        self._token: contextvars.Token[TaskRun | None] | None = None

    @property
    def state(self) -> TaskState | None:
        """``None`` while running; the outcome once decided."""
        return self._state

    def runtime_s(self) -> float:
        """Seconds since the handler started."""
        return time.perf_counter() - self._perf_start

    def __enter__(self) -> TaskRun:
        if self._on_enter is not None:
            self._on_enter(self)
        now = time.time()
        # Build an event only when someone listens: nothing installed costs almost nothing.
        # Fields by position (their declaration order), the hot path's constructor.
        if self.send_received and sig.task_received.receivers:
            sig.send(sig.task_received, ev.TaskReceived._new(
                now, self.task_id, self.task_name, self.queue, self.attempt,
                self.max_retries, self.worker_id, self.headers, True, self.enqueued_at,
                self.eta,
            ), _SENDER)
        if sig.task_prerun.receivers:
            sig.send(sig.task_prerun, ev.TaskPrerun._new(
                now, self.task_id, self.task_name, self.queue, self.attempt,
                self.max_retries, self.worker_id, self.headers, True, self.enqueued_at,
                self.eta,
            ), _SENDER)
        self._token = _current.set(self)
        self._perf_start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        runtime = time.perf_counter() - self._perf_start
        now = time.time()
        if self._token is not None:
            try:
                _current.reset(self._token)
            except ValueError:
                _current.set(None)
            self._token = None
        if self._state is None:
            if exc is None:
                self._state = "succeeded"
                if sig.task_succeeded.receivers:
                    sig.send(sig.task_succeeded, ev.TaskSucceeded._new(
                        now, self.task_id, self.task_name, self.queue, self.attempt,
                        self.max_retries, self.worker_id, self.headers, True, runtime,
                    ), _SENDER)
            else:
                self._state = "failed"
                self._emit_failed(exc, runtime, now)
        if sig.task_postrun.receivers:
            sig.send(sig.task_postrun, ev.TaskPostrun._new(
                now, self.task_id, self.task_name, self.queue, self.attempt,
                self.max_retries, self.worker_id, self.headers, True, self._state, runtime,
            ), _SENDER)
        if self._on_exit is not None:
            self._on_exit(self)

    async def __aenter__(self) -> TaskRun:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def _emit_failed(self, exc: BaseException, runtime: float, now: float) -> None:
        if not sig.task_failed.receivers:
            return
        sig.send(sig.task_failed, ev.TaskFailed(
            occurred_at=now, task_id=self.task_id, task_name=self.task_name,
            queue=self.queue, attempt=self.attempt, max_retries=self.max_retries,
            worker_id=self.worker_id, headers=self.headers, in_process=True,
            error_type=type(exc).__name__, error_message=str(exc),
            stacktrace="".join(traceback.format_exception(exc)), runtime_s=runtime,
            exception=exc,
        ), _SENDER)

    # ----------------------------------------------------------------- helpers

    def retry(
        self,
        reason: str = "",
        *,
        countdown: float | None = None,
        eta: float | None = None,
        exc: BaseException | None = None,
    ) -> None:
        """Record that this attempt failed and will be retried (``task-retry``).

        ``countdown`` (seconds) or ``eta`` (epoch seconds) say when the next attempt runs.
        Re-scheduling the task is the caller's job; after this the run ends without a
        success or failure signal, whatever happens next.
        """
        if self._state is not None:
            return
        now = time.time()
        next_at = eta if eta is not None else (now + countdown if countdown is not None else None)
        self._state = "retried"
        emit(ev.TaskRetry(
            occurred_at=now, task_id=self.task_id, task_name=self.task_name,
            queue=self.queue, attempt=self.attempt, max_retries=self.max_retries,
            worker_id=self.worker_id, headers=self.headers, in_process=True,
            reason=reason or (str(exc) if exc is not None else ""),
            error_type=type(exc).__name__ if exc is not None else None,
            error_message=str(exc) if exc is not None else None,
            next_retry_at=next_at,
            retry_delay_s=None if next_at is None else max(0.0, next_at - now),
            runtime_s=self.runtime_s(),
        ), _SENDER)

    def dead_letter(self, reason: str = "max-retries-exhausted", error: str | None = None) -> None:
        """Record that the task was moved to a dead-letter queue (``task-dead-lettered``)."""
        emit(ev.TaskDeadLettered(
            task_id=self.task_id, task_name=self.task_name, queue=self.queue,
            attempt=self.attempt, max_retries=self.max_retries, worker_id=self.worker_id,
            headers=self.headers, in_process=True, reason=reason, error=error,
        ), _SENDER)

    def heartbeat(self, progress: float | None = None, message: str | None = None) -> None:
        """Report that the task is alive, optionally with progress in ``[0, 1]``."""
        emit(ev.TaskHeartbeat(
            task_id=self.task_id, task_name=self.task_name, queue=self.queue,
            attempt=self.attempt, max_retries=self.max_retries, worker_id=self.worker_id,
            headers=self.headers, in_process=True, progress=progress, message=message,
        ), _SENDER)


def track_task(
    task_name: str,
    *,
    task_id: str | None = None,
    queue: str = "default",
    attempt: int = 0,
    max_retries: int = 0,
    worker_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    enqueued_at: float | None = None,
    eta: float | None = None,
    send_received: bool = True,
) -> TaskRun:
    """A :class:`TaskRun` for one execution of ``task_name``; use it as a context manager
    (``with`` or ``async with``).

    ``task_id`` defaults to a new UUID; ``headers`` are the message headers (a
    ``traceparent`` joins the producer's trace); ``enqueued_at`` and ``eta`` (epoch seconds)
    give the queue-wait time; ``send_received=False`` if the worker sent ``task-received``
    itself.
    """
    return TaskRun(
        task_name, task_id=task_id, queue=queue, attempt=attempt, max_retries=max_retries,
        worker_id=worker_id, headers=headers, enqueued_at=enqueued_at, eta=eta,
        send_received=send_received,
    )


def observe(
    name: str | None = None, *, queue: str = "default", max_retries: int = 0,
    worker_id: str | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function (or ``async def``) so each call is tracked as one task execution
    with a new task id."""

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        task_name = name or f"{func.__module__}.{func.__qualname__}"

        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                async with TaskRun(task_name, queue=queue, max_retries=max_retries,
                                   worker_id=worker_id):
                    return await func(*args, **kwargs)

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with TaskRun(task_name, queue=queue, max_retries=max_retries, worker_id=worker_id):
                return func(*args, **kwargs)

        return wrapper

    return decorate


def send_worker_heartbeat(worker_id: str, **fields: Any) -> None:
    """Send one ``worker-heartbeat``; ``fields`` are :class:`~events.WorkerHeartbeat` fields."""
    emit(ev.WorkerHeartbeat(worker_id=worker_id, **fields), _SENDER)


class WorkerSession:
    """A worker's lifecycle: ``worker-ready`` on start, heartbeats every ``heartbeat_interval_s``
    from a daemon thread (with the number of tasks in flight), ``worker-stopping`` and
    ``worker-shutdown`` on stop. Use :meth:`track` for the worker's task executions."""

    def __init__(
        self,
        worker_id: str | None = None,
        *,
        queues: Iterable[str] = ("default",),
        concurrency: int | None = None,
        heartbeat_interval_s: float = 10.0,
        namespace: str = "stem",
    ) -> None:
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.queues = tuple(queues) or ("default",)
        self.concurrency = concurrency
        self.heartbeat_interval_s = heartbeat_interval_s
        self.namespace = namespace
        self.started_at: float | None = None
        self._inflight = 0
        self._counts = {"started": 0, "succeeded": 0, "failed": 0}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def inflight(self) -> int:
        return self._inflight

    def start(self) -> WorkerSession:
        self.started_at = time.time()
        self._stop.clear()
        emit(ev.WorkerReady(worker_id=self.worker_id, queues=self.queues,
                            namespace=self.namespace, concurrency=self.concurrency), _SENDER)
        self.heartbeat()
        if self.heartbeat_interval_s > 0:
            self._thread = threading.Thread(
                target=self._beat, name=f"stem-observe-heartbeat-{self.worker_id}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, reason: str = "warm") -> None:
        emit(ev.WorkerStopping(worker_id=self.worker_id, queues=self.queues,
                               namespace=self.namespace, reason=reason), _SENDER)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        emit(ev.WorkerShutdown(worker_id=self.worker_id, queues=self.queues,
                               namespace=self.namespace, reason=reason), _SENDER)

    def __enter__(self) -> WorkerSession:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def track(
        self,
        task_name: str,
        *,
        task_id: str | None = None,
        queue: str | None = None,
        attempt: int = 0,
        max_retries: int = 0,
        headers: Mapping[str, str] | None = None,
        enqueued_at: float | None = None,
        eta: float | None = None,
    ) -> TaskRun:
        """Like :func:`track_task`, with this worker's id and in-flight accounting."""
        return TaskRun(
            task_name, task_id=task_id, queue=queue or self.queues[0], attempt=attempt,
            max_retries=max_retries, worker_id=self.worker_id, headers=headers,
            enqueued_at=enqueued_at, eta=eta, on_enter=self._started, on_exit=self._finished,
        )

    def _started(self, run: TaskRun) -> None:
        with self._lock:
            self._inflight += 1
            self._counts["started"] += 1

    def _finished(self, run: TaskRun) -> None:
        with self._lock:
            self._inflight -= 1
            if run.state == "succeeded":
                self._counts["succeeded"] += 1
            elif run.state == "failed":
                self._counts["failed"] += 1

    def heartbeat(self) -> None:
        """Send one heartbeat now."""
        now = time.time()
        with self._lock:
            inflight = self._inflight
            counts = dict(self._counts)
        emit(ev.WorkerHeartbeat(
            occurred_at=now, timestamp=now, worker_id=self.worker_id, queues=self.queues,
            namespace=self.namespace, inflight=inflight, concurrency=self.concurrency,
            host=socket.gethostname(), pid=os.getpid(), started_at=self.started_at,
            started=counts["started"], completed=counts["succeeded"], failed=counts["failed"],
            interval_s=self.heartbeat_interval_s or None,
        ), _SENDER)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_interval_s):
            self.heartbeat()
