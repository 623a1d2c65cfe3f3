"""The event types every source emits and every sink receives.

Events are frozen dataclasses with slots: cheap to build on a worker's hot path, safe to
hand to several receivers, and the only vocabulary sources and sinks share.

Times are epoch seconds (``float``, as from ``time.time()``); durations are seconds and
say so in their name (``runtime_s``). ``in_process`` is true when the signal is sent from
inside the task's own execution context (the worker API, the Celery plugin): sinks may
then bind context to it, such as the current span and the log fields. Sources that observe
tasks from outside (the Stem Redis watcher) leave it false.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Final, Literal, Self, TypeVar

__all__ = [
    "Event",
    "QueueSnapshot",
    "QueueWorkerSnapshot",
    "ScheduleEntryDispatched",
    "ScheduleEntryDue",
    "ScheduleEntryEvent",
    "ScheduleEntryFailed",
    "TaskDeadLettered",
    "TaskEvent",
    "TaskFailed",
    "TaskHeartbeat",
    "TaskPostrun",
    "TaskPrerun",
    "TaskPublished",
    "TaskReceived",
    "TaskRetry",
    "TaskRevoked",
    "TaskState",
    "TaskSucceeded",
    "WorkerEvent",
    "WorkerHeartbeat",
    "WorkerQueueLoad",
    "WorkerReady",
    "WorkerShutdown",
    "WorkerStopping",
]

TaskState = Literal["succeeded", "failed", "retried", "revoked"]

_E = TypeVar("_E")


def _fast_init(cls: type[_E]) -> type[_E]:
    """Give a frozen, slotted dataclass an ``__init__`` that is twice as fast, same signature.

    The frozen ``__init__`` of ``dataclasses`` assigns each field with
    ``object.__setattr__``; this one calls each slot's descriptor directly, which is the same
    assignment without the generic lookup. A worker builds four events per task, so this
    halves a cost every task pays. Keyword-only fields, defaults and default factories behave
    as ``dataclasses`` defines them (``tests/unit/test_api_surface.py`` checks it).
    """
    namespace: dict[str, Any] = {"_MISSING": MISSING}
    params: list[str] = []
    body: list[str] = []
    for f in fields(cls):  # type: ignore[arg-type]
        namespace[f"_set_{f.name}"] = getattr(cls, f.name).__set__
        if f.default is not MISSING:
            namespace[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        elif f.default_factory is not MISSING:
            namespace[f"_factory_{f.name}"] = f.default_factory
            params.append(f"{f.name}=_MISSING")
            body.append(f"if {f.name} is _MISSING: {f.name} = _factory_{f.name}()")
        else:
            params.append(f.name)
        body.append(f"_set_{f.name}(self, {f.name})")
    source = f"def __init__(self, *, {', '.join(params)}):\n    " + "\n    ".join(body)
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    namespace["_cls"] = cls
    namespace["_object_new"] = object.__new__
    source += (f"\ndef _new({', '.join(names)}):\n    self = _object_new(_cls)\n    "
               + "\n    ".join(f"_set_{name}(self, {name})" for name in names)
               + "\n    return self")
    exec(source, namespace)  # the technique dataclasses itself uses to build __init__
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    new = namespace["_new"]
    new.__qualname__ = f"{cls.__qualname__}._new"
    new.__doc__ = _NEW_DOC
    cls._new = staticmethod(new)  # type: ignore[attr-defined]
    return cls


_NEW_DOC: Final = """Every field, by position in declaration order (no defaults, no checks).

The constructor of the bridge's own sources on a worker's hot path: parsing a dozen keyword
arguments costs as much as setting the fields. ``tests/unit/test_api_surface.py`` checks it
builds what the keyword constructor builds.
"""


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event: when it happened."""

    occurred_at: float = field(default_factory=time.time)

    if TYPE_CHECKING:
        @classmethod
        def _new(cls, *values: Any) -> Self:
            """Every field by position (made by ``_fast_init`` for each class)."""


# --------------------------------------------------------------------------- tasks


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskEvent(Event):
    """What every task event carries.

    ``headers`` holds the task's message headers as strings; a W3C ``traceparent`` (and
    ``tracestate``) there makes the task's span join the producer's trace.
    """

    task_id: str
    task_name: str
    queue: str = "default"
    attempt: int = 0
    max_retries: int = 0
    worker_id: str | None = None
    headers: Mapping[str, str] | None = None
    in_process: bool = False


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskPublished(TaskEvent):
    """A producer handed the task to the broker (``after-task-publish``).

    ``eta`` is the deliberate earliest start (ETA / countdown), if any.
    """

    eta: float | None = None


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskReceived(TaskEvent):
    """A worker took delivery of the task (``task-received``).

    ``enqueued_at`` is when the producer published it and ``eta`` any deliberate delay;
    together they give the queue-wait time without counting the delay.
    """

    enqueued_at: float | None = None
    eta: float | None = None


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskPrerun(TaskEvent):
    """The handler is about to run (``task-prerun``)."""

    enqueued_at: float | None = None
    eta: float | None = None


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSucceeded(TaskEvent):
    """The attempt succeeded (``task-succeeded``). ``runtime_s`` is the handler's run time."""

    runtime_s: float | None = None


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFailed(TaskEvent):
    """The task failed for good (``task-failed``): no retry follows.

    ``exception`` is the live exception object when the source has it (in-process); sinks
    must not rely on it and use the string fields instead.
    """

    error_type: str = "Exception"
    error_message: str = ""
    stacktrace: str | None = None
    runtime_s: float | None = None
    exception: BaseException | None = field(default=None, compare=False, repr=False)


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRetry(TaskEvent):
    """The attempt failed and a retry was scheduled (``task-retry``).

    ``attempt`` is the attempt that failed; the next runs as ``attempt + 1``.
    """

    reason: str = ""
    error_type: str | None = None
    error_message: str | None = None
    next_retry_at: float | None = None
    retry_delay_s: float | None = None
    runtime_s: float | None = None


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRevoked(TaskEvent):
    """The task was revoked, skipped or terminated (``task-revoked``)."""

    reason: str = "revoked"


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskDeadLettered(TaskEvent):
    """The task was moved to a dead-letter queue (``task-dead-lettered``).

    ``reason`` is short and bounded (Stem writes ``max-retries-exhausted``,
    ``unregistered-task``, ``signature-invalid``); ``error`` is free text.
    """

    reason: str = "max-retries-exhausted"
    error: str | None = None


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskPostrun(TaskEvent):
    """The execution is over, whatever its outcome (``task-postrun``)."""

    state: TaskState = "succeeded"
    runtime_s: float | None = None


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskHeartbeat(TaskEvent):
    """A running task reports it is alive, optionally with progress in ``[0, 1]``."""

    progress: float | None = None
    message: str | None = None


