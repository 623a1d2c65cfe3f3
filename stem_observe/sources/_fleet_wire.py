"""The fleet stream's record format (version 3): batches of event records per stream entry.

A stream entry has two fields:

``v``
    the format version, ``"3"``; a consumer reads versions 3, 2 and 1 (a fleet in a rolling
    upgrade has workers of each; upgrade ``serve`` first) and skips (and counts) versions it
    does not know;
``e``
    a MessagePack array of up to :data:`RECORDS_PER_ENTRY` records. Packing records keeps
    the cost per event on the worker small (one ``XADD`` costs redis-py about 30 µs to build
    and parse; a record in a packed entry about 1 µs).

A version 3 record is ``[kind, tp, fields]``: its kind (the event's signal name:
``task-succeeded``, ``worker-heartbeat`` …, or ``fleet-dropped``), the trace context, and an
array of the event's forwarded fields by position in the kind's :func:`layout` (its
dataclass field order), ``nil`` for a field at its default. MessagePack writes numbers as
binary: times keep every bit and cost the worker nothing to format (a float's shortest
decimal form, what JSON needs, was a third of the forwarding cost of version 2). The kinds
of a task's ordinary lifecycle (:data:`RAW_KINDS`: published, received, prerun, succeeded,
postrun) go out as the forwarder read them; the worker cuts text and converts containers
only for the others (free text, queue loads). ``exception``, ``extras`` and ``in_process``
are never sent, free text is cut to :data:`MAX_TEXT` characters (stack traces to
:data:`MAX_STACKTRACE`), and of the headers only the trace context travels, as ``tp``: the
``traceparent`` of the worker's own span when it traced the task, else the message's. A
decoded event carries it as ``headers={"traceparent": tp}``, so exemplars and alert samples
name the worker's trace.

A ``fleet-dropped`` record is ``["fleet-dropped", nil, [worker, count]]``: ``count`` events
that ``worker`` dropped since its previous report.

Versions 2 and 1 were JSON text. A version 2 record was ``[kind, tp, field, field, …]``
(the same layouts, flattened, trailing nulls left out; drops ``["fleet-dropped", worker,
count]``); a version 1 record was an object: ``k`` (the kind), ``tp``, and the fields that
differ from their defaults by name (``{"k": "fleet-dropped", "w": worker, "n": count}``).
:func:`encode_v2`, :func:`pack_v2`, :func:`encode_v1` and :func:`pack_v1` still write
them, for tests.

Decoding is strict about types (a wrong type is an error, not a guess), lenient about fields
it does not know (a newer forwarder may append some), and bounds what it keeps whoever wrote
it: text longer than its limit is cut, non-finite numbers and an over-long ``tp`` count as
absent. Every problem is a :class:`WireError` with a bounded ``kind`` label; a bad record
does not spoil the others in its entry.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from math import isfinite
from typing import Any, Final

import msgpack
from redis.typing import EncodableT, FieldT

from stem_observe import events as ev
from stem_observe import signals

__all__ = [
    "DROPPED_KIND",
    "KINDS",
    "MAX_ENTRY_BYTES",
    "MAX_TEXT",
    "RAW_KINDS",
    "READERS",
    "RECORDS_PER_ENTRY",
    "VERSION",
    "VERSIONS",
    "VERSION_1",
    "VERSION_2",
    "DropReport",
    "Entry",
    "Record",
    "WireError",
    "decode",
    "decode_record",
    "decode_record_v1",
    "decode_record_v2",
    "drops_record",
    "encode",
    "encode_v1",
    "encode_v2",
    "layout",
    "pack",
    "pack_body",
    "pack_v1",
    "pack_v2",
    "prepare",
]

VERSION: Final = "3"
VERSION_2: Final = "2"
VERSION_1: Final = "1"
#: The versions a consumer reads.
VERSIONS: Final = (VERSION, VERSION_2, VERSION_1)
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
        return value if len(value) <= limit else value[:limit]

    return enc, dec


def _int_dec(value: Any) -> int:
    if type(value) is not int:
        raise _bad("an integer", value)
    return value


def _float_enc(value: Any) -> Any:
    return value if math.isfinite(value) else _SKIP


def _float_dec(value: Any) -> float:
    try:
        if type(value) in (int, float) and math.isfinite(value):
            return float(value)
    except OverflowError:  # an integer no float holds
        pass
    raise _bad("a finite number", value)


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
_STACKTRACE = _text(MAX_STACKTRACE)


@dataclass(frozen=True, slots=True)
class _Codec:
    """How one field type travels. ``encode`` serves v1; v3 and v2 records hold the
    attribute as it is, after the checks ``limit`` (cut text) and ``finite`` (non-finite
    numbers are left out), or passed through ``convert`` for containers the formats cannot
    take as they are."""

    encode: Encoder
    decode: Decoder
    limit: int | None = None
    finite: bool = False
    convert: Encoder | None = None


_CODECS: Final[dict[str, _Codec | None]] = {
    "str": _Codec(*_TEXT, limit=MAX_TEXT),
    "str | None": _Codec(_TEXT[0], _optional(_TEXT[1]), limit=MAX_TEXT),
    "int": _Codec(_same, _int_dec),
    "int | None": _Codec(_same, _optional(_int_dec)),
    "float": _Codec(_float_enc, _float_dec, finite=True),
    "float | None": _Codec(_float_enc, _optional(_float_dec), finite=True),
    "bool": _Codec(_same, _bool_dec),
    "bool | None": _Codec(_same, _optional(_bool_dec)),
    "TaskState": _Codec(_same, _state_dec),
    "tuple[str, ...]": _Codec(list, _strings_dec),  # json writes a tuple as an array
    "tuple[float, ...]": _Codec(_floats_enc, _floats_dec, convert=_floats_enc),
    "tuple[WorkerQueueLoad, ...]": _Codec(_loads_enc, _loads_dec, convert=_loads_enc),
    # Not forwarded: live objects, free-form mappings, and what only the sender can know.
    "BaseException | None": None,
    "Mapping[str, object] | None": None,
    "Mapping[str, str] | None": None,  # headers: only the trace context, as "tp"
}
_NOT_SENT: Final = frozenset({"in_process"})
_SPECIAL: Final[dict[str, _Codec]] = {
    "stacktrace": _Codec(_STACKTRACE[0], _optional(_STACKTRACE[1]), limit=MAX_STACKTRACE),
}


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    default: Any  # MISSING when required (or made by a factory)
    codec: _Codec


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
        result.append(_Field(f.name, f.default, codec))
    return tuple(result)


_FIELDS: Final[dict[type[ev.Event], tuple[_Field, ...]]] = {
    cls: _fields_of(cls) for cls in KINDS.values()
}
_FACTORY_DEFAULTS: Final = frozenset({"occurred_at", "timestamp"})  # "now" when absent
_DUMPS: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False,
                                 check_circular=False).encode
# Text fields that name things rather than describe them: a task's lifecycle kinds hold
# only these, and travel uncut (the consumer cuts what is over the limit).
_IDENTIFIERS: Final = frozenset({"task_id", "task_name", "queue", "worker_id"})


@dataclass(frozen=True, slots=True)
class _Layout:
    """A kind's fields: what to read off the event and which positions need a check."""

    kind: str
    fields: tuple[_Field, ...]
    get: Callable[[Any], tuple[Any, ...]]
    text: tuple[tuple[int, int], ...]  # (position, limit)
    floats: tuple[int, ...]
    convert: tuple[tuple[int, Encoder], ...]
    required: tuple[str, ...]
    raw: bool  # what the getter reads goes on the wire as it is


