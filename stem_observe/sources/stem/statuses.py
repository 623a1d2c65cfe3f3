"""Task status records -> task signals, each transition once, however it was seen.

Stem overwrites ``<ns>:result:<id>`` at every step of a task (queued, running, then
succeeded, retried, failed or cancelled; a retry runs again as the next attempt). The
tracker remembers the last version of each record it saw (bounded, least recently seen
first out) and turns a newer version into events:

* ``running``   -> ``task-prerun`` (at ``startedAt``);
* ``succeeded`` -> ``task-succeeded`` (at ``completedAt``, run time from ``startedAt``);
* ``retried``   -> ``task-retry`` (error, ``retryDelayMs``);
* ``failed``    -> ``task-failed`` (error, at ``failedAt``);
* ``cancelled`` -> ``task-revoked``.

If the ``running`` version of an attempt was overwritten before it was seen, its outcome
still gets a ``task-prerun`` first when the record carries ``startedAt``, so the attempt's
span runs from its real start to its real end. Versions are ordered by (attempt, state
rank, ``updatedAt``), so a notification and a reconcile scan that see the same record, in
any order, produce the events once.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, TypedDict

from stem_observe import events as ev
from stem_observe.sources.stem.wire import StatusRecord

__all__ = ["StatusTracker"]

_RANK: Final = {"queued": 0, "running": 1, "retried": 2, "succeeded": 2, "failed": 2,
                "cancelled": 2}
Version = tuple[int, int, float]


class _Common(TypedDict):
    task_id: str
    task_name: str
    queue: str
    attempt: int
    max_retries: int
    worker_id: str | None


def _version(record: StatusRecord) -> Version:
    return (record.attempt, _RANK[record.state], record.updated_at or 0.0)


class StatusTracker:
    """Feeds :meth:`observe` with records; ``emit`` receives the resulting events.

    ``prime=True`` records versions without emitting (the first scan at start-up: history
    is not news) for records last updated before ``since``; newer ones are news even then,
    so a transition seen first by that scan is not swallowed. At most ``max_tasks`` tasks
    are remembered.
    """

    def __init__(self, emit: Callable[[ev.Event], None], *, max_tasks: int = 200_000) -> None:
        self._emit = emit
        self._max_tasks = max_tasks
        self._seen: OrderedDict[str, tuple[Version, str]] = OrderedDict()
        self._max_retries: dict[str, int] = {}
        self.overflowed = 0  # tasks let go while possibly still changing (see observe)
        # One lock around deciding *and* sending, so two threads that see two versions of
        # a task send their events in version order.
        self._lock = threading.RLock()
        self.transitions = 0

    def __len__(self) -> int:
        return len(self._seen)

    def observe(
        self, record: StatusRecord, *, prime: bool = False, since: float | None = None,
        horizon: float | None = None,
    ) -> int:
        """Emit the events ``record`` is news of; returns how many transitions it was.

        ``horizon``: records last updated before it were visible to an earlier complete
        scan, so a scan that meets one it does not remember knows it is not news. Memory is
        then needed only for records changed since (``max_tasks`` of them); past that, a
        record let go may be sent again, and ``overflowed`` counts the risk.
        """
        if record.state == "retried" and _rescheduled(record):
            return 0  # rate-limited or paused: Stem sends no task-retry, the attempt stays
        version = _version(record)
        with self._lock:
            previous = self._seen.get(record.id)
            if previous is not None and previous[0] >= version:
                return 0
            if previous is None and horizon is not None and (
                (record.updated_at or 0.0) < horizon
            ):
                return 0  # seen by an earlier full scan, and forgotten since
            self._remember(record, version)
            if previous is not None and previous[1] == record.state and (
                previous[0][0] == record.attempt
            ):
                return 0  # rewritten, not changed (a dead-letter replay touches the record)
            updated = record.updated_at or 0.0
            if prime and (since is None or updated < since):
                return 0
            max_retries = self._max_retries.get(record.id, record.max_retries)
            count = self._infer_retries(record, previous, max_retries, since)
            saw_running = previous is not None and previous[0][0] == record.attempt and (
                previous[1] == "running")
            count += self._transition(record, max_retries, saw_running)
            self.transitions += count
            return count

    def _remember(self, record: StatusRecord, version: Version) -> None:
        self._seen[record.id] = (version, record.state)
        self._seen.move_to_end(record.id)
        while len(self._seen) > self._max_tasks:
            old_id, (_, old_state) = self._seen.popitem(last=False)
            self._max_retries.pop(old_id, None)
            if old_state not in ("succeeded", "failed", "cancelled"):
                self.overflowed += 1
        if record.state == "queued" and record.max_retries:
            self._max_retries[record.id] = record.max_retries

    def _infer_retries(
        self, record: StatusRecord, previous: tuple[Version, str] | None, max_retries: int,
        since: float | None,
    ) -> int:
        """``task-retry`` for attempts whose ``retried`` version was overwritten unseen.

        Stem retries within seconds; a scan every minute sees only the latest attempt. An
        attempt number beyond the last one seen means each attempt in between was retried
        (unless the last one seen had ended for good: then it is a dead-letter replay).
        """
        if previous is not None:
            (last_attempt, _, _), last_state = previous
            if last_state in ("succeeded", "failed", "cancelled"):
                return 0
            first = last_attempt if last_state != "retried" else last_attempt + 1
        elif since is not None and (record.created_at or 0.0) >= since:
            first = 0  # a task born after the watcher started: all its retries are news
        else:
            return 0
        count = 0
        for attempt in range(first, record.attempt):
            self._emit(ev.TaskRetry(
                occurred_at=record.updated_at or 0.0, task_id=record.id,
                task_name=record.task_name, queue=record.queue, attempt=attempt,
                max_retries=max_retries, worker_id=None,
                reason="retried (seen from the next attempt)",
            ))
            count += 1
        return count

    def _transition(self, record: StatusRecord, max_retries: int, saw_running: bool) -> int:
        state = record.state
        if state == "queued":
            return 0
        common: _Common = {
            "task_id": record.id, "task_name": record.task_name, "queue": record.queue,
            "attempt": record.attempt, "max_retries": max_retries, "worker_id": record.worker,
        }
        started_at = record.meta_time("startedAt")
        updated_at = record.updated_at
        if state == "running":
            at = started_at or updated_at
            self._emit(ev.TaskPrerun(
                occurred_at=at if at is not None else 0.0, **common,
                enqueued_at=record.created_at if record.attempt == 0 else None,
            ))
            return 1
        count = 1
        if not saw_running and started_at is not None:
            # The running version was overwritten unseen: its start still counts.
            self._emit(ev.TaskPrerun(
                occurred_at=started_at, **common,
                enqueued_at=record.created_at if record.attempt == 0 else None,
            ))
            count += 1
        error = record.error
        if state == "succeeded":
            end = record.meta_time("completedAt") or updated_at or 0.0
            self._emit(ev.TaskSucceeded(
                occurred_at=end, **common,
                runtime_s=_runtime(started_at, end),
            ))
        elif state == "failed":
            end = record.meta_time("failedAt") or updated_at or 0.0
            self._emit(ev.TaskFailed(
                occurred_at=end, **common,
                error_type=error.type if error else "Unknown",
                error_message=error.message if error else "",
                stacktrace=error.stack if error else None,
                runtime_s=_runtime(started_at, end),
            ))
        elif state == "retried":
            delay_s = _seconds_from_ms(record.meta.get("retryDelayMs"))
            at = updated_at or 0.0
            self._emit(ev.TaskRetry(
                occurred_at=at, **common,
                reason=f"{error.type}: {error.message}" if error else "retry",
                error_type=error.type if error else None,
                error_message=error.message if error else None,
                retry_delay_s=delay_s,
                next_retry_at=at + delay_s if delay_s is not None else None,
                runtime_s=_runtime(started_at, at),
            ))
        else:  # cancelled
            reason = record.meta.get("revokedReason")
            if not isinstance(reason, str) or not reason:
                reason = "expired" if record.meta.get("stem.expired") else "revoked"
            self._emit(ev.TaskRevoked(
                occurred_at=updated_at or 0.0, **common,
                reason=reason,
            ))
        return count


def _runtime(started_at: float | None, ended_at: float | None) -> float | None:
    if started_at is None or ended_at is None or ended_at < started_at:
        return None
    return ended_at - started_at


def _rescheduled(record: StatusRecord) -> bool:
    """A ``retried`` record Stem writes for a rate-limited or paused task (no attempt used)."""
    meta = record.meta
    if any(meta.get(key) for key in ("rateLimited", "groupRateLimited", "queuePaused")):
        return True
    return "retryAfterMs" in meta and "retryDelayMs" not in meta


def _seconds_from_ms(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value) / 1000
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
