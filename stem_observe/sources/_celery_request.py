"""Reading Celery's request, task and delivery info leniently: a missing or odd field is
a default, never an exception in the worker. A plain Celery request is read from its
instance dict once per signal (:func:`_fields_of`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

try:
    from celery.app.task import Context as _PLAIN_REQUEST
except ImportError:  # pragma: no cover - the plugin is only connected with Celery installed
    _PLAIN_REQUEST = None

DEFAULT_QUEUE: Final = "celery"


def _field(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name, None)
    except Exception:  # a property that raises
        return None


class _Fields:
    """``.get(name)`` over an object's attributes, leniently (see :func:`_fields_of`)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def get(self, name: str) -> Any:
        return _field(self.obj, name)


def _fields_of(request: Any) -> Any:
    """Something whose ``.get(name)`` reads a request's field, ``None`` when it is missing.

    A plain Celery request keeps its fields in its instance dict, behind class defaults
    that are ``None`` or ``0`` (what the readers here default to anyway): the dict itself
    is read, one lookup per field and no exception for a missing one. A mapping (message
    headers) is its own reader; anything else is read attribute by attribute.
    """
    if type(request) is _PLAIN_REQUEST:
        return request.__dict__
    if isinstance(request, Mapping):
        return request
    return _Fields(request)


def _header_in(fields: Any, name: str) -> Any:
    """A message header as the worker sees it: a request field, or in its ``headers``."""
    value = fields.get(name)
    if value is None:
        nested = fields.get("headers")
        if nested is not None and isinstance(nested, Mapping):
            value = nested.get(name)
    return value


def _header(request: Any, name: str) -> Any:
    """A message header as the worker sees it: a request field, or in ``request.headers``
    (or a key, when ``request`` is the headers mapping itself)."""
    return _header_in(_fields_of(request), name)


def _epoch(value: Any) -> float | None:
    """Epoch seconds from a number, a numeric string, an ISO 8601 string or a datetime."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str) and value:
        try:
            return float(value)
        except ValueError:
            pass
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None
    return None


def _trace_headers(request: Any) -> dict[str, str] | None:
    return _trace_headers_in(_fields_of(request))


def _trace_headers_in(fields: Any) -> dict[str, str] | None:
    parent = _header_in(fields, "traceparent")
    if not isinstance(parent, str):
        return None
    state = _header_in(fields, "tracestate")
    if isinstance(state, str) and state:
        return {"traceparent": parent, "tracestate": state}
    return {"traceparent": parent}


def _queue(delivery_info: Any, task: Any = None) -> str:
    if isinstance(delivery_info, Mapping):
        for key in ("routing_key", "queue"):
            value = delivery_info.get(key)
            if isinstance(value, str) and value:
                return value
    if task is not None:
        fallback = _task_queue(task)
        if isinstance(fallback, str) and fallback:
            return fallback
    return DEFAULT_QUEUE


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _str(value: Any, default: str) -> str:
    return value if isinstance(value, str) and value else default


def _task_queue(task: Any) -> Any:
    """The queue a task goes to when its delivery info does not say (eager runs)."""
    queue = _field(task, "queue")
    if isinstance(queue, str) and queue:
        return queue
    return _field(_field(_field(task, "app"), "conf"), "task_default_queue")


def _max_retries(task: Any) -> int:
    value = _field(task, "max_retries")
    return -1 if value is None else _int(value)
