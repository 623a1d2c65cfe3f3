"""Fleet record format versions 2 and 1 (JSON text), as workers before version 3 wrote them.

A version 2 record was ``[kind, tp, field, …]``: the layouts of ``_fleet_fields.py``,
flattened, trailing nulls left out; a drop report ``["fleet-dropped", worker, count]``. A
version 1 record was an object: ``k`` (the kind), ``tp``, and the fields that differ from
their defaults by name (``{"k": "fleet-dropped", "w": worker, "n": count}``). ``serve``
still reads both (a fleet in a rolling upgrade has workers of each); the writers are kept
for tests.
"""

from __future__ import annotations

import json
from dataclasses import MISSING
from typing import Any, Final

from stem_observe import events as ev
from stem_observe.sources._fleet_fields import (
    DROPPED_KIND,
    FACTORY_DEFAULTS,
    FIELDS,
    KIND_OF,
    KINDS,
    LAYOUT_OF_KIND,
    LAYOUTS,
    MAX_TRACEPARENT,
    SKIP,
    DropReport,
    WireError,
    absent,
    drop_report,
    field_error,
    make_event,
    positional,
    prepare,
    unknown_kind,
)

VERSION_2: Final = "2"
VERSION_1: Final = "1"
_DUMPS: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False,
                                 check_circular=False).encode


def load(raw: str) -> Any:
    """The JSON of a version 2 or 1 entry's body."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise WireError("malformed", f"invalid JSON: {exc}") from None


def encode_v2(event: ev.Event, traceparent: str | None = None) -> list[Any]:
    """The version 2 record for ``event``: what workers before version 3 sent."""
    cls = type(event)
    kind, tp, values = prepare(KIND_OF[cls], traceparent, LAYOUTS[cls].get(event))
    record = [kind, tp, *values]
    while record[-1] is None:
        record.pop()
    return record


def pack_v2(records: list[list[Any]]) -> dict[str, str]:
    """A version 2 stream entry, as workers before version 3 wrote them."""
    return {"v": VERSION_2, "e": _DUMPS(records)}


def encode_v1(event: ev.Event, traceparent: str | None = None) -> dict[str, Any]:
    """The version 1 record for ``event``: what workers before version 2 sent."""
    body: dict[str, Any] = {"k": KIND_OF[type(event)]}
    for f in FIELDS[type(event)]:
        value = getattr(event, f.name)
        if value is None or value == f.default:
            continue
        value = f.codec.encode(value)
        if value is not SKIP:
            body[f.name] = value
    if traceparent is not None and len(traceparent) <= MAX_TRACEPARENT:
        body["tp"] = traceparent
    return body


def pack_v1(records: list[dict[str, Any]]) -> dict[str, str]:
    """A version 1 stream entry, as workers before version 2 wrote them."""
    return {"v": VERSION_1, "e": _DUMPS(records)}


def decode_record_v2(body: Any) -> ev.Event | DropReport:
    """One decoded version 2 record (a JSON array ``[kind, tp, field, …]``)."""
    if not isinstance(body, list) or not body:
        raise WireError("malformed", "record is not a non-empty JSON array")
    kind = body[0]
    lay = LAYOUT_OF_KIND.get(kind) if isinstance(kind, str) else None
    if lay is None:
        if kind != DROPPED_KIND:
            raise unknown_kind(kind)
        return drop_report(*[*body[1:], None, None][:2])
    return make_event(KINDS[kind], kind, positional(lay, body[2:]),
                 body[1] if len(body) > 1 else None)


def decode_record_v1(body: Any) -> ev.Event | DropReport:
    """One decoded version 1 record (a JSON object)."""
    if not isinstance(body, dict):
        raise WireError("malformed", "record is not a JSON object")
    kind = body.get("k")
    if not isinstance(kind, str):
        raise unknown_kind(kind)
    cls = KINDS.get(kind)
    if cls is None:
        if kind != DROPPED_KIND:
            raise unknown_kind(kind)
        return drop_report(body.get("w"), body.get("n"))
    kwargs: dict[str, Any] = {}
    for f in FIELDS[cls]:
        value = body.get(f.name)
        if f.name in body and not absent(value):
            try:
                kwargs[f.name] = f.codec.decode(value)
            except WireError as exc:
                raise field_error(kind, f, exc) from None
        elif f.default is MISSING and f.name not in FACTORY_DEFAULTS:
            raise WireError("malformed", f"{kind} without {f.name}")
    return make_event(cls, kind, kwargs, body.get("tp"))
