"""The fleet stream's record format (version 1): batches of event records per stream entry.

A stream entry has two fields, both text:

``v``
    the format version, ``"1"``; a consumer skips (and counts) versions it does not know;
``e``
    a compact JSON array of up to :data:`RECORDS_PER_ENTRY` records. Packing records keeps
    the cost per event on the worker small (one ``XADD`` costs redis-py about 30 µs to build
    and parse; a record in a packed entry well under 1 µs).

A record is a JSON object: ``k``, its kind (the event's signal name: ``task-succeeded``,
``worker-heartbeat`` …, or ``fleet-dropped``), and the event's dataclass fields that differ
from their defaults, by name. ``exception``, ``extras`` and ``in_process`` are never sent,
free text is cut to :data:`MAX_TEXT` characters (stack traces to :data:`MAX_STACKTRACE`),
and of the headers only the trace context travels, as ``tp``: the ``traceparent`` of the
worker's own span when it traced the task, else the message's. A decoded event carries it
as ``headers={"traceparent": tp}``, so exemplars and alert samples name the worker's trace.

A ``fleet-dropped`` record is ``{"k": "fleet-dropped", "w": worker, "n": count}``: ``count``
events that ``worker`` dropped since its previous report.

Decoding is strict about types (a wrong type is an error, not a guess) and lenient about
fields it does not know (a newer forwarder may add some). Every problem is a
:class:`WireError` with a bounded ``kind`` label; a bad record does not spoil the others in
its entry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, Final

from stem_observe import events as ev
from stem_observe import signals

__all__ = [
    "DROPPED_KIND",
    "KINDS",
    "MAX_TEXT",
    "RECORDS_PER_ENTRY",
    "VERSION",
    "DropReport",
    "WireError",
    "decode",
    "decode_record",
    "drops_record",
    "encode",
    "pack",
]

VERSION: Final = "1"
DROPPED_KIND: Final = "fleet-dropped"
MAX_TEXT: Final = 1024
MAX_STACKTRACE: Final = 4096
MAX_TRACEPARENT: Final = 128
RECORDS_PER_ENTRY: Final = 100
MAX_ENTRY_BYTES: Final = 4 * 1024 * 1024

#: The event types a worker produces, by wire kind (their signal names).
KINDS: Final[dict[str, type[ev.Event]]] = {
    signals.SIGNALS[cls].name: cls
    for cls in (
        ev.TaskPublished, ev.TaskReceived, ev.TaskPrerun, ev.TaskPostrun, ev.TaskRetry,
        ev.TaskSucceeded, ev.TaskFailed, ev.TaskRevoked, ev.TaskDeadLettered,
        ev.TaskHeartbeat, ev.WorkerReady, ev.WorkerStopping, ev.WorkerShutdown,
        ev.WorkerHeartbeat,
    )
}
_KIND_OF: Final[dict[type[ev.Event], str]] = {cls: kind for kind, cls in KINDS.items()}


class WireError(ValueError):
    """A stream entry that cannot be decoded; ``kind`` is a bounded label value
    (``version``, ``kind``, ``malformed``)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class DropReport:
    """A forwarder on ``worker`` dropped ``count`` events since its previous report."""

    worker: str
    count: int


# --------------------------------------------------------------------------- field codecs

_SKIP: Final = object()
Encoder = Callable[[Any], Any]
Decoder = Callable[[Any], Any]


def _bad(expected: str, value: Any) -> WireError:
    return WireError("malformed", f"expected {expected}, got {type(value).__name__}")


def _text(limit: int) -> tuple[Encoder, Decoder]:
    def enc(value: Any) -> Any:
        if not isinstance(value, str):
            value = str(value)
        return value if len(value) <= limit else value[:limit]

    def dec(value: Any) -> Any:
        if not isinstance(value, str):
            raise _bad("a string", value)
        return value

    return enc, dec


def _int_dec(value: Any) -> int:
    if type(value) is not int:
        raise _bad("an integer", value)
    return value


