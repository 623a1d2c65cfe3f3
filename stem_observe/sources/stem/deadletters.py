"""New dead-letter entries -> ``task-dead-lettered``, robust to replays, purges and skew.

Stem ``LPUSH``es dead letters, so the list is in push order, newest first; replay and purge
``LREM`` entries anywhere but never reorder the rest. So each poll reads from the head and
stops at the first entry it has seen before: everything after it was pushed earlier. No
clock is involved, so workers with skewed clocks lose nothing. Only when every remembered
entry was removed meanwhile does a ``deadAt`` cut-off (minus a slack) end the walk.

The watcher's first poll only notes each list's head: history is not news. At most
``_MAX_PER_POLL`` entries are read per queue and poll; a longer burst is counted as dropped.
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
        # (task id, deadAt) of the most recently pushed entries, oldest first.
        self.seen: OrderedDict[tuple[str, float], None] = OrderedDict()

    def remember(self, letters: list[DeadLetter]) -> None:
        """Note ``letters`` (newest first, as read)."""
        for letter in reversed(letters):
            self.seen[(letter.envelope.id, letter.dead_at)] = None
            self.newest = max(self.newest, letter.dead_at)
        while len(self.seen) > _MAX_SEEN:
            self.seen.popitem(last=False)


class DeadLetterTracker:
    """Call :meth:`poll` for a queue whose dead-letter list may have changed."""

    def __init__(
        self, client: redis.Redis, keys: StemKeys, emit: Callable[[ev.Event], None],
        on_parse_error: Callable[[ParseError], None],
        on_dropped: Callable[[str], None] | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._emit = emit
        self._on_parse_error = on_parse_error
        self._on_dropped = on_dropped
        self._queues: dict[str, _QueueState] = {}

    def forget(self, queue: str) -> None:
        self._queues.pop(queue, None)

    def poll(self, queue: str, *, prime: bool = False) -> int:
        """Emit an event per new entry of ``queue``'s list; returns how many."""
        state = self._queues.get(queue)
        if state is None:
            state = self._queues[queue] = _QueueState()
        key = self._keys.dead(queue)
        if prime:
            head = self._parse(self._client.lindex(key, 0))
            if head is not None:
                state.remember([head])
            return 0
        new: list[DeadLetter] = []
        start, boundary = 0, False
        while start < _MAX_PER_POLL and not boundary:
            raws = self._client.lrange(key, start, start + _PAGE - 1)
            for raw in raws:
                letter = self._parse(raw)
                if letter is None:
                    continue
                if (letter.envelope.id, letter.dead_at) in state.seen or (
                    # every remembered entry was removed: fall back to the clock
                    len(new) >= _PAGE and letter.dead_at < state.newest - _SLACK_S
                ):
                    boundary = True
                    break
                new.append(letter)
            if len(raws) < _PAGE:
                break
            start += _PAGE
        else:
            if not boundary and self._on_dropped is not None:
                self._on_dropped("dead_letter_burst")  # more new entries than one poll reads
        state.remember(new)
        for letter in reversed(new):  # oldest first
            envelope = letter.envelope
            self._emit(ev.TaskDeadLettered(
                occurred_at=letter.dead_at, task_id=envelope.id, task_name=envelope.name,
                queue=queue, attempt=envelope.attempt, max_retries=envelope.max_retries,
                headers=envelope.headers or None,
                reason=letter.reason or "unknown", error=letter.error,
            ))
        return len(new)

    def _parse(self, raw: object) -> DeadLetter | None:
        if not isinstance(raw, bytes | str):
            return None
        try:
            return parse_dead_letter(raw)
        except ParseError as exc:
            self._on_parse_error(exc)
            return None
