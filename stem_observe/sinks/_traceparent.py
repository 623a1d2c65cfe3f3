"""Reading W3C ``traceparent`` headers quickly: the sampled trace id, the remote parent."""

from __future__ import annotations

import re
from typing import Any, Final

from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["remote_parent", "sampled_trace_id"]

_PROPAGATOR: Final = TraceContextTextMapPropagator()
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16

# The propagator's own grammar (lower-case hex only; later versions may append fields).
_TRACEPARENT: Final = re.compile(
    r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?[ \t]*$"
)


def _fields(value: object) -> tuple[str, str, int] | None:
    """``(trace id hex, span id hex, flags)`` of a valid W3C ``traceparent``, else ``None``."""
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    if trace_hex == _ZERO_TRACE or span_hex == _ZERO_SPAN:
        return None
    return trace_hex, span_hex, int(flags_hex, 16)


def sampled_trace_id(headers: Any) -> str | None:
    """The trace id (32 hex digits) of a valid, sampled ``traceparent`` header, or ``None``."""
    fields = _fields(headers.get("traceparent")) if headers else None
    return fields[0] if fields is not None and fields[2] & 1 else None


def remote_parent(headers: Any) -> Context | None:
    """A context whose current span is the remote parent named by ``traceparent``.

    A faster equivalent of ``TraceContextTextMapPropagator().extract`` for the common case;
    with a ``tracestate`` header present it defers to the propagator, which parses it.
    Returns ``None`` when there is no valid ``traceparent``.
    """
    if not headers:
        return None
    if "tracestate" in headers:
        context = _PROPAGATOR.extract(headers, context=Context())
        span_context = get_current_span(context).get_span_context()
        return context if span_context.is_valid else None
    fields = _fields(headers.get("traceparent"))
    if fields is None:
        return None
    trace_hex, span_hex, flags = fields
    parent = SpanContext(int(trace_hex, 16), int(span_hex, 16), is_remote=True,
                         trace_flags=TraceFlags(flags & 1))
    return set_span_in_context(NonRecordingSpan(parent), Context())
