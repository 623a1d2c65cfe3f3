"""What Stem writes to Redis (envelopes, status records, dead letters, heartbeats, schedule
entries): lenient parsers, and Dart-exact serializers for writing it back.

Parsers accept every form Stem writes (timestamps with ``Z``, with an offset, with milli- or
microseconds, or naive; numbers as JSON numbers or strings) and raise :class:`ParseError`
with a ``kind`` for anything else, so a caller can skip the item and count it. Serializers
produce what Dart's ``jsonEncode`` and ``toIso8601String`` produce (compact JSON, Stem's key
order, ``…mmmZ`` times), for the simulator and for dead-letter replay.
"""

from __future__ import annotations

import functools
import json
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, ParamSpec, TypeVar

from stem_observe import events as ev

__all__ = [
    "STATES",
    "DeadLetter",
    "Envelope",
    "ParseError",
    "ScheduleEntry",
    "StatusError",
    "StatusRecord",
    "dart_iso",
    "dumps",
    "heartbeat_to_json",
    "parse_dead_letter",
    "parse_envelope_fields",
    "parse_envelope_json",
    "parse_heartbeat",
    "parse_schedule",
    "parse_status",
    "parse_time",
    "text",
]

P = ParamSpec("P")
R = TypeVar("R")
State = Literal["queued", "running", "succeeded", "failed", "retried", "cancelled"]
STATES: Final[frozenset[str]] = frozenset(
    {"queued", "running", "succeeded", "failed", "retried", "cancelled"}
)


