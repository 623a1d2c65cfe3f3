"""``stem-observe observe queues|workers|dlq``: read-only snapshots of a Stem deployment.

Stem's ``stem observe`` for a Redis deployment, printing the same lines where the commands
overlap; unlike Stem's, it creates no streams or consumer groups. A table by default, one
JSON document with ``--json``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Final

from stem_observe.commands._common import age, connection_options, print_json, seconds, table
from stem_observe.commands._stem import Session, read_heartbeats, with_session
from stem_observe.sources.stem import dlq, inspect
from stem_observe.sources.stem.wire import DeadLetter, dart_iso

__all__ = ["register"]

_DLQ_PAGE: Final = 200  # observe dlq: Stem's paging (200 a page, at most 1000 entries)
_DLQ_MAX: Final = 1000


def register(commands: Any) -> None:
    common = connection_options()
    observe = commands.add_parser("observe", help="snapshot queues, workers or dead letters",
                                  description="Read-only snapshots of a Stem deployment.")
    what = observe.add_subparsers(dest="observe_command", required=True, metavar="WHAT")
    what.add_parser("queues", parents=[common], help="pending, in-flight, delayed and dead "
                    "counts per queue").set_defaults(func=_observe_queues)
    what.add_parser("workers", parents=[common], help="workers from their stored heartbeats"
                    ).set_defaults(func=_observe_workers)
    what.add_parser("dlq", parents=[common], help="dead letters of every queue (at most "
                    f"{_DLQ_MAX})").set_defaults(func=_observe_dlq)


def _heartbeat_queues(session: Session) -> list[str]:
    backend = session.backend
    if backend is None:
        return []
    beats, _skipped = read_heartbeats(backend, session.target.keys)
    return sorted({queue for beat in beats for queue in beat.queues})


@with_session
def _observe_queues(args: argparse.Namespace, session: Session) -> int:
    keys = session.target.keys
    broker = session.broker
    queues = inspect.discover_queues(broker, keys, extra=_heartbeat_queues(session))
    stats = inspect.queue_stats(broker, keys, queues)
    ordered = [stats[name] for name in sorted(stats)]
    if args.json:
        print_json({"queues": [
            {"queue": s.queue, "pending": s.pending, "inflight": s.inflight,
             "delayed": s.delayed, "delayedDue": s.delayed_overdue,
             "deadLetters": s.dead_letters,
             "oldestPendingAgeSeconds": seconds(s.oldest_pending_age_s)}
            for s in ordered]})
        return 0
    if not ordered:
        print("No queue data.")
        return 0
    rows = [[s.queue, str(s.pending), str(s.inflight), str(s.delayed), str(s.dead_letters),
             age(s.oldest_pending_age_s)] for s in ordered]
    for line in table(["Queue", "Pending", "Inflight", "Delayed", "Dead letters",
                       "Oldest age"], rows, right=frozenset({1, 2, 3, 4, 5})):
        print(line)
    return 0


@with_session
def _observe_workers(args: argparse.Namespace, session: Session) -> int:
    backend = session.backend
    beats = [] if backend is None else read_heartbeats(backend, session.target.keys)[0]
    now = time.time()
    if args.json:
        print_json({"workers": [
            {"id": b.worker_id, "namespace": b.namespace, "active": b.isolate_count,
             "inflight": b.inflight, "lastHeartbeat": dart_iso(b.timestamp),
             "ageSeconds": seconds(max(0.0, now - b.timestamp)), "queues": list(b.queues)}
            for b in beats]})
        return 0
    if not beats:
        print("No worker data.")
        return 0
    rows = [[b.worker_id, b.namespace, "-" if b.isolate_count is None else str(b.isolate_count),
             str(b.inflight),
             dart_iso(b.timestamp), age(max(0.0, now - b.timestamp))] for b in beats]
    for line in table(["Worker", "Namespace", "Active", "Inflight", "Last heartbeat", "Age"],
                      rows, right=frozenset({2, 3, 5})):
        print(line)
    return 0


@with_session
def _observe_dlq(args: argparse.Namespace, session: Session) -> int:
    keys = session.target.keys
    broker = session.broker
    found: list[tuple[str, DeadLetter]] = []
    skipped = 0
    truncated = False
    for queue in sorted(inspect.discover_queues(broker, keys)):
        offset: int | None = 0
        while offset is not None and not truncated:
            page = dlq.list_dead_letters(broker, keys, queue, limit=_DLQ_PAGE, offset=offset)
            skipped += page.skipped
            room = _DLQ_MAX - len(found)
            found.extend((queue, entry) for entry in page.entries[:room])
            truncated = len(page.entries) > room
            offset = page.next_offset
    if args.json:
        print_json({"dlq": [
            {"queue": queue, "taskId": e.envelope.id, "task": e.envelope.name,
             "reason": e.reason, "deadAt": dart_iso(e.dead_at)} for queue, e in found],
            "truncated": truncated, "skipped": skipped})
        return 0
    if not found:
        print("Dead letter queue is empty.")
        return 0
    rows = [[queue, e.envelope.id, e.envelope.name, e.reason or "Unknown", dart_iso(e.dead_at)]
            for queue, e in found]
    for line in table(["Queue", "Task ID", "Task", "Reason", "Dead at"], rows):
        print(line)
    if truncated:
        print(f"Showing the first {_DLQ_MAX} entries.")
    return 0
