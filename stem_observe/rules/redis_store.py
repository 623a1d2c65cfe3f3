"""A :class:`~stem_observe.rules.store.Store` in Redis, shared by every ``serve`` instance.

Keys (``prefix`` defaults to ``stem_observe``):

* ``<prefix>:silence:<id>`` — one JSON string per silence, expiring
  :data:`~stem_observe.rules.store.EXPIRED_RETENTION_S` after the silence ends;
* ``<prefix>:silences`` — a sorted set of silence IDs scored by end time;
* ``<prefix>:states`` — the JSON snapshot of alert states.

Whether a silence is active is decided with the Redis server's ``TIME``, not the local
clock, so instances with skewed clocks agree. A Redis error never raises into the engine:
it is logged (at most once a minute per operation) and the last good data is returned
(fail open); :meth:`RedisStore.add` raises :class:`StoreUnavailableError` instead, since
there is nothing to return.
"""

from __future__ import annotations

import builtins
import json
import logging
import threading
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis

from stem_observe._throttle import Throttle
from stem_observe.errors import StemObserveError
from stem_observe.notify.clock import SYSTEM_CLOCK, Clock
from stem_observe.notify.model import TaskSample
from stem_observe.rules.routing import Matcher
from stem_observe.rules.store import (
    EXPIRED_RETENTION_S,
    MAX_SILENCES,
    Silence,
    SilenceError,
    parse_matchers,
)

if TYPE_CHECKING:
    from stem_observe.rules.engine import AlertState

__all__ = ["RedisStore", "StoreUnavailableError", "state_from_json", "state_to_json"]

logger = logging.getLogger("stem_observe.rules.redis_store")



class StoreUnavailableError(StemObserveError):
    """Redis could not be reached to create a silence."""


def server_time(client: redis.Redis) -> float:
    """Epoch seconds from the server's ``TIME``."""
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1_000_000


def _silence_from_json(data: dict[str, Any]) -> Silence:
    return Silence(id=str(data["id"]),
                   matchers=tuple(Matcher.parse(m) for m in data["matchers"]),
                   starts_at=float(data["starts_at"]), ends_at=float(data["ends_at"]),
                   created_by=str(data.get("created_by", "")),
                   comment=str(data.get("comment", "")))


def state_to_json(state: AlertState) -> dict[str, Any]:
    """Every field of ``state`` needed to rebuild it (:func:`state_from_json`)."""
    return {
        "name": state.name, "labels": dict(state.labels), "state": state.state,
        "since": state.since, "active_at": state.active_at, "fired_at": state.fired_at,
        "resolved_at": state.resolved_at, "value": state.value,
        "threshold": state.threshold, "baseline": state.baseline,
        "annotations": dict(state.annotations), "cli_hint": state.cli_hint,
        "samples": [[s.task_id, s.trace_id] for s in state.samples],
        "silenced_by": list(state.silenced_by), "inhibited": state.inhibited,
    }


