"""New dead-letter entries -> ``task-dead-lettered``, robust to replays and purges.

Stem ``LPUSH``es dead letters, so new entries are at the head; replay and purge ``LREM``
entries anywhere, so the list's length says nothing about what is new. Each poll reads
from the head until it reaches entries older than what was already seen (minus a slack for
clocks of different workers), and an entry is new when its ``(task id, deadAt)`` was not
seen before. A poll with ``prime=True`` (the watcher's first) only records what is there:
history is not news.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import redis

from stem_observe import events as ev
from stem_observe.sources.stem.keys import StemKeys
from stem_observe.sources.stem.wire import DeadLetter, ParseError, parse_dead_letter

__all__ = ["DeadLetterTracker"]

_PAGE = 200
_MAX_PER_POLL = 10_000
_SLACK_S = 5.0
_MAX_SEEN = 5_000


class _QueueState:
    __slots__ = ("newest", "seen")

    def __init__(self) -> None:
        self.newest = float("-inf")
        self.seen: OrderedDict[tuple[str, float], None] = OrderedDict()


class DeadLetterTracker:
    """Call :meth:`poll` for a queue whose dead-letter list may have changed."""

    def __init__(
        self, client: redis.Redis, keys: StemKeys, emit: Callable[[ev.Event], None],
        on_parse_error: Callable[[ParseError], None],
    ) -> None:
        self._client = client
        self._keys = keys
        self._emit = emit
        self._on_parse_error = on_parse_error
        self._queues: dict[str, _QueueState] = {}

    def forget(self, queue: str) -> None:
        self._queues.pop(queue, None)

    def poll(self, queue: str, *, prime: bool = False) -> int:
        """Emit an event per new entry of ``queue``'s list; returns how many."""
        state = self._queues.get(queue)
        if state is None:
            state = self._queues[queue] = _QueueState()
        new: list[DeadLetter] = []
        key = self._keys.dead(queue)
        start = 0
        while start < _MAX_PER_POLL:
            raws = self._client.lrange(key, start, start + _PAGE - 1)
            if not raws:
                break
            older = False
            for raw in raws:
                try:
                    letter = parse_dead_letter(raw)
                except ParseError as exc:
                    self._on_parse_error(exc)
                    continue
                if letter.dead_at < state.newest - _SLACK_S:
                    older = True
                    break
                if (letter.envelope.id, letter.dead_at) not in state.seen:
                    new.append(letter)
            if older or len(raws) < _PAGE:
                break
            start += _PAGE
        for letter in new:
            state.seen[(letter.envelope.id, letter.dead_at)] = None
            state.newest = max(state.newest, letter.dead_at)
        while len(state.seen) > _MAX_SEEN:
            state.seen.popitem(last=False)
        if prime:
            return 0
        for letter in reversed(new):  # oldest first
            envelope = letter.envelope
            self._emit(ev.TaskDeadLettered(
                occurred_at=letter.dead_at, task_id=envelope.id, task_name=envelope.name,
                queue=queue, attempt=envelope.attempt, max_retries=envelope.max_retries,
                headers=envelope.headers or None,
                reason=letter.reason or "unknown", error=letter.error,
            ))
        return len(new)
