"""Log correlation: ``task_id``, ``task_name``, ``trace_id`` and ``span_id`` on log records.

While a task runs in-process (between its prerun and postrun signals) a context variable
holds the task; every log record created then carries the task's IDs and the current span's
IDs. Outside a task the attributes are empty strings, so a format such as
``"%(task_id)s %(message)s"`` never fails.

Two ways to get them: :meth:`LogsSink.install_record_factory` (done by ``install()``) wraps
the logging record factory so every record has them; or add :class:`TaskContextFilter` to
your handlers. Either way a value passed with ``extra=`` wins over the bridge's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from opentelemetry import trace

from stem_observe import events as ev
from stem_observe.sinks._scopes import TASKS

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


def current_log_context() -> TaskLogContext | None:
    """The task running in this context, if any."""
    scope = TASKS.current()
    return None if scope is None else TaskLogContext(scope.task_id, scope.value, "")


class _RecordDict(dict[str, Any]):
    """A log record's ``__dict__`` whose task fields give way to ``extra=``.

    ``Logger.makeRecord`` refuses an ``extra`` key already present on the record, so with
    the fields always there, ``log.info("...", extra={"task_id": ...})`` would raise. These
    fields report themselves absent to that check, and the caller's value replaces ours.
    """

    __slots__ = ()

    def __contains__(self, key: object) -> bool:
        return key not in _FIELD_SET and dict.__contains__(self, key)


_FIELD_SET: Final = frozenset(LOG_FIELDS)


def _fields(record: logging.LogRecord) -> dict[str, str]:
    scope = TASKS.current()
    if scope is None:
        return dict.fromkeys(LOG_FIELDS, "")
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        trace_id = format(span_context.trace_id, "032x")
        span_id = format(span_context.span_id, "016x")
    else:
        trace_id = span_id = ""
    return {"task_id": scope.task_id, "task_name": scope.value,
            "trace_id": trace_id, "span_id": span_id}


class TaskContextFilter(logging.Filter):
    """A handler filter that adds the task and trace IDs to each record; it drops nothing.

    It reads what the logs sink tracks, so the bridge must be installed with ``logs=True``
    (use ``log_record_factory=False`` to rely on this filter alone). Values already on the
    record (from ``extra=``) are kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _fields(record).items():
            if not getattr(record, key, ""):
                record.__dict__[key] = value
        return True


class LogsSink:
    """Annotates log records with the in-process task of their context."""

    def __init__(self) -> None:
        self._previous_factory: Callable[..., logging.LogRecord] | None = None
        self._factory: Callable[..., logging.LogRecord] | None = None

    def handlers(self) -> dict[type[ev.Event], Callable[[Any], None]]:
        """None: the bridge tracks the in-process task (``_scopes.TASKS``); this sink reads it."""
        return {}

    def install_record_factory(self) -> None:
        """Wrap the logging record factory so every record carries the task fields."""
        if self._factory is not None:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            fields = _RecordDict(record.__dict__)
            fields.update(_fields(record))
            record.__dict__ = fields
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
