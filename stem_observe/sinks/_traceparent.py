"""Reading a W3C ``traceparent`` header without building an OpenTelemetry context."""

from __future__ import annotations

from typing import Any, Final

__all__ = ["sampled_trace_id"]

_INVALID_TRACE_ID: Final = "0" * 32


def sampled_trace_id(headers: Any) -> str | None:
    """The trace id of a valid, sampled W3C ``traceparent`` header, or ``None``."""
    if not headers:
        return None
    value = headers.get("traceparent")
    if not isinstance(value, str) or len(value) < 55:
        return None
    if value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    if len(value) > 55 and value[55] != "-":
        return None
    try:
        flags = int(value[53:55], 16)
        int(value[3:35], 16)
    except ValueError:
        return None
    trace_id = value[3:35].lower()
    if not flags & 1 or trace_id == _INVALID_TRACE_ID:
        return None
    return trace_id