def _float_enc(value: Any) -> Any:
    return value if math.isfinite(value) else _SKIP


def _float_dec(value: Any) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise _bad("a finite number", value)
    return float(value)


def _bool_dec(value: Any) -> bool:
    if type(value) is not bool:
        raise _bad("a boolean", value)
    return value


def _state_dec(value: Any) -> str:
    if value not in ("succeeded", "failed", "retried", "revoked"):
        raise WireError("malformed", f"unknown task state {value!r}")
    return str(value)


def _strings_dec(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad("a list of strings", value)
    return tuple(value)


def _floats_enc(value: Any) -> Any:
    return [v for v in value if math.isfinite(v)]


def _floats_dec(value: Any) -> tuple[float, ...]:
    if not isinstance(value, list):
        raise _bad("a list of numbers", value)
    return tuple(_float_dec(v) for v in value)


def _loads_enc(value: Any) -> Any:
    return [[load.name, load.inflight] for load in value]


def _loads_dec(value: Any) -> tuple[ev.WorkerQueueLoad, ...]:
    if not isinstance(value, list):
        raise _bad("a list of queue loads", value)
    loads = []
    for item in value:
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                or type(item[1]) is not int):
            raise _bad("[queue, inflight]", item)
        loads.append(ev.WorkerQueueLoad(item[0], item[1]))
    return tuple(loads)


def _same(value: Any) -> Any:
    return value


def _optional(dec: Decoder) -> Decoder:
    def optional(value: Any) -> Any:
        return None if value is None else dec(value)

    return optional


_TEXT = _text(MAX_TEXT)
_CODECS: Final[dict[str, tuple[Encoder, Decoder] | None]] = {
    "str": _TEXT,
    "str | None": (_TEXT[0], _optional(_TEXT[1])),
    "int": (_same, _int_dec),
    "int | None": (_same, _optional(_int_dec)),
    "float": (_float_enc, _float_dec),
    "float | None": (_float_enc, _optional(_float_dec)),
    "bool": (_same, _bool_dec),
    "bool | None": (_same, _optional(_bool_dec)),
    "TaskState": (_same, _state_dec),
    "tuple[str, ...]": (list, _strings_dec),
    "tuple[float, ...]": (_floats_enc, _floats_dec),
    "tuple[WorkerQueueLoad, ...]": (_loads_enc, _loads_dec),
    # Not forwarded: live objects, free-form mappings, and what only the sender can know.
    "BaseException | None": None,
    "Mapping[str, object] | None": None,
    "Mapping[str, str] | None": None,  # headers: only the trace context, as "tp"
}
_NOT_SENT: Final = frozenset({"in_process"})
_SPECIAL: Final[dict[str, tuple[Encoder, Decoder]]] = {
    "stacktrace": (_text(MAX_STACKTRACE)[0], _optional(_text(MAX_STACKTRACE)[1])),
}


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    default: Any  # MISSING when required (or made by a factory)
    encode: Encoder
    decode: Decoder


def _fields_of(cls: type[ev.Event]) -> tuple[_Field, ...]:
    result = []
    for f in fields(cls):
        if f.name in _NOT_SENT:
            continue
        if not isinstance(f.type, str) or f.type not in _CODECS:
            raise TypeError(f"no fleet codec for {cls.__name__}.{f.name}: {f.type!r}")
        codec = _SPECIAL.get(f.name) or _CODECS[f.type]
        if codec is None:
            continue
        result.append(_Field(f.name, f.default, codec[0], codec[1]))
    return tuple(result)


_FIELDS: Final[dict[type[ev.Event], tuple[_Field, ...]]] = {
    cls: _fields_of(cls) for cls in KINDS.values()
}
_FACTORY_DEFAULTS: Final = frozenset({"occurred_at", "timestamp"})  # "now" when absent
_DUMPS: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


# --------------------------------------------------------------------------- encoding