class ParseError(ValueError):
    """An item Stem would not have written. ``kind`` names what (``status``, ``dead_letter`` …)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def _lenient(kind: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Turn any unexpected error of a parser into :class:`ParseError` (a skip, not a crash)."""

    def decorate(parse: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(parse)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return parse(*args, **kwargs)
            except ParseError:
                raise
            except (ValueError, TypeError, KeyError, AttributeError, OverflowError,
                    RecursionError) as exc:
                raise ParseError(kind, f"{type(exc).__name__}: {exc}") from exc

        return wrapper

    return decorate


# --------------------------------------------------------------------------- time and JSON


def parse_time(value: object, *, kind: str = "time") -> float | None:
    """Epoch seconds of a Dart ISO-8601 string (``Z``, offset, or naive = UTC); ``None``
    for ``None`` or ``""``. Raises :class:`ParseError` otherwise."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ParseError(kind, f"expected an ISO-8601 time, got {type(value).__name__}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ParseError(kind, f"not an ISO-8601 time: {value!r}") from None
    if moment.tzinfo is None:  # Dart writes local times without an offset; Stem's are UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def dart_iso(epoch_s: float) -> str:
    """``DateTime.toIso8601String()`` of a UTC time: ``…SS.mmmZ``, or ``…SS.mmmuuuZ``."""
    moment = datetime.fromtimestamp(epoch_s, UTC)
    micros = moment.microsecond
    base = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if micros % 1000:
        return f"{base}.{micros:06d}Z"
    return f"{base}.{micros // 1000:03d}Z"


def dumps(value: object) -> str:
    """Dart ``jsonEncode``: compact separators, insertion order, non-ASCII kept."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _loads(raw: str | bytes, kind: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError(kind, f"invalid JSON: {exc}") from None


def _object(value: object, kind: str, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ParseError(kind, f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _int(value: object, default: int = 0) -> int:
    """Dart's ``int.tryParse`` / ``num.toInt`` leniency: numbers and numeric strings."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else default
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                return default
            return int(number) if math.isfinite(number) else default
    return default


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


# --------------------------------------------------------------------------- envelopes


@dataclass(frozen=True, slots=True)
class Envelope:
    """A task message, as ``Envelope.toJson`` writes it."""

    id: str
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    enqueued_at: float | None = None
    not_before: float | None = None
    priority: int = 0
    attempt: int = 0
    max_retries: int = 0
    visibility_timeout_ms: int | None = None
    queue: str = "default"
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The canonical JSON object, in Stem's key order."""
        return {
            "id": self.id, "name": self.name, "args": self.args, "headers": self.headers,
            "enqueuedAt": dart_iso(self.enqueued_at) if self.enqueued_at is not None else None,
            "notBefore": dart_iso(self.not_before) if self.not_before is not None else None,
            "priority": self.priority, "attempt": self.attempt, "maxRetries": self.max_retries,
            "visibilityTimeout": self.visibility_timeout_ms, "queue": self.queue,
            "meta": self.meta,
        }

    def stream_fields(self) -> dict[Any, Any]:  # str -> str; typed for redis-py's xadd
        """The 12 fields ``XADD`` writes, in order, all strings."""
        return {
            "id": self.id, "name": self.name, "args": dumps(self.args),
            "headers": dumps(self.headers),
            "enqueuedAt": dart_iso(self.enqueued_at) if self.enqueued_at is not None else "",
            "notBefore": dart_iso(self.not_before) if self.not_before is not None else "",
            "priority": str(self.priority), "attempt": str(self.attempt),
            "maxRetries": str(self.max_retries),
            "visibilityTimeout": (
                str(self.visibility_timeout_ms) if self.visibility_timeout_ms is not None else ""
            ),
            "queue": self.queue, "meta": dumps(self.meta),
        }

    @property
    def task_name(self) -> str:
        return self.name


def _headers(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, str)}


@_lenient("envelope")
def parse_envelope_json(value: object, *, kind: str = "envelope") -> Envelope:
    """An envelope from its JSON object (or JSON text). ``name`` and ``args`` are required,
    as in ``Envelope.fromJson``; a missing ``id`` gets a new one."""
    data = _object(_loads(value, kind) if isinstance(value, str | bytes) else value, kind,
                   "envelope")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ParseError(kind, "envelope has no name")
    args = data.get("args")
    if not isinstance(args, dict):
        raise ParseError(kind, "envelope args must be a JSON object")
    meta = data.get("meta")
    visibility = data.get("visibilityTimeout")
    task_id = data.get("id")
    if not isinstance(task_id, str) or not task_id:
        # Stem would make a new id; a stable one lets the entry be found again.
        task_id = str(uuid.uuid5(uuid.NAMESPACE_URL, dumps(data)))
    return Envelope(
        id=task_id,
        name=name,
        args=args,
        headers=_headers(data.get("headers")),
        enqueued_at=parse_time(data.get("enqueuedAt"), kind=kind),
        not_before=parse_time(data.get("notBefore"), kind=kind),
        priority=_int(data.get("priority")),
        attempt=_int(data.get("attempt")),
        max_retries=_int(data.get("maxRetries")),
        visibility_timeout_ms=None if visibility in (None, "") else _int(visibility),
        queue=str(data.get("queue") or "default"),
        meta=meta if isinstance(meta, dict) else {},
    )


@_lenient("stream_entry")
def parse_envelope_fields(fields: Mapping[str, str], *, kind: str = "stream_entry") -> Envelope:
    """An envelope from a stream entry's fields (all strings; JSON in args/headers/meta)."""
    name = fields.get("name")
    if not name:
        raise ParseError(kind, "stream entry has no name")

    def json_field(key: str) -> Any:
        raw = fields.get(key)
        return _loads(raw, kind) if raw else {}

    args, headers, meta = json_field("args"), json_field("headers"), json_field("meta")
    visibility = fields.get("visibilityTimeout")
    return Envelope(
        id=fields.get("id") or str(uuid.uuid4()),
        name=name,
        args=args if isinstance(args, dict) else {},
        headers=_headers(headers),
        enqueued_at=parse_time(fields.get("enqueuedAt"), kind=kind),
        not_before=parse_time(fields.get("notBefore"), kind=kind),
        priority=_int(fields.get("priority")),
        attempt=_int(fields.get("attempt")),
        max_retries=_int(fields.get("maxRetries")),
        visibility_timeout_ms=_int(visibility) if visibility else None,
        queue=fields.get("queue") or "default",
        meta=meta if isinstance(meta, dict) else {},
    )


# --------------------------------------------------------------------------- status records


@dataclass(frozen=True, slots=True)
class StatusError:
    type: str = "Unknown"
    message: str = ""
    stack: str | None = None
    retryable: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StatusRecord:
    """``<ns>:result:<id>``: the latest state of a task (each attempt overwrites it)."""

    id: str
    state: State
    attempt: int = 0
    error: StatusError | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    created_at: float | None = None
    updated_at: float | None = None
    known_state: bool = True
    """False when the record's state was not one Stem defines (then read as ``queued``)."""

    @property
    def task_name(self) -> str:
        for key in ("task", "stem.task", "name", "taskName"):
            value = self.meta.get(key)
            if isinstance(value, str) and value:
                return value
        return "unknown"

    @property
    def queue(self) -> str:
        for key in ("queue", "stem.queue"):
            value = self.meta.get(key)
            if isinstance(value, str) and value:
                return value
        return "default"

    @property
    def worker(self) -> str | None:
        return _str_or_none(self.meta.get("worker"))

    def meta_time(self, key: str) -> float | None:
        try:
            return parse_time(self.meta.get(key), kind="status")
        except ParseError:
            return None

    @property
    def max_retries(self) -> int:
        return _int(self.meta.get("maxRetries"))


@_lenient("status")
def parse_status(raw: str | bytes, *, task_id: str | None = None) -> StatusRecord:
    """A status record; an unknown ``state`` reads as ``queued`` (as ``TaskStatus.fromJson``)
    with ``known_state=False``. ``task_id`` (from the key) fills a missing ``id``."""
    data = _object(_loads(raw, "status"), "status", "status record")
    record_id = data.get("id") or task_id
    if not isinstance(record_id, str) or not record_id:
        raise ParseError("status", "status record has no id")
    state = data.get("state")
    known = isinstance(state, str) and state in STATES
    error_data = data.get("error")
    error = None
    if isinstance(error_data, dict):
        error_meta = error_data.get("meta")
        error = StatusError(
            type=str(error_data.get("type") or "Unknown"),
            message=str(error_data.get("message") or ""),
            stack=_str_or_none(error_data.get("stack")),
            retryable=error_data.get("retryable") is True,
            meta=error_meta if isinstance(error_meta, dict) else {},
        )
    meta = data.get("meta")
    return StatusRecord(
        id=record_id,
        state=state if known else "queued",  # type: ignore[arg-type]
        attempt=_int(data.get("attempt")),
        error=error,
        meta=meta if isinstance(meta, dict) else {},
        created_at=parse_time(data.get("createdAt"), kind="status"),
        updated_at=parse_time(data.get("updatedAt"), kind="status"),
        known_state=known,
    )


# --------------------------------------------------------------------------- dead letters


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One element of ``<ns>:dead:<queue>``. ``raw`` is the element as stored (for ``LREM``)."""

    envelope: Envelope
    reason: str | None
    meta: dict[str, Any] | None
    dead_at: float
    raw: str

    @property
    def error(self) -> str | None:
        return _str_or_none((self.meta or {}).get("error"))

    def to_json(self) -> dict[str, Any]:
        return {"envelope": self.envelope.to_json(), "reason": self.reason, "meta": self.meta,
                "deadAt": dart_iso(self.dead_at)}


@_lenient("dead_letter")
def parse_dead_letter(raw: str | bytes) -> DeadLetter:
    """A dead-letter entry; ``envelope`` and ``deadAt`` are required, as Stem decodes them."""
    text = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
    data = _object(_loads(text, "dead_letter"), "dead_letter", "dead-letter entry")
    if "envelope" not in data:
        raise ParseError("dead_letter", "entry has no envelope")
    dead_at = parse_time(data.get("deadAt"), kind="dead_letter")
    if dead_at is None:
        raise ParseError("dead_letter", "entry has no deadAt")
    meta = data.get("meta")
    reason = data.get("reason")
    return DeadLetter(
        envelope=parse_envelope_json(data["envelope"], kind="dead_letter"),
        reason=reason if isinstance(reason, str) else None,
        meta=meta if isinstance(meta, dict) else None,
        dead_at=dead_at,
        raw=text,
    )


# --------------------------------------------------------------------------- heartbeats


@_lenient("heartbeat")
def parse_heartbeat(
    raw: str | bytes, *, seen_at: float | None = None, interval_s: float | None = None,
) -> ev.WorkerHeartbeat:
    """A ``worker-heartbeat`` event from Stem's heartbeat JSON (schema version ``"1"``).

    The JSON does not carry the worker's heartbeat interval: pass the deployment's as
    ``interval_s`` so staleness can be judged against it."""
    data = _object(_loads(raw, "heartbeat"), "heartbeat", "heartbeat")
    worker_id = data.get("workerId")
    if not isinstance(worker_id, str) or not worker_id:
        raise ParseError("heartbeat", "heartbeat has no workerId")
    timestamp = parse_time(data.get("timestamp"), kind="heartbeat")
    if timestamp is None:
        raise ParseError("heartbeat", "heartbeat has no timestamp")
    extras = data.get("extras") if isinstance(data.get("extras"), dict) else {}
    assert isinstance(extras, dict)
    subscriptions = extras.get("subscriptions") if isinstance(extras.get("subscriptions"),
                                                              dict) else {}
    assert isinstance(subscriptions, dict)
    queue_list = data.get("queues")
    loads = tuple(
        ev.WorkerQueueLoad(str(q.get("name")), _int(q.get("inflight")))
        for q in (queue_list if isinstance(queue_list, list) else [])
        if isinstance(q, dict) and q.get("name")
    )
    queues = subscriptions.get("queues") if isinstance(subscriptions.get("queues"), list) else []
    assert isinstance(queues, list)
    subscribed = tuple(str(q) for q in queues) or tuple(load.name for load in loads)
    load_avg = extras.get("loadAvg")
    return ev.WorkerHeartbeat(
        occurred_at=seen_at if seen_at is not None else timestamp,
        worker_id=worker_id,
        namespace=str(data.get("namespace") or "stem"),
        queues=subscribed,
        timestamp=timestamp,
        inflight=_int(data.get("inflight")),
        isolate_count=_int(data.get("isolateCount")),
        concurrency=_int(extras["concurrency"]) if "concurrency" in extras else None,
        max_concurrency=_int(extras["maxConcurrency"]) if "maxConcurrency" in extras else None,
        prefetch=_int(extras["prefetch"]) if "prefetch" in extras else None,
        last_lease_renewal=_safe_time(data.get("lastLeaseRenewal")),
        queue_loads=loads,
        host=_str_or_none(extras.get("host")) or _str_or_none(extras.get("hostname")),
        pid=_int(extras["pid"]) if "pid" in extras else None,
        started_at=_safe_time(extras.get("startedAt")),
        memory_bytes=_int(extras["memoryBytes"]) if "memoryBytes" in extras else None,
        memory_max_bytes=_int(extras["memoryMaxBytes"]) if "memoryMaxBytes" in extras else None,
        memory_percent=float(extras["memoryPercent"])
        if isinstance(extras.get("memoryPercent"), int | float)
        and not isinstance(extras.get("memoryPercent"), bool) else None,
        load_avg=tuple(float(x) for x in load_avg
                       if isinstance(x, int | float) and not isinstance(x, bool))
        if isinstance(load_avg, list) else (),
        cpu_count=_int(extras["cpuCount"]) if "cpuCount" in extras else None,
        started=_int(extras["started"]) if "started" in extras else None,
        completed=_int(extras["completed"]) if "completed" in extras else None,
        failed=_int(extras["failed"]) if "failed" in extras else None,
        queue_depth=_int(extras["queueDepth"]) if "queueDepth" in extras else None,
        autoscale=extras.get("autoscale") if isinstance(extras.get("autoscale"), bool) else None,
        uptime_s=_int(extras["uptimeMs"]) / 1000 if "uptimeMs" in extras else None,
        broadcasts=tuple(b for b in _list(subscriptions.get("broadcasts")) if isinstance(b, str)),
        extras=extras,
        interval_s=interval_s,
        version=str(data.get("version") or "1"),
    )


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _safe_time(value: object) -> float | None:
    try:
        return parse_time(value, kind="heartbeat")
    except ParseError:
        return None


def heartbeat_to_json(
    *, worker_id: str, namespace: str, timestamp: float, isolate_count: int, inflight: int,
    last_lease_renewal: float | None = None, queues: Mapping[str, int] | None = None,
    extras: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``WorkerHeartbeat.toJson``: the object Stem stores and publishes."""
    return {
        "workerId": worker_id, "namespace": namespace, "timestamp": dart_iso(timestamp),
        "isolateCount": isolate_count, "inflight": inflight,
        "lastLeaseRenewal": dart_iso(last_lease_renewal) if last_lease_renewal else None,
        "version": "1",
        "queues": [{"name": q, "inflight": n} for q, n in sorted((queues or {}).items()) if n > 0],
        "extras": dict(extras or {}),
    }


# --------------------------------------------------------------------------- schedules


@dataclass(frozen=True, slots=True)
class ScheduleEntry:
    """``<ns>:schedule:<id>``: a Beat schedule entry (hash fields; ``""`` means null)."""

    id: str
    task_name: str
    queue: str = "default"
    spec: dict[str, Any] = field(default_factory=lambda: {"kind": "legacy", "value": "every:60s"})
    enabled: bool = True
    next_run_at: float | None = None
    last_run_at: float | None = None
    last_success_at: float | None = None
    last_error_at: float | None = None
    last_error: str | None = None
    total_run_count: int = 0
    drift_ms: int | None = None
    jitter_ms: int | None = None
    expire_at: float | None = None
    version: int = 0


@_lenient("schedule")
def parse_schedule(entry_id: str, fields: Mapping[Any, Any]) -> ScheduleEntry:
    """A schedule entry from ``HGETALL`` (§3.10): missing ``enabled`` is true, a missing
    ``spec`` is ``every:60s``; ``spec`` is JSON, or a legacy ``every:…`` / cron string."""
    data = {text(k): text(v) for k, v in fields.items()}
    task_name = data.get("taskName")
    if not task_name:
        raise ParseError("schedule", f"schedule {entry_id!r} has no taskName")
    raw_spec = data.get("spec") or "every:60s"
    spec: dict[str, Any]
    if raw_spec.lstrip().startswith("{"):
        spec = _object(_loads(raw_spec, "schedule"), "schedule", "spec")
    else:
        spec = {"kind": "legacy", "value": raw_spec}

    def number(key: str) -> int | None:
        value = data.get(key)
        return _int(value) if value not in (None, "") else None

    return ScheduleEntry(
        id=entry_id, task_name=task_name, queue=data.get("queue") or "default", spec=spec,
        enabled=(data.get("enabled") or "true").lower() != "false",
        next_run_at=parse_time(data.get("nextRunAt"), kind="schedule"),
        last_run_at=parse_time(data.get("lastRunAt"), kind="schedule"),
        last_success_at=parse_time(data.get("lastSuccessAt"), kind="schedule"),
        last_error_at=parse_time(data.get("lastErrorAt"), kind="schedule"),
        last_error=data.get("lastError") or None,
        total_run_count=number("totalRunCount") or 0,
        drift_ms=number("driftMs"), jitter_ms=number("jitterMs"),
        expire_at=parse_time(data.get("expireAt"), kind="schedule"),
        version=number("version") or 0,
    )


def text(value: object) -> str:
    """A Redis reply as text: bytes decoded (undecodable bytes kept as surrogates), ``None``
    as ``""``."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return "" if value is None else str(value)
