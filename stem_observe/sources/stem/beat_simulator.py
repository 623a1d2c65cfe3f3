"""Stem's Beat in Python, writing the schedule keys exactly as ``RedisScheduleStore`` does.

:class:`SimulatedBeat` works on a :class:`~stem_observe.sources.stem.simulator.StemSimulator`
(its Redis, keys, clock and ids; dispatched tasks are published through it). Nothing runs in
the background: "Beat" is whoever calls :meth:`SimulatedBeat.beat_tick`. § and V numbers
refer to the Stem Redis reference (``stem-redis.md``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

from stem_observe.sources.stem.simulator import StemSimulator
from stem_observe.sources.stem.wire import Envelope, dart_iso, dumps, parse_time
from stem_observe.sources.stem.wire import text as _text

__all__ = ["SCHEDULE_LOCK_TTL_MS", "Dispatch", "SimulatedBeat"]

SCHEDULE_LOCK_TTL_MS: Final = 5_000  # RedisScheduleStore.lockTtl and Beat's lockTtl (§3.10)
_HISTORY_MAXLEN: Final = 1_000  # XTRIM <ns>:schedule:<id>:history MAXLEN ~ 1000 (§3.10)
_DUE_LIMIT: Final = 100  # ScheduleStore.due(now, limit: 100)
_RELEASE: Final = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
                   "return redis.call('DEL', KEYS[1]) end return 0")  # RedisLockStore.release


@dataclass(frozen=True, slots=True)
class Dispatch:
    """One Beat dispatch of a schedule entry: ``envelope`` is what was published, ``None``
    when the publish failed with ``error`` (Stem's ``toString()`` of the exception)."""

    entry_id: str
    scheduled_for: float
    executed_at: float
    envelope: Envelope | None
    error: str | None = None

    @property
    def drift_s(self) -> float:
        return self.executed_at - self.scheduled_for


class SimulatedBeat:
    """Beat with ``RedisScheduleStore`` and ``RedisLockStore`` for ``sim``'s deployment."""

    def __init__(self, sim: StemSimulator) -> None:
        self.sim = sim
        self.client = sim.client
        self.keys = sim.keys

    def add_schedule(
        self, entry_id: str, task_name: str, *, every_s: float, queue: str = "default",
        args: Mapping[str, Any] | None = None, meta: Mapping[str, Any] | None = None,
        first_run_at: float | None = None,
    ) -> None:
        """``RedisScheduleStore.upsert`` of a new interval entry (§3.10, V8): ``HGET version``,
        ``MULTI``, ``HSET`` of the 19 fields (no run state, ``version`` + 1), ``ZADD
        <ns>:schedule:index <nextRunAt ms> <id>``, ``DEL`` the claim lock, ``EXEC`` (Stem's
        ``WATCH`` writes nothing and is left out). ``nextRunAt``: ``first_run_at`` (epoch
        seconds), else ``now + every`` in UTC, as upsert computes it."""
        if every_s <= 0:
            raise ValueError(f"every_s must be positive, got {every_s!r}")
        every_ms = round(every_s * 1000)
        next_run = self.sim.now() + every_ms / 1000 if first_run_at is None else first_run_at
        key = self._schedule_key(entry_id)
        version = _int_or_zero(self.client.hget(key, "version"))
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping={
            "taskName": task_name, "queue": queue,
            "spec": dumps({"kind": "interval", "everyMs": every_ms}),
            "args": dumps(dict(args or {})), "kwargs": "{}", "enabled": "true", "jitterMs": "",
            "lastRunAt": "", "nextRunAt": dart_iso(next_run), "lastJitterMs": "",
            "lastError": "", "timezone": "", "totalRunCount": "0", "lastSuccessAt": "",
            "lastErrorAt": "", "driftMs": "", "expireAt": "", "meta": dumps(dict(meta or {})),
            "version": str(version + 1),
        })
        pipe.zadd(self._schedule_index(), {entry_id: _us(next_run) // 1000})
        pipe.delete(f"{key}:lock")
        pipe.execute()

    def due_schedules(self) -> list[tuple[str, float]]:
        """The first step of Beat's tick (``ScheduleStore.due``): ``ZRANGEBYSCORE
        <ns>:schedule:index -inf <now ms> LIMIT 0 100``, as ``(entry id, due at)`` pairs."""
        due = cast(list[tuple[Any, float]], self.client.zrangebyscore(
            self._schedule_index(), "-inf", _us(self.sim.now()) // 1000, start=0, num=_DUE_LIMIT,
            withscores=True))
        return [(_text(member), score / 1000) for member, score in due]

    def dispatch_schedule(
        self, entry_id: str, *, error_type: str | None = None,
        message: str = "publish failed", lock: bool = True,
    ) -> Dispatch | None:
        """Beat's dispatch of one due entry (``Beat._dispatch``, §3.9, §3.10): the store's
        claim (``SET <id>:lock 1 NX PX 5000``, ``HGETALL``) and with ``lock`` the lock store's
        (``SET <ns>:lock:stem:schedule:<id> <owner> NX PX 5000``), ``None`` when one is held
        or the entry is gone or disabled; the publish (headers ``scheduled-from`` and
        ``schedule-id``, no status record), which ``error_type`` makes throw ``"<error_type>:
        <message>"``; ``markExecuted`` (``nextRunAt = executedAt + every``); the history entry
        (``XADD``, ``XTRIM MAXLEN ~ 1000``); the lock's release.

        A dispatch is as late as the clock is past ``nextRunAt``. Beat stamps ``DateTime.now()``,
        a local time written without an offset; this Beat's host runs in UTC, so ``executedAt``
        is naive UTC and ``scheduledAt`` is ``nextRunAt`` as stored (with ``Z`` the first time).
        """
        key = self._schedule_key(entry_id)
        if not self.client.set(f"{key}:lock", "1", nx=True, px=SCHEDULE_LOCK_TTL_MS):
            return None
        fields = {_text(k): _text(v) for k, v in
                  cast(dict[Any, Any], self.client.hgetall(key)).items()}
        if not fields or fields.get("enabled", "true") != "true":
            self.client.delete(f"{key}:lock")
            return None
        lock_key = f"{self.keys.broker}:lock:stem:schedule:{entry_id}"
        owner = self.sim.new_id(_us(self.sim.now()) // 1000)
        if lock and not self.client.set(lock_key, owner, nx=True, px=SCHEDULE_LOCK_TTL_MS):
            return None  # contended: the claim lock expires on its own, as in Stem
        try:
            scheduled_text = fields.get("nextRunAt") or ""
            scheduled = parse_time(scheduled_text) if scheduled_text else None
            if scheduled is None:  # Beat: ``entry.nextRunAt ?? now``
                scheduled = self.sim.now()
                scheduled_text = _naive_iso(scheduled)
            started_us = _us(self.sim.now())
            envelope: Envelope | None = None
            error: str | None = None
            if error_type is None:
                meta = _json_object(fields.get("meta"))
                kwargs = _json_object(fields.get("kwargs"))
                if kwargs:
                    meta["kwargs"] = kwargs
                envelope = Envelope(
                    id=self.sim.new_id(started_us // 1000), name=fields.get("taskName", ""),
                    args=_json_object(fields.get("args")),
                    headers={"scheduled-from": "beat", "schedule-id": entry_id},
                    enqueued_at=started_us / 1e6, queue=fields.get("queue") or "default",
                    meta=meta,
                )
                self.sim.xadd(envelope)
            else:
                error = f"{error_type}: {message}"
            executed = self.sim.now()
            self._mark_executed(entry_id, fields, scheduled=scheduled, executed=executed,
                                error=error)
            self.client.xadd(f"{key}:history", {
                "scheduledAt": scheduled_text, "executedAt": _naive_iso(executed),
                "success": "false" if error else "true",
                "durationMs": "" if error else str((_us(executed) - started_us) // 1000),
                "error": error or "",
            })
            self.client.xtrim(f"{key}:history", maxlen=_HISTORY_MAXLEN, approximate=True)
            return Dispatch(entry_id, scheduled, executed, envelope, error)
        finally:
            if lock:
                self.client.eval(_RELEASE, 1, lock_key, owner)

    def beat_tick(self, *, failing: Mapping[str, str] | None = None) -> list[Dispatch]:
        """One Beat tick: every due entry dispatched in index order; an entry named in
        ``failing`` (id -> error type) has its publish throw. Returns what was dispatched."""
        done = []
        for entry_id, _due_at in self.due_schedules():
            error_type = (failing or {}).get(entry_id)
            dispatch = self.dispatch_schedule(entry_id, error_type=error_type)
            if dispatch is not None:
                done.append(dispatch)
        return done

    def _mark_executed(self, entry_id: str, fields: Mapping[str, str], *, scheduled: float,
                       executed: float, error: str | None) -> None:
        """``RedisScheduleStore.markExecuted`` (§3.10): ``MULTI``, ``HSET`` of the run state,
        ``ZADD`` the next run, ``DEL`` the claim lock, ``EXEC`` (``fields`` is the claim's
        ``HGETALL``, which the store repeats under ``WATCH``)."""
        spec = _json_object(fields.get("spec"))
        every_ms = spec.get("everyMs", 60_000)  # a missing spec is every:60s
        if spec.get("kind", "interval") != "interval" or not isinstance(every_ms, int):
            raise ValueError(f"schedule {entry_id!r}: only interval specs are simulated")
        executed_text = _naive_iso(executed)
        next_run = executed + every_ms / 1000
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self._schedule_key(entry_id), mapping={
            "lastRunAt": executed_text, "nextRunAt": _naive_iso(next_run), "lastJitterMs": "",
            "lastError": error or "", "enabled": fields.get("enabled", "true"),
            "totalRunCount": str(_int_or_zero(fields.get("totalRunCount")) + 1),
            "lastSuccessAt": fields.get("lastSuccessAt", "") if error else executed_text,
            "lastErrorAt": executed_text if error else fields.get("lastErrorAt", ""),
            "driftMs": str(int((_us(executed) - _us(scheduled)) / 1000)),
            "version": str(_int_or_zero(fields.get("version")) + 1),
        })
        pipe.zadd(self._schedule_index(), {entry_id: _us(next_run) // 1000})
        pipe.delete(f"{self._schedule_key(entry_id)}:lock")
        pipe.execute()

    def _schedule_key(self, entry_id: str) -> str:
        return f"{self.keys.broker}:schedule:{entry_id}"

    def _schedule_index(self) -> str:
        return f"{self.keys.broker}:schedule:index"


def _us(epoch_s: float) -> int:
    return round(epoch_s * 1_000_000)


def _naive_iso(epoch_s: float) -> str:
    """Dart's ``toIso8601String()`` of a local ``DateTime.now()`` on a UTC host (no ``Z``)."""
    return dart_iso(epoch_s)[:-1]


def _int_or_zero(value: object) -> int:
    """``int.tryParse(...) ?? 0`` of a hash field."""
    try:
        return int(_text(value)) if value is not None else 0
    except ValueError:
        return 0


def _json_object(raw: str | None) -> dict[str, Any]:
    """The store's ``decodeJson``: empty -> ``{}``."""
    if not raw:
        return {}
    value = json.loads(raw)
    return dict(value) if isinstance(value, dict) else {}