def state_from_json(data: dict[str, Any]) -> AlertState:
    """The state :func:`state_to_json` wrote. Raises ``KeyError``, ``TypeError`` or
    ``ValueError`` for a field missing or not of its shape; labels that are not an object
    are kept as they are, for the engine to skip and count."""
    from stem_observe.rules.engine import AlertState

    labels = data["labels"]
    return AlertState(
        name=data["name"], labels=dict(labels) if isinstance(labels, dict) else labels,
        state=data["state"],
        since=data["since"], active_at=data["active_at"], fired_at=data["fired_at"],
        resolved_at=data["resolved_at"], value=data["value"], threshold=data["threshold"],
        baseline=data["baseline"], annotations=dict(data["annotations"]),
        samples=tuple(TaskSample(task_id, trace_id) for task_id, trace_id in data["samples"]),
        cli_hint=data["cli_hint"], silenced_by=tuple(data["silenced_by"]),
        inhibited=bool(data["inhibited"]),
    )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    """Silences and the alert-state snapshot in Redis (see the module doc).

    ``client`` should have short socket timeouts (the engine's tick waits on it). ``clock``
    serves the fallback when Redis is unreachable (local time shifted by the last observed
    server offset) and the rate limit of error logs.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "stem_observe",
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.client = client
        self.prefix = prefix
        self.clock = clock
        self._index = f"{prefix}:silences"
        self._states_key = f"{prefix}:states"
        self._lock = threading.Lock()
        self._offset = 0.0  # server time minus local time, as last seen
        self._known: dict[str, Silence] = {}  # last good silences (not yet purged)
        self._states: builtins.list[AlertState] = []
        self._throttle = Throttle()

    def _key(self, silence_id: str) -> str:
        return f"{self.prefix}:silence:{silence_id}"

    def _now(self) -> float:
        now = server_time(self.client)
        with self._lock:
            self._offset = now - self.clock.time()
        return now

    def _fallback_now(self) -> float:
        with self._lock:
            return self.clock.time() + self._offset

    def _fetch(self, min_end: float | str) -> builtins.list[Silence]:
        ids = self.client.zrangebyscore(self._index, min_end, "+inf")
        if not ids:
            return []
        found: builtins.list[Silence] = []
        for raw in self.client.mget([self._key(_text(i)) for i in ids]):
            if raw is None:
                continue
            try:
                found.append(_silence_from_json(json.loads(raw)))
            except (ValueError, KeyError, TypeError) as exc:
                self._error("decoding a silence", exc)
        found.sort(key=lambda s: (s.starts_at, s.id))
        with self._lock:
            self._known.update((s.id, s) for s in found)
        return found

    def _write(self, silence: Silence, now: float) -> None:
        pipe = self.client.pipeline(transaction=True)
        key = self._key(silence.id)
        pipe.set(key, json.dumps(silence.to_json()))
        pipe.expireat(key, int(silence.ends_at + EXPIRED_RETENTION_S) + 1)
        pipe.zadd(self._index, {silence.id: silence.ends_at})
        pipe.zremrangebyscore(self._index, "-inf", f"({now - EXPIRED_RETENTION_S}")
        pipe.execute()
        with self._lock:
            self._known[silence.id] = silence

    def add(self, matchers: Sequence[Matcher | str], ends_at: float, created_by: str = "",
            comment: str = "", *, starts_at: float | None = None) -> Silence:
        parsed = parse_matchers(matchers)
        try:
            now = self._now()
            start = now if starts_at is None else starts_at
            if not ends_at > max(now, start):
                raise SilenceError(f"ends_at: must be after the start and in the future, "
                                   f"got {ends_at!r}")
            if self.client.zcount(self._index, f"({now - EXPIRED_RETENTION_S}",
                                  "+inf") >= MAX_SILENCES:
                raise SilenceError(f"too many silences (at most {MAX_SILENCES}); expire some")
            silence = Silence(id=uuid.uuid4().hex, matchers=parsed, starts_at=start,
                              ends_at=ends_at, created_by=created_by, comment=comment)
            self._write(silence, now)
        except redis.RedisError as exc:
            self._error("add", exc)
            raise StoreUnavailableError(f"the silence store (Redis) is unavailable: "
                                        f"{type(exc).__name__}") from None
        return silence

    def list(self, *, include_expired: bool = False) -> builtins.list[Silence]:
        try:
            now = self._now()
            found = self._fetch(now - EXPIRED_RETENTION_S)
        except redis.RedisError as exc:
            self._error("list", exc)
            now = self._fallback_now()
            with self._lock:
                found = sorted((s for s in self._known.values()
                                if s.ends_at >= now - EXPIRED_RETENTION_S),
                               key=lambda s: (s.starts_at, s.id))
        return found if include_expired else [s for s in found if s.ends_at > now]

    def expire(self, silence_id: str) -> bool:
        try:
            now = self._now()
            raw = self.client.get(self._key(silence_id))
            if raw is None:
                return False
            silence = _silence_from_json(json.loads(raw))
            if silence.ends_at <= now:
                return False
            self._write(Silence(
                id=silence.id, matchers=silence.matchers, starts_at=min(silence.starts_at, now),
                ends_at=now, created_by=silence.created_by, comment=silence.comment), now)
            return True
        except redis.RedisError as exc:
            self._error("expire", exc)
            return False

    def silences(self, now: float) -> builtins.list[Silence]:
        """Active silences by the Redis server's time (``now``, the engine's clock, is not
        used while Redis answers)."""
        try:
            server_now = self._now()
            found = self._fetch(f"({server_now}")
            with self._lock:
                self._known = {k: s for k, s in self._known.items()
                               if s.ends_at >= server_now - EXPIRED_RETENTION_S}
                self._known.update((s.id, s) for s in found)
        except redis.RedisError as exc:
            self._error("reading silences", exc)
            server_now = self._fallback_now()
            with self._lock:
                found = builtins.list(self._known.values())
        return [s for s in found if s.active(server_now)]

    def save_states(self, states: Sequence[AlertState]) -> None:
        with self._lock:
            self._states = builtins.list(states)
        try:
            self.client.set(self._states_key,
                            json.dumps([state_to_json(s) for s in states]))
        except redis.RedisError as exc:
            self._error("saving alert states", exc)

    def load_states(self) -> builtins.list[AlertState]:
        """The snapshot in Redis (the last one saved here if Redis cannot be read). An
        entry that cannot be decoded is skipped and logged; the others are returned."""
        try:
            raw = self.client.get(self._states_key)
        except redis.RedisError as exc:
            self._error("loading alert states", exc)
            raw = None
        if raw is not None:
            try:
                entries = json.loads(raw)
                if not isinstance(entries, builtins.list):
                    raise TypeError(f"expected a JSON list, got {type(entries).__name__}")
            except (ValueError, TypeError) as exc:
                self._error("decoding alert states", exc)
            else:
                return self._decode(entries)
        with self._lock:
            return builtins.list(self._states)

    def _decode(self, entries: builtins.list[Any]) -> builtins.list[AlertState]:
        found: builtins.list[AlertState] = []
        skipped: builtins.list[str] = []
        for i, entry in enumerate(entries):
            try:
                if not isinstance(entry, dict):
                    raise TypeError(f"expected an object, got {type(entry).__name__}")
                found.append(state_from_json(entry))
            except (ValueError, KeyError, TypeError) as exc:
                skipped.append(f"[{i}] {type(exc).__name__}: {exc}")
        if skipped:
            logger.warning("skipped %d of %d saved alert states that could not be decoded: %s",
                           len(skipped), len(entries), "; ".join(skipped[:5]))
        return found

    def _error(self, what: str, exc: BaseException) -> None:
        if self._throttle.allow(what, self.clock.monotonic()):
            logger.warning("redis %s failed (using the last good data): %s: %s",
                           what, type(exc).__name__, exc)

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self.prefix!r})"

