"""``stem-observe dlq list|show|replay``: the dead-letter queue of one Stem queue.

Stem's ``stem dlq`` for a Redis deployment, printing the same lines where the commands
overlap; ``--json`` prints one JSON document instead. ``replay`` needs ``--yes`` (or
``--dry-run`` to preview).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, Final

from stem_observe.commands._common import connection_options, duration, print_json
from stem_observe.commands._stem import Session, with_session
from stem_observe.errors import ConfigError
from stem_observe.sources.stem import dlq
from stem_observe.sources.stem.wire import DeadLetter, ParseError, dart_iso, parse_time

__all__ = ["register"]

_REPLAY_SHOWN: Final = 10
_LIST_HEADER: Final = ("ID                                  | Task                | Attempts "
                       "| DeadAt                | Reason")
_LIST_RULE: Final = ("------------------------------------+---------------------+---------"
                     "+----------------------+----------------")


# --------------------------------------------------------------------------- arguments


def register(commands: Any) -> None:
    common = connection_options()
    dead = commands.add_parser("dlq", help="list, show or replay dead letters",
                               description="Dead-letter queue of one Stem queue.")
    action = dead.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    listing = action.add_parser("list", parents=[common], help="list entries, newest first")
    show = action.add_parser("show", parents=[common], help="print one entry as JSON")
    replay = action.add_parser("replay", parents=[common],
                               help="move entries back to their queue, oldest first")
    for sub in (listing, show, replay):
        sub.add_argument("-q", "--queue", required=True, help="the queue")
    listing.add_argument("-l", "--limit", type=_count(1), default=50,
                         help="page size (default: 50)")
    listing.add_argument("--offset", type=_count(0), default=0,
                         help="entries to skip (default: 0)")
    listing.add_argument("--since", type=_iso_time, metavar="ISO",
                         help="only entries dead at or after this time (within the page)")
    listing.set_defaults(func=_dlq_list)
    show.add_argument("id", nargs="?", help="the task id")
    show.add_argument("--id", dest="id_option", metavar="ID", help="the task id (Stem's flag)")
    show.set_defaults(func=_dlq_show)
    replay.add_argument("-l", "--limit", type=_count(1), default=10,
                        help="entries to replay at most (default: 10)")
    replay.add_argument("--since", type=_iso_time, metavar="ISO",
                        help="only entries dead at or after this time")
    replay.add_argument("--task", metavar="NAME", help="only entries of this task name")
    replay.add_argument("--reason", help="only entries with this reason")
    replay.add_argument("--delay", type=duration, metavar="DURATION",
                        help="publish to the delayed set, due after this (e.g. 30s)")
    replay.add_argument("--dry-run", action="store_true", help="show what would be replayed")
    replay.add_argument("-y", "--yes", action="store_true", help="confirm the replay")
    replay.set_defaults(func=_dlq_replay)


def _iso_time(text: str) -> float:
    """An argparse type: an ISO-8601 time (``Z``, offset, or naive = UTC) as epoch seconds."""
    try:
        value = parse_time(text, kind="--since")
    except ParseError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value is None:
        raise argparse.ArgumentTypeError("expected an ISO-8601 time")
    return value


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


# --------------------------------------------------------------------------- output


def _pad_cell(value: str, width: int) -> str:
    """Stem's ``padCell``: cut to ``width`` with ``...``, else pad right."""
    return value[:width - 3] + "..." if len(value) > width else value.ljust(width)


def _entry_json(queue: str, entry: DeadLetter) -> dict[str, Any]:
    """The document ``stem dlq show`` prints."""
    return {"queue": queue, "deadAt": dart_iso(entry.dead_at), "reason": entry.reason,
            "meta": entry.meta, "envelope": entry.envelope.to_json()}


def _plural(count: int) -> str:
    return f"{count} entry" if count == 1 else f"{count} entries"


# --------------------------------------------------------------------------- commands


@with_session
def _dlq_list(args: argparse.Namespace, session: Session) -> int:
    page = dlq.list_dead_letters(session.broker, session.target.keys, args.queue,
                                 limit=args.limit, offset=args.offset)
    # As Stem's CLI does, --since filters the page it read (it does not page further).
    entries = [e for e in page.entries if args.since is None or e.dead_at >= args.since]
    if args.json:
        print_json({"queue": args.queue, "entries": [_entry_json(args.queue, e)
                                                     for e in entries],
                    "nextOffset": page.next_offset, "skipped": page.skipped})
        return 0
    if not entries:
        print("No dead letter entries found.")
    else:
        print(_LIST_HEADER)
        print(_LIST_RULE)
        for e in entries:
            print(f"{_pad_cell(e.envelope.id, 36)} | {_pad_cell(e.envelope.name, 19)} | "
                  f"{e.envelope.attempt:>7} | {_pad_cell(dart_iso(e.dead_at), 20)} | "
                  f"{_pad_cell(e.reason or '-', 16)}")
    if page.next_offset is not None:
        print(f"More entries available. Next offset: {page.next_offset}.")
    return 0


@with_session
def _dlq_show(args: argparse.Namespace, session: Session) -> int:
    task_id = args.id_option or args.id
    if not task_id:
        raise ConfigError("id", "give the task id: dlq show --queue QUEUE ID")
    entry = dlq.get_dead_letter(session.broker, session.target.keys, args.queue, task_id)
    if entry is None:
        print(f"No dead letter entry found for id {task_id} in {args.queue}.", file=sys.stderr)
        return 1
    print_json(_entry_json(args.queue, entry))
    return 0


@with_session
def _dlq_replay(args: argparse.Namespace, session: Session) -> int:
    if not (args.yes or args.dry_run):
        raise ConfigError("--yes", "dlq replay moves entries back to the queue; pass --yes "
                                   "to confirm, or --dry-run to preview")
    # Status records are noted only when a result backend is configured, as in Stem's CLI.
    backend = None if args.dry_run else session.backend
    entries = dlq.replay_dead_letters(
        session.broker, session.target.keys, args.queue, limit=args.limit, since=args.since,
        delay_s=args.delay, dry_run=args.dry_run, task_name=args.task, reason=args.reason,
        backend=backend, update_status=backend is not None,
    )
    if args.json:
        print_json({"queue": args.queue, "dryRun": args.dry_run, "count": len(entries),
                    "entries": [{"id": e.envelope.id, "task": e.envelope.name,
                                 "attempt": e.envelope.attempt, "reason": e.reason,
                                 "deadAt": dart_iso(e.dead_at)} for e in entries]})
        return 0
    verb = "Would replay" if args.dry_run else "Replayed"
    print(f"{verb} {_plural(len(entries))} from {args.queue}.")
    for e in entries[:_REPLAY_SHOWN]:
        print(f" - {e.envelope.id} ({e.envelope.name}) [attempt {e.envelope.attempt}] "
              f"reason={e.reason or '-'}")
    if len(entries) > _REPLAY_SHOWN:
        print(f"   ... {len(entries) - _REPLAY_SHOWN} more")
    return 0
