"""The task span: a recording OpenTelemetry span that costs the worker a quarter of the SDK's.

The SDK's ``Span`` is general: it validates and copies every attribute into a locked
``BoundedAttributes``, takes a lock for each change, and starts through the tracer's
configurator and self-metrics. Inside a worker that costs about 200k instructions per task,
more than the rest of the bridge together (``bench/README.md``). The tracing sink knows the
shape of its ``stem.consume`` spans (a few string and number attributes, set from one
thread), so with an SDK ``TracerProvider`` it records them in :class:`TaskSpan` instead:

* the provider's sampler decides, its id generator makes the ids, its span limits apply to
  what user code sets on the span, and its span processors receive the span (``on_start``
  at start, a ``ReadableSpan`` at ``on_end``), so exporters see what the SDK would give them;
* attributes live in a plain dict; only values from outside (user code calling
  ``set_attribute`` on the current span) are cleaned as the SDK cleans them.

A :class:`TaskSpan` is a full API ``Span``: made current, it parents the spans the task
creates, and user code can set attributes, add events, record exceptions and set its status.
With any other tracer provider (none set, a vendor's) spans are started through the tracer
as usual.
"""

from __future__ import annotations

import inspect
import logging
import traceback
from collections.abc import Callable, Mapping
from time import time_ns
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.util import types

__all__ = ["SpanStarter", "TaskSpan"]

logger = logging.getLogger("stem_observe.sinks.tracing")

_PLAIN: Final = (str, int, float, bool)
_UNSET: Final = Status(StatusCode.UNSET)
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
# ReadableSpan's parameters in the order this module passes them by position (a dozen
# keyword arguments per span cost more than the span's fields); any other SDK gets keywords.
_READABLE_ORDER: Final = ("name", "context", "parent", "resource", "attributes", "events",
                          "links", "kind", "instrumentation_info", "status", "start_time",
                          "end_time", "instrumentation_scope")
_READABLE_BY_POSITION: Final = tuple(
    inspect.signature(ReadableSpan.__init__).parameters)[1:] == _READABLE_ORDER
_NOT_SAMPLED: Final = TraceFlags(TraceFlags.DEFAULT)
_RANDOM_TRACE_ID: Final = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)


class _Recorder:
    """What the spans of one SDK tracer share: where they go and the limits they obey."""

    __slots__ = ("enabled", "id_generator", "limits", "max_attributes", "on_end", "on_ending",
                 "on_start", "random_ids", "resource", "sampler", "scope")

    def __init__(self, tracer: SdkTracer, scope: InstrumentationScope) -> None:
        self.sampler = tracer.sampler
        self.resource = tracer.resource
        processor = tracer.span_processor
        self.on_start = processor.on_start
        self.on_ending: Callable[[Any], None] | None = getattr(processor, "_on_ending", None)
        self.on_end = processor.on_end
        self.id_generator = tracer.id_generator
        limits = getattr(tracer, "_span_limits", None)
        self.limits: SpanLimits = limits if isinstance(limits, SpanLimits) else SpanLimits()
        count = self.limits.max_span_attributes
        self.max_attributes = count if count is not None else 1 << 30
        self.scope = getattr(tracer, "_instrumentation_scope", None) or scope
        is_random = getattr(self.id_generator, "is_trace_id_random", None)
        self.random_ids = bool(is_random()) if callable(is_random) else False
        # The tracer's configurator may switch it off and on: ask it at each start.
        self.enabled: Callable[[], bool] = getattr(tracer, "_is_enabled", _always)


def _always() -> bool:
    return True


