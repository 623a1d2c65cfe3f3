"""Log correlation: ``task_id``, ``task_name``, ``trace_id`` and ``span_id`` on log records.

While a task runs in-process (between its prerun and postrun signals) a context variable
holds the task; every log record created then carries the task's IDs and the current span's
IDs. Outside a task the attributes are empty strings, so a format such as
``"%(task_id)s %(message)s"`` never fails.

Two ways to get them: :meth:`LogsSink.install_record_factory` (done by ``install()``) wraps
the logging record factory so every record has them; or add :class:`TaskContextFilter` to
your handlers.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any, Final

from opentelemetry import trace

from stem_observe import events as ev

__all__ = ["LOG_FIELDS", "LogsSink", "TaskContextFilter", "TaskLogContext", "current_log_context"]

#: The attributes added to log records.
LOG_FIELDS: Final = ("task_id", "task_name", "trace_id", "span_id")


class TaskLogContext:
    """The task a log record belongs to."""

    __slots__ = ("queue", "task_id", "task_name")

    def __init__(self, task_id: str, task_name: str, queue: str) -> None:
        self.task_id = task_id
        self.task_name = task_name
        self.queue = queue


_current: Final[contextvars.ContextVar[TaskLogContext | None]] = contextvars.ContextVar(
    "stem_observe_task", default=None
)


def current_log_context() -> TaskLogContext | None:
    """The task running in this context, if any."""
    return _current.get()


def _annotate(record: logging.LogRecord) -> None:
    task = _current.get()
    if task is None:
        record.task_id = record.task_name = record.trace_id = record.span_id = ""
        return
    record.task_id = task.task_id
    record.task_name = task.task_name
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        record.trace_id = format(span_context.trace_id, "032x")
        record.span_id = format(span_context.span_id, "016x")
    else:
        record.trace_id = record.span_id = ""


class TaskContextFilter(logging.Filter):
    """A filter that adds the task and trace IDs to each record; it never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "task_id") or not record.task_id:
            _annotate(record)
        return True


class LogsSink:
    """Tracks the in-process task per context and annotates log records with it."""

    def __init__(self) -> None:
        self._tokens: dict[str, contextvars.Token[TaskLogContext | None]] = {}
        self._previous_factory: Callable[..., logging.LogRecord] | None = None
        self._factory: Callable[..., logging.LogRecord] | None = None

    def handlers(self) -> dict[type[ev.Event], Callable[[Any], None]]:
        return {ev.TaskPrerun: self.on_prerun, ev.TaskPostrun: self.on_postrun}

    def on_prerun(self, event: ev.TaskPrerun) -> None:
        if event.in_process:
            context = TaskLogContext(event.task_id, event.task_name, event.queue)
            self._tokens[event.task_id] = _current.set(context)

    def on_postrun(self, event: ev.TaskPostrun) -> None:
        token = self._tokens.pop(event.task_id, None)
        if token is None:
            return
        try:
            _current.reset(token)
        except ValueError:  # postrun ran in another context than prerun
            _current.set(None)

    def after_fork(self) -> None:
        self._tokens = {}

    def install_record_factory(self) -> None:
        """Wrap the logging record factory so every record carries the task fields."""
        if self._factory is not None:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _annotate(record)
            return record

        self._previous_factory = previous
        self._factory = factory
        logging.setLogRecordFactory(factory)

    def uninstall_record_factory(self) -> None:
        """Restore the factory found at install, unless someone wrapped ours since."""
        if self._factory is None or self._previous_factory is None:
            return
        if logging.getLogRecordFactory() is self._factory:
            logging.setLogRecordFactory(self._previous_factory)
        self._factory = self._previous_factory = None