# --------------------------------------------------------------------------- workers


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerEvent(Event):
    """What every worker event carries."""

    worker_id: str
    queues: tuple[str, ...] = ()
    namespace: str = "stem"


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerReady(WorkerEvent):
    """The worker started and consumes (``worker-ready``)."""

    concurrency: int | None = None


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerStopping(WorkerEvent):
    """The worker begins to shut down (``worker-stopping``); ``reason`` is warm/soft/hard."""

    reason: str | None = None


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerShutdown(WorkerEvent):
    """The worker has stopped (``worker-shutdown``).

    ``gone`` means the source no longer sees the worker at all (its heartbeat expired):
    sinks drop its series.
    """

    reason: str | None = None
    gone: bool = False


@dataclass(frozen=True, slots=True)
class WorkerQueueLoad:
    """One entry of a heartbeat's per-queue in-flight list."""

    name: str
    inflight: int


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerHeartbeat(WorkerEvent):
    """A worker heartbeat (``worker-heartbeat``), with the fields of Stem's ``WorkerHeartbeat``.

    ``timestamp`` is when the worker built the heartbeat (``occurred_at`` is when it was
    seen); ``interval_s`` is the worker's heartbeat interval when known, so staleness can
    be judged as a multiple of it.
    """

    timestamp: float = field(default_factory=time.time)
    inflight: int = 0
    isolate_count: int | None = None
    concurrency: int | None = None
    max_concurrency: int | None = None
    prefetch: int | None = None
    last_lease_renewal: float | None = None
    queue_loads: tuple[WorkerQueueLoad, ...] = ()
    host: str | None = None
    pid: int | None = None
    started_at: float | None = None
    memory_bytes: int | None = None
    memory_max_bytes: int | None = None
    memory_percent: float | None = None
    load_avg: tuple[float, ...] = ()
    cpu_count: int | None = None
    started: int | None = None
    completed: int | None = None
    failed: int | None = None
    queue_depth: int | None = None
    autoscale: bool | None = None
    uptime_s: float | None = None
    broadcasts: tuple[str, ...] = ()
    extras: Mapping[str, object] | None = None
    """Anything else the worker reported (Stem's ``extras``), for receivers that want it."""
    interval_s: float | None = None
    version: str = "1"


# --------------------------------------------------------------------------- queues


@dataclass(frozen=True, slots=True)
class QueueWorkerSnapshot:
    """In-flight count of one consumer of a queue."""

    worker_id: str
    inflight: int


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSnapshot(Event):
    """A point-in-time view of one queue (``queue-snapshot``), from a poller.

    ``None`` means "not measured" (a gauge keeps its last value); ``0`` is a measurement.
    """

    queue: str
    namespace: str = "stem"
    pending: int | None = None
    inflight: int | None = None
    delayed: int | None = None
    delayed_overdue: int | None = None
    dead_letters: int | None = None
    oldest_pending_age_s: float | None = None
    oldest_dead_letter_age_s: float | None = None
    consumers: tuple[QueueWorkerSnapshot, ...] = ()
    gone: bool = False
    """The queue no longer exists (all its keys vanished): sinks drop its series."""


# --------------------------------------------------------------------------- scheduler


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleEntryEvent(Event):
    """What every schedule (beat) event carries."""

    entry_id: str
    task_name: str | None = None
    queue: str | None = None


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleEntryDue(ScheduleEntryEvent):
    """A schedule entry is due (``schedule-entry-due``)."""

    tick_at: float | None = None


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleEntryDispatched(ScheduleEntryEvent):
    """A schedule entry was dispatched (``schedule-entry-dispatched``).

    ``drift_s`` is ``executed_at - scheduled_for``.
    """

    scheduled_for: float | None = None
    drift_s: float | None = None


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleEntryFailed(ScheduleEntryEvent):
    """Dispatching a schedule entry failed (``schedule-entry-failed``)."""

    scheduled_for: float | None = None
    error_type: str = "Exception"
    error_message: str = ""