def _layout(cls: type[ev.Event]) -> _Layout:
    fields_ = _FIELDS[cls]
    names = [f.name for f in fields_]
    getter = operator.attrgetter(*names)
    get = getter if len(names) > 1 else lambda event: (getter(event),)
    at = {f.name: position for position, f in enumerate(fields_)}
    text = tuple((at[f.name], f.codec.limit) for f in fields_ if f.codec.limit is not None)
    convert = tuple((at[f.name], f.codec.convert) for f in fields_
                    if f.codec.convert is not None)
    return _Layout(
        kind=_KIND_OF[cls],
        fields=fields_,
        get=get,
        text=text,
        floats=tuple(at[f.name] for f in fields_ if f.codec.finite),
        convert=convert,
        required=tuple(f.name for f in fields_
                       if f.default is MISSING and f.name not in _FACTORY_DEFAULTS),
        raw=not convert and all(fields_[position].name in _IDENTIFIERS
                                for position, _ in text),
    )


#: The positional layout of each kind. It is the order of the event's dataclass fields: a
#: field added to an event must come last in the layouts it joins (the unit tests pin each
#: layout), so that older consumers ignore it rather than misread it.
_LAYOUTS: Final[dict[type[ev.Event], _Layout]] = {cls: _layout(cls) for cls in KINDS.values()}
_LAYOUT_OF_KIND: Final[dict[str, _Layout]] = {lay.kind: lay for lay in _LAYOUTS.values()}
#: The kinds whose fields travel as the forwarder read them.
RAW_KINDS: Final = frozenset(lay.kind for lay in _LAYOUTS.values() if lay.raw)


