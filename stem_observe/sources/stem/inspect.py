"""Reading a Stem deployment's queues from Redis, without side effects.

Stem keeps no queue registry: queues are found by scanning stream, delayed and dead-letter
keys (and from worker heartbeats). Per queue, counts are gathered in two pipelined round
trips for all queues at once:

1. ``XINFO GROUPS`` on each existing stream of the queue (``lag`` = not yet delivered,
   ``pending`` = delivered and not acknowledged, as Stem's own ``pendingCount`` and
   ``inflightCount`` compute them), ``ZCARD`` and ``ZCOUNT`` of the delayed set, ``LLEN`` of
   the dead-letter list and its oldest element (the tail: Stem ``LPUSH``es);
2. ``XRANGE <stream> (<last-delivered-id> + COUNT 1`` on streams with a backlog, whose entry
   id gives the age of the oldest message not yet delivered.

Unlike Stem's CLI, nothing here creates streams or groups: a stream without the queue's
consumer group has never been read, so all its entries are pending.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from stem_observe.sources.stem.keys import StemKeys
from stem_observe.sources.stem.wire import DeadLetter, ParseError, parse_dead_letter
from stem_observe.sources.stem.wire import text as _text

__all__ = ["QueueStats", "discover_queues", "queue_stats"]

_SCAN_COUNT = 1000
# Stem's control-plane queues: <worker ns>.control.worker.<id> | .broadcast | .reply.<id>
_CONTROL = re.compile(r"\.control\.(?:worker\.|broadcast$|reply\.)")
_NO_GROUP = "no-group"


@dataclass(slots=True)
class QueueStats:
    """Counts for one queue; ``None`` where there was nothing to measure."""

    queue: str
    pending: int = 0
    inflight: int = 0
    delayed: int = 0
    delayed_overdue: int = 0
    dead_letters: int = 0
    oldest_pending_age_s: float | None = None
    oldest_dead_letter_age_s: float | None = None
    oldest_dead_letter: DeadLetter | None = None
    newest_dead_letter_raw: bytes | None = None
    """The head of the dead-letter list as stored: it changes whenever an entry is added."""
    streams: list[str] = field(default_factory=list)
    parse_errors: list[ParseError] = field(default_factory=list)


def discover_queues(
    client: redis.Redis, keys: StemKeys, *, include_control: bool = False,
    extra: Iterable[str] = (),
) -> dict[str, list[str]]:
    """Queue name -> its existing stream keys, from ``SCAN`` of stream, delayed and dead keys.

    Stem's control-plane queues (``<ns>.control.…``) are left out unless ``include_control``.
    ``extra`` adds queues known otherwise (heartbeat subscriptions), with no streams yet.
    """
    queues: dict[str, list[str]] = {name: [] for name in extra}
    for raw in client.scan_iter(match=keys.stream_pattern(), count=_SCAN_COUNT, _type="stream"):
        key = _text(raw)
        queue = keys.queue_of_stream(key)
        if queue is not None:
            queues.setdefault(queue, []).append(key)
    for kind, pattern in (("dead", keys.dead_pattern()), ("delayed", keys.delayed_pattern())):
        for raw in client.scan_iter(match=pattern, count=_SCAN_COUNT):
            queue = keys.queue_of(_text(raw), kind)
            if queue is not None:
                queues.setdefault(queue, [])
    if not include_control:
        queues = {q: s for q, s in queues.items() if not _CONTROL.search(q)}
    return queues


def queue_stats(
    client: redis.Redis, keys: StemKeys, queues: Mapping[str, Sequence[str]],
    *, now: float | None = None,
) -> dict[str, QueueStats]:
    """Counts for every queue in ``queues`` (from :func:`discover_queues`), in two round trips."""
    now = time.time() if now is None else now
    now_ms = int(now * 1000)
    pipe = client.pipeline(transaction=False)
    plan: list[tuple[str, str | None]] = []  # (queue, stream or None for the 4 set/list cmds)
    for queue, streams in queues.items():
        for stream in streams:
            pipe.xinfo_groups(stream)
            plan.append((queue, stream))
        pipe.zcard(keys.delayed(queue))
        pipe.zcount(keys.delayed(queue), "-inf", now_ms)
        pipe.llen(keys.dead(queue))
        pipe.lindex(keys.dead(queue), -1)
        pipe.lindex(keys.dead(queue), 0)
        plan.append((queue, None))
    replies = pipe.execute(raise_on_error=False)
    stats = {queue: QueueStats(queue, streams=list(streams)) for queue, streams in queues.items()}
    backlog: list[tuple[str, str, str]] = []  # (queue, stream, last delivered id)
    index = 0
    for queue, stream_key in plan:
        entry = stats[queue]
        if stream_key is not None:
            reply = replies[index]
            index += 1
            last_id = _read_groups(entry, reply, keys.group(queue))
            if last_id is not None:
                backlog.append((queue, stream_key, last_id))
            continue
        delayed, overdue, dead, oldest, newest = replies[index:index + 5]
        index += 5
        entry.newest_dead_letter_raw = newest if isinstance(newest, bytes) else None
        entry.delayed = delayed if isinstance(delayed, int) else 0
        entry.delayed_overdue = overdue if isinstance(overdue, int) else 0
        entry.dead_letters = dead if isinstance(dead, int) else 0
        if isinstance(oldest, bytes | str):
            try:
                letter = parse_dead_letter(oldest)
            except ParseError as exc:
                entry.parse_errors.append(exc)
            else:
                entry.oldest_dead_letter = letter
                entry.oldest_dead_letter_age_s = max(0.0, now - letter.dead_at)
    _oldest_undelivered(client, stats, backlog, now)
    return stats


def _read_groups(entry: QueueStats, reply: Any, group: str) -> str | None:
    """Add one stream's counts; the id after which undelivered entries start, if any."""
    if isinstance(reply, Exception) or not isinstance(reply, list):
        return None  # the stream vanished between SCAN and now
    for info in reply:
        if _text(info.get("name", b"")) != group:
            continue
        lag = info.get("lag")
        pending = info.get("pending")
        entry.pending += lag if isinstance(lag, int) else 0
        entry.inflight += pending if isinstance(pending, int) else 0
        if isinstance(lag, int) and lag > 0:
            return _text(info.get("last-delivered-id", b"0-0"))
        return None
    # No consumer group: nobody has read this stream, so everything in it is pending.
    return _NO_GROUP


def _oldest_undelivered(
    client: redis.Redis, stats: dict[str, QueueStats], backlog: list[tuple[str, str, str]],
    now: float,
) -> None:
    if not backlog:
        return
    pipe = client.pipeline(transaction=False)
    for _queue, stream, last_id in backlog:
        if last_id == _NO_GROUP:  # count it all, and its first entry
            pipe.xlen(stream)
            pipe.xrange(stream, "-", "+", count=1)
        else:
            pipe.xrange(stream, f"({last_id}", "+", count=1)
    replies = pipe.execute(raise_on_error=False)
    index = 0
    for queue, _stream, last_id in backlog:
        entry = stats[queue]
        if last_id == _NO_GROUP:
            length, first = replies[index], replies[index + 1]
            index += 2
            entry.pending += length if isinstance(length, int) else 0
        else:
            first = replies[index]
            index += 1
        if isinstance(first, list) and first:
            entry_id = _text(first[0][0])
            age = max(0.0, now - int(entry_id.split("-", 1)[0]) / 1000)
            if entry.oldest_pending_age_s is None or age > entry.oldest_pending_age_s:
                entry.oldest_pending_age_s = age
