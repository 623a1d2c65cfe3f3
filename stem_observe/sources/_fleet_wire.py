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

Versions 2 and 1 were JSON text (``sources/_fleet_json.py``, re-exported here); the layouts,
limits and field checks all versions share are in ``sources/_fleet_fields.py``.

Decoding is strict about types (a wrong type is an error, not a guess), lenient about fields
it does not know (a newer forwarder may append some), and bounds what it keeps whoever wrote
it: text longer than its limit is cut, non-finite numbers and an over-long ``tp`` count as
absent. Every problem is a :class:`WireError` with a bounded ``kind`` label; a bad record
does not spoil the others in its entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import msgpack
from redis.typing import EncodableT, FieldT

from stem_observe import events as ev
from stem_observe.sources._fleet_fields import (
    DROPPED_KIND,
    KINDS,
    LAYOUT_OF_KIND,
    LAYOUTS,
    MAX_STACKTRACE,
    MAX_TEXT,
    RAW_KINDS,
    DropReport,
    Layout,
    Record,
    WireError,
    drop_report,
    layout,
    make_event,
    positional,
    prepare,
    prepared,
    unknown_kind,
    valid_text,
)
from stem_observe.sources._fleet_json import (
    VERSION_1,
    VERSION_2,
    decode_record_v1,
    decode_record_v2,
    encode_v1,
    encode_v2,
    load,
    pack_v1,
    pack_v2,
)

__all__ = [
    "DROPPED_KIND",
    "KINDS",
    "MAX_ENTRY_BYTES",
    "MAX_STACKTRACE",
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
#: The versions a consumer reads.
VERSIONS: Final = (VERSION, VERSION_2, VERSION_1)
RECORDS_PER_ENTRY: Final = 100
MAX_ENTRY_BYTES: Final = 4 * 1024 * 1024


def _reader(lay: Layout) -> Callable[[Any], tuple[Any, ...]]:
    if lay.raw:
        return lay.get
    get = lay.get
    return lambda event: prepared(lay, get(event))

#: For each event type, its kind and a reader of its forwarded fields, ready for the wire
#: (one C call for :data:`RAW_KINDS`): a forwarder keeps ``(kind, traceparent, fields)`` of
#: an event, not the event, and packs those records as they are. Tuples of strings and
#: numbers are untracked by the garbage collector at its first pass; a queue of events or
#: lists is work for every pass.
READERS: Final[dict[type[ev.Event], tuple[str, Callable[[Any], tuple[Any, ...]]]]] = {
    cls: (lay.kind, _reader(lay)) for cls, lay in LAYOUTS.items()
}

#: A stream entry's fields, as ``XADD`` takes them.
Entry = dict[FieldT, EncodableT]


def encode(event: ev.Event, traceparent: str | None = None) -> Record:
    """The version 3 record for ``event`` (a type in :data:`KINDS`), ready for :func:`pack`:
    ``(kind, tp, fields)`` in the kind's :func:`layout`, ``None`` for a field at its
    default."""
    kind, _read = READERS[type(event)]
    return prepare(kind, traceparent, LAYOUTS[type(event)].get(event))


def drops_record(worker: str, count: int) -> Record:
    """The record that reports ``count`` events dropped on ``worker``."""
    return DROPPED_KIND, None, (valid_text(worker[:MAX_TEXT]), count)


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
    return load(raw)


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


def decode_record(body: Any) -> ev.Event | DropReport:
    """One decoded version 3 record: ``[kind, tp, fields]``."""
    if not isinstance(body, list) or len(body) < 3 or not isinstance(body[2], list):
        raise WireError("malformed", "record is not [kind, tp, fields]")
    kind, traceparent, values = body[0], body[1], body[2]
    lay = LAYOUT_OF_KIND.get(kind) if isinstance(kind, str) else None
    if lay is None:
        if kind != DROPPED_KIND:
            raise unknown_kind(kind)
        return drop_report(*[*values, None, None][:2])
    return make_event(KINDS[kind], kind, positional(lay, values), traceparent)


_DECODERS: Final[dict[str, Callable[[Any], ev.Event | DropReport]]] = {
    VERSION: decode_record, VERSION_2: decode_record_v2, VERSION_1: decode_record_v1,
}
