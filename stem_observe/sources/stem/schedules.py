"""Stem Beat's schedule history -> ``schedule-entry-due``, then ``schedule-entry-dispatched`` /
``schedule-entry-failed``.

After each dispatch Beat appends to ``<ns>:schedule:<id>:history`` (a stream trimmed to about
1,000 entries) the fields ``scheduledAt``, ``executedAt``, ``success``, ``durationMs`` and
``error`` (reference §3.10). Each poll reads, per schedule listed in ``<ns>:schedule:index``,
the history entries after the last one seen, in one pipelined round trip; the drift of a
dispatch is ``executedAt - scheduledAt``. The first poll only notes where each history ends.

Beat writes a history entry for every entry it found due and tried to dispatch, so each one
is sent as ``schedule-entry-due`` (at ``scheduledAt``) followed by its outcome: due counts
equal dispatched plus failed. Entries Beat never got to (Beat down) leave no history and
show as missing dispatches, not as due.
"""

from __future__ import annotations

from collections.abc import Callable

import redis

from stem_observe import events as ev
from stem_observe.sources.stem.keys import StemKeys
from stem_observe.sources.stem.wire import ParseError, parse_time
from stem_observe.sources.stem.wire import text as _text

__all__ = ["ScheduleTracker"]

_PER_POLL = 200


class ScheduleTracker:
    """Call :meth:`poll` each cycle; it sends one event per new history entry."""

    def __init__(self, client: redis.Redis, keys: StemKeys, emit: Callable[[ev.Event], None],
                 on_parse_error: Callable[[ParseError], None]) -> None:
        self._client = client
        self._keys = keys
        self._emit = emit
        self._on_parse_error = on_parse_error
        self._last: dict[str, str] = {}  # schedule id -> last history entry id seen
        self._tasks: dict[str, tuple[str | None, str | None]] = {}

    def poll(self, *, prime: bool = False) -> int:
        ns = self._keys.broker
        ids = [_text(i) for i in self._client.zrange(f"{ns}:schedule:index", 0, -1)]
        for gone in set(self._last) - set(ids):
            self._last.pop(gone, None)
            self._tasks.pop(gone, None)
        if not ids:
            return 0
        pipe = self._client.pipeline(transaction=False)
        for entry_id in ids:
            history = f"{ns}:schedule:{entry_id}:history"
            last = self._last.get(entry_id)
            if prime:
                pipe.xrevrange(history, "+", "-", count=1)
            else:  # a schedule seen for the first time after the start: all of it is news
                pipe.xrange(history, f"({last}" if last else "-", "+", count=_PER_POLL)
            pipe.hmget(f"{ns}:schedule:{entry_id}", ["taskName", "queue"])
        replies = pipe.execute(raise_on_error=False)
        sent = 0
        for index, entry_id in enumerate(ids):
            entries, names = replies[2 * index], replies[2 * index + 1]
            if isinstance(names, list) and len(names) == 2:
                self._tasks[entry_id] = (
                    _text(names[0]) if names[0] else None, _text(names[1]) if names[1] else None)
            if not isinstance(entries, list) or not entries:
                continue
            if prime:
                self._last[entry_id] = _text(entries[0][0])  # history is not news
                continue
            for stream_id, fields in entries:
                self._last[entry_id] = _text(stream_id)
                if self._send(entry_id, {_text(k): _text(v) for k, v in fields.items()}):
                    sent += 1
        return sent

    def _send(self, entry_id: str, fields: dict[str, str]) -> bool:
        task_name, queue = self._tasks.get(entry_id, (None, None))
        try:
            scheduled = parse_time(fields.get("scheduledAt"), kind="schedule_history")
            executed = parse_time(fields.get("executedAt"), kind="schedule_history")
        except ParseError as exc:
            self._on_parse_error(exc)
            return False
        if executed is None:
            self._on_parse_error(ParseError("schedule_history", "entry has no executedAt"))
            return False
        self._emit(ev.ScheduleEntryDue(
            occurred_at=executed if scheduled is None else scheduled, entry_id=entry_id,
            task_name=task_name, queue=queue, tick_at=scheduled,
        ))
        if fields.get("success", "true").lower() == "true":
            self._emit(ev.ScheduleEntryDispatched(
                occurred_at=executed, entry_id=entry_id, task_name=task_name, queue=queue,
                scheduled_for=scheduled,
                drift_s=None if scheduled is None else executed - scheduled,
            ))
        else:
            error = fields.get("error") or ""
            error_type, _, message = error.partition(": ")
            self._emit(ev.ScheduleEntryFailed(
                occurred_at=executed, entry_id=entry_id, task_name=task_name, queue=queue,
                scheduled_for=scheduled, error_type=error_type if message else "Exception",
                error_message=message or error,
            ))
        return True