class TaskSpan(Span):
    """A recording span whose attributes are a plain dict; ended into a ``ReadableSpan``."""

    __slots__ = ("_attributes", "_context", "_dropped", "_end_time", "_events", "_kind",
                 "_name", "_parent", "_recorder", "_start_time", "_status")

    def __init__(self, recorder: _Recorder, name: str, context: SpanContext,  # noqa: PLR0917
                 parent: SpanContext | None, kind: SpanKind, attributes: dict[str, Any],
                 start_time: int) -> None:
        # Positional: a span per task, and keyword arguments cost more than the assignments.
        self._recorder = recorder
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes = attributes
        self._dropped = 0
        self._events: list[Event] | None = None
        self._status = _UNSET
        self._start_time = start_time
        self._end_time: int | None = None

    # ----------------------------------------------------------------- what the SDK reads

    @property
    def name(self) -> str:
        return self._name

    @property
    def context(self) -> SpanContext:
        return self._context

    @property
    def kind(self) -> SpanKind:
        return self._kind

    @property
    def parent(self) -> SpanContext | None:
        return self._parent

    @property
    def attributes(self) -> Mapping[str, Any]:
        return self._attributes

    @property
    def start_time(self) -> int:
        return self._start_time

    @property
    def end_time(self) -> int | None:
        return self._end_time

    @property
    def resource(self) -> Any:
        return self._recorder.resource

    @property
    def instrumentation_scope(self) -> InstrumentationScope:
        return self._recorder.scope

    # ----------------------------------------------------------------- the API

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        if self._end_time is not None:
            return
        attributes = self._attributes
        if key not in attributes and len(attributes) >= self._recorder.max_attributes:
            self._dropped += 1
            return
        if type(value) in _PLAIN and isinstance(key, str) and key:
            limit = self._recorder.limits.max_attribute_length
            if limit is not None and type(value) is str and len(value) > limit:
                value = value[:limit]
            attributes[key] = value
            return
        cleaned = _clean(key, value, self._recorder.limits.max_attribute_length)
        if cleaned is not None:
            attributes[key] = cleaned

    def set_attributes(self, attributes: Mapping[str, types.AttributeValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(self, name: str, attributes: types.Attributes = None,
                  timestamp: int | None = None) -> None:
        if self._end_time is not None:
            return
        limits = self._recorder.limits
        events = self._events
        if events is None:
            events = self._events = []
        if limits.max_events is not None and len(events) >= limits.max_events:
            return
        bounded = BoundedAttributes(limits.max_event_attributes, attributes,
                                    max_value_len=limits.max_attribute_length, immutable=True)
        events.append(Event(name, bounded, timestamp if timestamp is not None else time_ns()))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        logger.debug("links added after start are not recorded on task spans")

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._end_time is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            self._status = status
        else:
            self._status = Status(status, description)

    def record_exception(self, exception: BaseException, attributes: types.Attributes = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        kind = type(exception)
        module = kind.__module__
        qualname = kind.__qualname__
        recorded: dict[str, Any] = {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins"
            else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            recorded.update(attributes)
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = end_time if end_time is not None else time_ns()
        recorder = self._recorder
        if recorder.on_ending is not None:
            recorder.on_ending(self)
        attributes: Any = self._attributes
        if self._dropped:
            attributes = BoundedAttributes(len(attributes), attributes, immutable=True)
            attributes.dropped = self._dropped
        if _READABLE_BY_POSITION:
            readable = ReadableSpan(
                self._name, self._context, self._parent, recorder.resource, attributes,
                self._events or (), (), self._kind, None, self._status, self._start_time,
                self._end_time, recorder.scope)
        else:
            readable = ReadableSpan(
                name=self._name, context=self._context, parent=self._parent,
                resource=recorder.resource, attributes=attributes, events=self._events or (),
                kind=self._kind, status=self._status, start_time=self._start_time,
                end_time=self._end_time, instrumentation_scope=recorder.scope)
        recorder.on_end(readable)

    def __repr__(self) -> str:
        return (f"TaskSpan(name={self._name!r}, trace_id=0x{self._context.trace_id:032x}, "
                f"span_id=0x{self._context.span_id:016x})")


def _clean(key: str, value: Any, limit: int | None) -> Any:
    """``value`` as the SDK would keep it, or ``None`` when it would drop it (and log why)."""
    return BoundedAttributes(None, {key: value}, max_value_len=limit).get(key)


class SpanStarter:
    """Starts the tracing sink's spans: :class:`TaskSpan` with an SDK tracer, else the tracer's
    own ``start_span``."""

    def __init__(self, tracer: trace.Tracer, scope: InstrumentationScope) -> None:
        self._tracer = tracer
        self._scope = scope
        self._recorder: _Recorder | None = None
        self._resolve()

    def _resolve(self) -> _Recorder | None:
        tracer = self._tracer
        if isinstance(tracer, trace.ProxyTracer):  # the global provider, maybe set later
            tracer = tracer._tracer
        if isinstance(tracer, SdkTracer):
            self._recorder = _Recorder(tracer, self._scope)
        return self._recorder

    def start(self, name: str, parent: Context | None, kind: SpanKind,
              attributes: dict[str, Any], start_time: int) -> Span:
        """A started span; ``parent=None`` nests it under the current span.

        ``attributes`` must be plain values (str, int, float, bool); the dict is kept.
        """
        recorder = self._recorder or self._resolve()
        if recorder is None:
            return self._tracer.start_span(name, context=parent, kind=kind,
                                           attributes=attributes, start_time=start_time)
        parent_context = trace.get_current_span(parent).get_span_context()
        if not recorder.enabled():
            return NonRecordingSpan(parent_context)
        parent_span: SpanContext | None = parent_context
        if parent_context.is_valid:
            trace_id = parent_context.trace_id
            random_ids = getattr(parent_context.trace_flags, "random_trace_id", False)
        else:
            parent_span = None
            trace_id = recorder.id_generator.generate_trace_id()
            random_ids = recorder.random_ids
        result = recorder.sampler.should_sample(parent, trace_id, name, kind, attributes, ())
        flags = _SAMPLED if result.decision is Decision.RECORD_AND_SAMPLE else _NOT_SAMPLED
        if random_ids:
            flags = TraceFlags(flags | _RANDOM_TRACE_ID)
        context = SpanContext(trace_id, recorder.id_generator.generate_span_id(), False, flags,
                              result.trace_state)  # (is_remote, trace_flags, trace_state)
        if result.decision is Decision.DROP:
            return NonRecordingSpan(context)
        if result.attributes is not None:  # what the sampler kept or added
            attributes = dict(result.attributes)
        span = TaskSpan(recorder, name, context, parent_span, kind, attributes, start_time)
        recorder.on_start(span, parent)  # type: ignore[arg-type]  # SDK-typed
        return span
