"""How an event's fields travel on the fleet stream, whatever the record format.

Which fields of each event kind are forwarded and in what order (:func:`layout`: the
dataclass field order, pinned by the unit tests), the limits a record keeps to (text cut to
:data:`MAX_TEXT`, stack traces to :data:`MAX_STACKTRACE`, non-finite numbers left out,
containers converted: :func:`prepare`), and the checks every decoder shares: strict about
types (a wrong type is a :class:`WireError`, never a guess), lenient about fields it does
not know. ``sources/_fleet_wire.py`` is the current format (version 3) and
``sources/_fleet_json.py`` the JSON formats of versions 2 and 1.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, fields
from math import isfinite
from typing import Any, Final

from stem_observe import events as ev
from stem_observe import signals

DROPPED_KIND: Final = "fleet-dropped"
MAX_TEXT: Final = 1024
MAX_STACKTRACE: Final = 4096
MAX_TRACEPARENT: Final = 128

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
KIND_OF: Final[dict[type[ev.Event], str]] = {cls: kind for kind, cls in KINDS.items()}


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

SKIP: Final = object()
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
    return value if math.isfinite(value) else SKIP


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


FIELDS: Final[dict[type[ev.Event], tuple[_Field, ...]]] = {
    cls: _fields_of(cls) for cls in KINDS.values()
}
FACTORY_DEFAULTS: Final = frozenset({"occurred_at", "timestamp"})  # "now" when absent

# Text fields that name things rather than describe them: a task's lifecycle kinds hold
# only these, and travel uncut (the consumer cuts what is over the limit).
_IDENTIFIERS: Final = frozenset({"task_id", "task_name", "queue", "worker_id"})


@dataclass(frozen=True, slots=True)
class Layout:
    """A kind's fields: what to read off the event and which positions need a check."""

    kind: str
    fields: tuple[_Field, ...]
    get: Callable[[Any], tuple[Any, ...]]
    text: tuple[tuple[int, int], ...]  # (position, limit)
    floats: tuple[int, ...]
    convert: tuple[tuple[int, Encoder], ...]
    required: tuple[str, ...]
    raw: bool  # what the getter reads goes on the wire as it is


def _layout(cls: type[ev.Event]) -> Layout:
    fields_ = FIELDS[cls]
    names = [f.name for f in fields_]
    getter = operator.attrgetter(*names)
    get = getter if len(names) > 1 else lambda event: (getter(event),)
    at = {f.name: position for position, f in enumerate(fields_)}
    text = tuple((at[f.name], f.codec.limit) for f in fields_ if f.codec.limit is not None)
    convert = tuple((at[f.name], f.codec.convert) for f in fields_
                    if f.codec.convert is not None)
    return Layout(
        kind=KIND_OF[cls],
        fields=fields_,
        get=get,
        text=text,
        floats=tuple(at[f.name] for f in fields_ if f.codec.finite),
        convert=convert,
        required=tuple(f.name for f in fields_
                       if f.default is MISSING and f.name not in FACTORY_DEFAULTS),
        raw=not convert and all(fields_[position].name in _IDENTIFIERS
                                for position, _ in text),
    )

#: The positional layout of each kind. It is the order of the event's dataclass fields: a
#: field added to an event must come last in the layouts it joins (the unit tests pin each
#: layout), so that older consumers ignore it rather than misread it.
LAYOUTS: Final[dict[type[ev.Event], Layout]] = {cls: _layout(cls) for cls in KINDS.values()}
LAYOUT_OF_KIND: Final[dict[str, Layout]] = {lay.kind: lay for lay in LAYOUTS.values()}

#: The kinds whose fields travel as the forwarder read them.
RAW_KINDS: Final = frozenset(lay.kind for lay in LAYOUTS.values() if lay.raw)


def layout(kind: str) -> tuple[str, ...]:
    """The field names of a ``kind`` record, in the order its fields travel."""
    return tuple(f.name for f in LAYOUT_OF_KIND[kind].fields)


# --------------------------------------------------------------------------- limits


def _cut(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else str(value)
    return text[:limit]


def valid_text(text: str) -> str:
    """``text`` as UTF-8 can carry it (a lone surrogate, as from undecodable bytes, becomes
    ``?``)."""
    return text.encode("utf-8", "replace").decode("utf-8")


def prepared(lay: Layout, values: tuple[Any, ...], *, clean: bool = False,
              ) -> tuple[Any, ...]:
    """``values`` with text cut (and made text; ``clean``: valid UTF-8), non-finite numbers
    left out and containers converted."""
    fixed = list(values)
    for position, limit in lay.text:
        value = fixed[position]
        if value is not None and (value.__class__ is not str or len(value) > limit):
            value = fixed[position] = _cut(value, limit)
        if clean and value is not None:
            fixed[position] = valid_text(value)
    for position in lay.floats:
        value = fixed[position]
        if value is not None and not isfinite(value):
            fixed[position] = None
    for position, convert in lay.convert:
        value = fixed[position]
        fixed[position] = convert(value) if value else None
    return tuple(fixed)


Record = tuple[str, str | None, tuple[Any, ...]]


def prepare(kind: str, traceparent: str | None, values: tuple[Any, ...], *,
            clean: bool = False) -> Record:
    """A record whose every field is within the limits a consumer keeps; with ``clean``,
    its text is valid UTF-8 too. What a forwarder sends for a queued record that cannot be
    packed as it is (text that is not text, an entry over :data:`MAX_ENTRY_BYTES`)."""
    if traceparent is not None and (traceparent.__class__ is not str
                                    or len(traceparent) > MAX_TRACEPARENT):
        traceparent = None
    elif traceparent is not None and clean:
        traceparent = valid_text(traceparent)
    return kind, traceparent, prepared(LAYOUT_OF_KIND[kind], values, clean=clean)


# --------------------------------------------------------------------------- decoding


def drop_report(worker: Any, count: Any) -> DropReport:
    if not isinstance(worker, str) or type(count) is not int or count < 0:
        raise WireError("malformed", "drop report needs a worker and a count")
    return DropReport(worker[:MAX_TEXT], count)


def unknown_kind(kind: Any) -> WireError:
    if not isinstance(kind, str):
        return WireError("malformed", "record without a kind")
    return WireError("kind", f"unknown record kind {kind[:64]!r}")


def field_error(kind: str, f: _Field, exc: WireError) -> WireError:
    return WireError("malformed", f"{kind}.{f.name}: {exc}")


def absent(value: Any) -> bool:
    return value is None or (value.__class__ is float and not isfinite(value))


def positional(lay: Layout, values: Sequence[Any]) -> dict[str, Any]:
    """The keyword arguments of ``lay``'s event from positional ``values``. Positions past
    the layout (a newer forwarder's fields) are ignored; ``None`` is the field's default."""
    kwargs: dict[str, Any] = {}
    for f, value in zip(lay.fields, values, strict=False):  # newer: longer
        if not absent(value):
            try:
                kwargs[f.name] = f.codec.decode(value)
            except WireError as exc:
                raise field_error(lay.kind, f, exc) from None
    for name in lay.required:
        if name not in kwargs:
            raise WireError("malformed", f"{lay.kind} without {name}")
    return kwargs


def make_event(cls: type[ev.Event], kind: str, kwargs: dict[str, Any], traceparent: Any,
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