def encode(event: ev.Event, traceparent: str | None = None) -> dict[str, Any]:
    """The record for ``event`` (a type in :data:`KINDS`), ready for :func:`pack`."""
    body: dict[str, Any] = {"k": _KIND_OF[type(event)]}
    for f in _FIELDS[type(event)]:
        value = getattr(event, f.name)
        if value is None or value == f.default:
            continue
        value = f.encode(value)
        if value is not _SKIP:
            body[f.name] = value
    if traceparent is not None and len(traceparent) <= MAX_TRACEPARENT:
        body["tp"] = traceparent
    return body


def drops_record(worker: str, count: int) -> dict[str, Any]:
    """The record that reports ``count`` events dropped on ``worker``."""
    return {"k": DROPPED_KIND, "w": worker[:MAX_TEXT], "n": count}


def pack(records: list[dict[str, Any]]) -> dict[str, str]:
    """The stream entry's fields for ``records`` (at most :data:`RECORDS_PER_ENTRY`)."""
    return {"v": VERSION, "e": _DUMPS(records)}


# --------------------------------------------------------------------------- decoding


def _field(entry: Mapping[Any, Any], name: str) -> str:
    value = entry.get(name.encode())
    if value is None:
        value = entry.get(name)
    if value is None:
        raise WireError("malformed", f"no {name!r} field")
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError("malformed", f"field {name!r} is not UTF-8") from exc
    if not isinstance(value, str):
        raise WireError("malformed", f"field {name!r} is not text")
    return value


def decode(entry: Mapping[Any, Any]) -> list[ev.Event | DropReport | WireError]:
    """The records of a stream entry (fields with ``bytes`` or ``str`` keys), each decoded
    or a :class:`WireError`. Raises :class:`WireError` when the entry as a whole is bad."""
    version = _field(entry, "v")
    if version != VERSION:
        raise WireError("version", f"unknown record version {version[:16]!r}")
    raw = _field(entry, "e")
    if len(raw) > MAX_ENTRY_BYTES:
        raise WireError("malformed", f"entry of {len(raw)} characters is too large")
    try:
        records = json.loads(raw)
    except ValueError as exc:
        raise WireError("malformed", f"invalid JSON: {exc}") from None
    if not isinstance(records, list):
        raise WireError("malformed", "entry body is not a JSON array")
    results: list[ev.Event | DropReport | WireError] = []
    for record in records:
        try:
            results.append(decode_record(record))
        except WireError as exc:
            results.append(exc)
    return results


def decode_record(body: Any) -> ev.Event | DropReport:
    """One decoded record (a JSON object)."""
    if not isinstance(body, dict):
        raise WireError("malformed", "record is not a JSON object")
    kind = body.get("k")
    if not isinstance(kind, str):
        raise WireError("malformed", "record without a kind")
    cls = KINDS.get(kind)
    if cls is None:
        if kind != DROPPED_KIND:
            raise WireError("kind", f"unknown record kind {kind[:64]!r}")
        worker, count = body.get("w"), body.get("n")
        if not isinstance(worker, str) or type(count) is not int or count < 0:
            raise WireError("malformed", "drop report needs a worker and a count")
        return DropReport(worker, count)
    kwargs: dict[str, Any] = {}
    for f in _FIELDS[cls]:
        if f.name in body:
            try:
                kwargs[f.name] = f.decode(body[f.name])
            except WireError as exc:
                raise WireError("malformed", f"{kind}.{f.name}: {exc}") from None
        elif f.default is MISSING and f.name not in _FACTORY_DEFAULTS:
            raise WireError("malformed", f"{kind} without {f.name}")
    traceparent = body.get("tp")
    if traceparent is not None:
        if not isinstance(traceparent, str) or len(traceparent) > MAX_TRACEPARENT:
            raise WireError("malformed", f"{kind}.tp: not a short string")
        kwargs["headers"] = {"traceparent": traceparent}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a field combination the event refuses
        raise WireError("malformed", f"{kind}: {exc}") from None