def layout(kind: str) -> tuple[str, ...]:
    """The field names of a ``kind`` record, in the order its fields travel."""
    return tuple(f.name for f in _LAYOUT_OF_KIND[kind].fields)


# --------------------------------------------------------------------------- encoding


def _cut(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else str(value)
    return text[:limit]


def _valid(text: str) -> str:
    """``text`` as UTF-8 can carry it (a lone surrogate, as from undecodable bytes, becomes
    ``?``)."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _prepared(lay: _Layout, values: tuple[Any, ...], *, clean: bool = False,
              ) -> tuple[Any, ...]:
    """``values`` with text cut (and made text; ``clean``: valid UTF-8), non-finite numbers
    left out and containers converted."""
    fixed = list(values)
    for position, limit in lay.text:
        value = fixed[position]
        if value is not None and (value.__class__ is not str or len(value) > limit):
            value = fixed[position] = _cut(value, limit)
        if clean and value is not None:
            fixed[position] = _valid(value)
    for position in lay.floats:
        value = fixed[position]
        if value is not None and not isfinite(value):
            fixed[position] = None
    for position, convert in lay.convert:
        value = fixed[position]
        fixed[position] = convert(value) if value else None
    return tuple(fixed)


def _reader(lay: _Layout) -> Callable[[Any], tuple[Any, ...]]:
    if lay.raw:
        return lay.get
    get = lay.get
    return lambda event: _prepared(lay, get(event))


#: For each event type, its kind and a reader of its forwarded fields, ready for the wire
#: (one C call for :data:`RAW_KINDS`): a forwarder keeps ``(kind, traceparent, fields)`` of
#: an event, not the event, and packs those records as they are. Tuples of strings and
#: numbers are untracked by the garbage collector at its first pass; a queue of events or
#: lists is work for every pass.
READERS: Final[dict[type[ev.Event], tuple[str, Callable[[Any], tuple[Any, ...]]]]] = {
    cls: (lay.kind, _reader(lay)) for cls, lay in _LAYOUTS.items()
}

Record = tuple[str, str | None, tuple[Any, ...]]
#: A stream entry's fields, as ``XADD`` takes them.
Entry = dict[FieldT, EncodableT]


def prepare(kind: str, traceparent: str | None, values: tuple[Any, ...], *,
            clean: bool = False) -> Record:
    """A record whose every field is within the limits a consumer keeps; with ``clean``,
    its text is valid UTF-8 too. What a forwarder sends for a queued record that cannot be
    packed as it is (text that is not text, an entry over :data:`MAX_ENTRY_BYTES`)."""
    if traceparent is not None and (traceparent.__class__ is not str
                                    or len(traceparent) > MAX_TRACEPARENT):
        traceparent = None
    elif traceparent is not None and clean:
        traceparent = _valid(traceparent)
    return kind, traceparent, _prepared(_LAYOUT_OF_KIND[kind], values, clean=clean)


def encode(event: ev.Event, traceparent: str | None = None) -> Record:
    """The version 3 record for ``event`` (a type in :data:`KINDS`), ready for :func:`pack`:
    ``(kind, tp, fields)`` in the kind's :func:`layout`, ``None`` for a field at its
    default."""
    kind, _read = READERS[type(event)]
    return prepare(kind, traceparent, _LAYOUTS[type(event)].get(event))


def drops_record(worker: str, count: int) -> Record:
    """The record that reports ``count`` events dropped on ``worker``."""
    return DROPPED_KIND, None, (_valid(worker[:MAX_TEXT]), count)


def pack_body(records: Sequence[Sequence[Any]]) -> bytes:
    """The ``e`` field of a version 3 entry holding ``records`` (at most
    :data:`RECORDS_PER_ENTRY`).

    Raises ``TypeError`` or ``OverflowError`` when a value has no MessagePack form (an
    object, an integer beyond 64 bits), ``ValueError`` when the entry would be larger than a
    consumer reads (:data:`MAX_ENTRY_BYTES`).
    """
    data: bytes = msgpack.packb(records)
    if len(data) > MAX_ENTRY_BYTES:
        raise ValueError(f"an entry of {len(data)} bytes is larger than {MAX_ENTRY_BYTES}")
    return data


def pack(records: Sequence[Sequence[Any]]) -> Entry:
    """The stream entry's fields for ``records``; raises as :func:`pack_body` does."""
    return {"v": VERSION, "e": pack_body(records)}


def encode_v2(event: ev.Event, traceparent: str | None = None) -> list[Any]:
    """The version 2 record for ``event``: what workers before version 3 sent."""
    kind, tp, values = encode(event, traceparent)
    record = [kind, tp, *values]
    while record[-1] is None:
        record.pop()
    return record


def pack_v2(records: list[list[Any]]) -> dict[str, str]:
    """A version 2 stream entry, as workers before version 3 wrote them."""
    return {"v": VERSION_2, "e": _DUMPS(records)}


def encode_v1(event: ev.Event, traceparent: str | None = None) -> dict[str, Any]:
    """The version 1 record for ``event``: what workers before version 2 sent."""
    body: dict[str, Any] = {"k": _KIND_OF[type(event)]}
    for f in _FIELDS[type(event)]:
        value = getattr(event, f.name)
        if value is None or value == f.default:
            continue
        value = f.codec.encode(value)
        if value is not _SKIP:
            body[f.name] = value
    if traceparent is not None and len(traceparent) <= MAX_TRACEPARENT:
        body["tp"] = traceparent
    return body


def pack_v1(records: list[dict[str, Any]]) -> dict[str, str]:
    """A version 1 stream entry, as workers before version 2 wrote them."""
    return {"v": VERSION_1, "e": _DUMPS(records)}


# --------------------------------------------------------------------------- decoding


def _value(entry: Mapping[Any, Any], name: str) -> Any:
    value = entry.get(name.encode())
    if value is None:
        value = entry.get(name)
    if value is None:
        raise WireError("malformed", f"no {name!r} field")
    return value


def _text_field(entry: Mapping[Any, Any], name: str) -> str:
    value = _value(entry, name)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError("malformed", f"field {name!r} is not UTF-8") from exc
    if not isinstance(value, str):
        raise WireError("malformed", f"field {name!r} is not text")
    return value


def _records(version: str, entry: Mapping[Any, Any]) -> Any:
    if version == VERSION:
        raw = _value(entry, "e")
        if not isinstance(raw, bytes):
            raise WireError("malformed", "field 'e' is not binary")
    else:
        raw = _text_field(entry, "e")
    if len(raw) > MAX_ENTRY_BYTES:
        raise WireError("malformed", f"entry of {len(raw)} bytes is too large")
    if version == VERSION:
        try:
            return msgpack.unpackb(raw, raw=False, strict_map_key=True, timestamp=0)
        except Exception as exc:  # msgpack raises several types for bad input
            raise WireError("malformed", f"invalid MessagePack: {exc}") from None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise WireError("malformed", f"invalid JSON: {exc}") from None


def decode(entry: Mapping[Any, Any]) -> list[ev.Event | DropReport | WireError]:
    """The records of a stream entry (fields with ``bytes`` or ``str`` keys), each decoded
    or a :class:`WireError`. Raises :class:`WireError` when the entry as a whole is bad.
    Reads versions 3, 2 and 1 (a fleet being upgraded has workers of each)."""
    version = _text_field(entry, "v")
    if version not in VERSIONS:
        raise WireError("version", f"unknown record version {version[:16]!r}")
    records = _records(version, entry)
    if not isinstance(records, list):
        raise WireError("malformed", "entry body is not an array")
    decode_one = _DECODERS[version]
    results: list[ev.Event | DropReport | WireError] = []
    for record in records:
        try:
            results.append(decode_one(record))
        except WireError as exc:
            results.append(exc)
    return results


def _drop_report(worker: Any, count: Any) -> DropReport:
    if not isinstance(worker, str) or type(count) is not int or count < 0:
        raise WireError("malformed", "drop report needs a worker and a count")
    return DropReport(worker[:MAX_TEXT], count)


def _unknown(kind: Any) -> WireError:
    if not isinstance(kind, str):
        return WireError("malformed", "record without a kind")
    return WireError("kind", f"unknown record kind {kind[:64]!r}")


def _field_error(kind: str, f: _Field, exc: WireError) -> WireError:
    return WireError("malformed", f"{kind}.{f.name}: {exc}")


def _absent(value: Any) -> bool:
    return value is None or (value.__class__ is float and not isfinite(value))


def _positional(lay: _Layout, values: Sequence[Any]) -> dict[str, Any]:
    """The keyword arguments of ``lay``'s event from positional ``values``. Positions past
    the layout (a newer forwarder's fields) are ignored; ``None`` is the field's default."""
    kwargs: dict[str, Any] = {}
    for f, value in zip(lay.fields, values, strict=False):  # newer: longer
        if not _absent(value):
            try:
                kwargs[f.name] = f.codec.decode(value)
            except WireError as exc:
                raise _field_error(lay.kind, f, exc) from None
    for name in lay.required:
        if name not in kwargs:
            raise WireError("malformed", f"{lay.kind} without {name}")
    return kwargs


def _make(cls: type[ev.Event], kind: str, kwargs: dict[str, Any], traceparent: Any,
          ) -> ev.Event:
    if traceparent is not None:
        if not isinstance(traceparent, str):
            raise WireError("malformed", f"{kind}.tp: not a string")
        if len(traceparent) <= MAX_TRACEPARENT:  # longer: no trace context anyone sends
            kwargs["headers"] = {"traceparent": traceparent}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a field combination the event refuses
        raise WireError("malformed", f"{kind}: {exc}") from None


def decode_record(body: Any) -> ev.Event | DropReport:
    """One decoded version 3 record: ``[kind, tp, fields]``."""
    if not isinstance(body, list) or len(body) < 3 or not isinstance(body[2], list):
        raise WireError("malformed", "record is not [kind, tp, fields]")
    kind, traceparent, values = body[0], body[1], body[2]
    lay = _LAYOUT_OF_KIND.get(kind) if isinstance(kind, str) else None
    if lay is None:
        if kind != DROPPED_KIND:
            raise _unknown(kind)
        return _drop_report(*[*values, None, None][:2])
    return _make(KINDS[kind], kind, _positional(lay, values), traceparent)


def decode_record_v2(body: Any) -> ev.Event | DropReport:
    """One decoded version 2 record (a JSON array ``[kind, tp, field, …]``)."""
    if not isinstance(body, list) or not body:
        raise WireError("malformed", "record is not a non-empty JSON array")
    kind = body[0]
    lay = _LAYOUT_OF_KIND.get(kind) if isinstance(kind, str) else None
    if lay is None:
        if kind != DROPPED_KIND:
            raise _unknown(kind)
        return _drop_report(*[*body[1:], None, None][:2])
    return _make(KINDS[kind], kind, _positional(lay, body[2:]),
                 body[1] if len(body) > 1 else None)


def decode_record_v1(body: Any) -> ev.Event | DropReport:
    """One decoded version 1 record (a JSON object)."""
    if not isinstance(body, dict):
        raise WireError("malformed", "record is not a JSON object")
    kind = body.get("k")
    if not isinstance(kind, str):
        raise _unknown(kind)
    cls = KINDS.get(kind)
    if cls is None:
        if kind != DROPPED_KIND:
            raise _unknown(kind)
        return _drop_report(body.get("w"), body.get("n"))
    kwargs: dict[str, Any] = {}
    for f in _FIELDS[cls]:
        value = body.get(f.name)
        if f.name in body and not _absent(value):
            try:
                kwargs[f.name] = f.codec.decode(value)
            except WireError as exc:
                raise _field_error(kind, f, exc) from None
        elif f.default is MISSING and f.name not in _FACTORY_DEFAULTS:
            raise WireError("malformed", f"{kind} without {f.name}")
    return _make(cls, kind, kwargs, body.get("tp"))


_DECODERS: Final[dict[str, Callable[[Any], ev.Event | DropReport]]] = {
    VERSION: decode_record, VERSION_2: decode_record_v2, VERSION_1: decode_record_v1,
}
