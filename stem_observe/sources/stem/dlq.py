"""Dead-letter operations on a Stem queue, as Stem's Redis broker performs them.

``<ns>:dead:<queue>`` is a list Stem ``LPUSH``es to, so index 0 is the newest entry. Each
element is the JSON ``{"envelope", "reason", "meta", "deadAt"}``; elements that do not decode
(no envelope, no ``deadAt``, not JSON) are skipped, as Stem skips them.

Replay moves an entry back to its queue the way ``RedisStreamsBroker.replayDeadLetters``
does: ``LREM <dead key> 1 <element>``, then a copy of the envelope with ``attempt + 1`` is
``ZADD``ed to ``<ns>:delayed:<queue>`` when it is not due yet, or ``XADD``ed to the stream of
its priority. Only an entry this call removed (``LREM`` returned 1) is republished, so two
replays running at once never publish a task twice. As in Stem, a process that dies between
the ``LREM`` and the publish loses that entry. Afterwards, as ``stem dlq replay`` does, the
task's status record (if any) gets the ``lastReplay*`` and ``replayCount`` meta keys.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final

import redis

from stem_observe.errors import ConfigError
from stem_observe.sources.stem.keys import StemKeys
from stem_observe.sources.stem.wire import (
    DeadLetter,
    Envelope,
    ParseError,
    dart_iso,
    dumps,
    parse_dead_letter,
    parse_status,
)

__all__ = [
    "STATUS_TTL_MS",
    "DeadLetterPage",
    "get_dead_letter",
    "list_dead_letters",
    "replay_dead_letters",
]

#: TTL of a status record Stem's result backend writes (one day), reset on every write.
STATUS_TTL_MS: Final = 86_400_000

_log = logging.getLogger(__name__)

#: A list element as Redis returned it (``bytes``, or ``str`` with ``decode_responses``).
_Raw = bytes | str


class DeadLetterPage(tuple[list[DeadLetter], int | None]):
    """One page of a dead-letter list: unpacks as ``(entries, next_offset)``.

    ``next_offset`` is the offset of the following page when this one came back full from
    Redis, else ``None``. ``parse_errors`` holds one error per element that was skipped
    because Stem would not decode it (``skipped`` is their count).
    """

    parse_errors: tuple[ParseError, ...]

    def __new__(
        cls, entries: list[DeadLetter], next_offset: int | None,
        parse_errors: Iterable[ParseError] = (),
    ) -> DeadLetterPage:
        page = super().__new__(cls, (entries, next_offset))
        page.parse_errors = tuple(parse_errors)
        return page

    @property
    def entries(self) -> list[DeadLetter]:
        return self[0]

    @property
    def next_offset(self) -> int | None:
        return self[1]

    @property
    def skipped(self) -> int:
        return len(self.parse_errors)


def _decode(items: Sequence[_Raw]) -> tuple[list[tuple[_Raw, DeadLetter]], list[ParseError]]:
    """Each decodable element with its raw form (kept as Redis sent it, for ``LREM``)."""
    decoded: list[tuple[_Raw, DeadLetter]] = []
    errors: list[ParseError] = []
    for raw in items:
        try:
            decoded.append((raw, parse_dead_letter(raw)))
        except ParseError as exc:
            errors.append(exc)
        except (ValueError, TypeError, OverflowError) as exc:  # e.g. "attempt": 1e400
            errors.append(ParseError("dead_letter", f"{type(exc).__name__}: {exc}"))
    return decoded, errors


def list_dead_letters(
    client: redis.Redis, keys: StemKeys, queue: str, *, limit: int = 50, offset: int = 0,
) -> DeadLetterPage:
    """Up to ``limit`` entries from ``offset`` (``LRANGE``), newest first.

    Stem sets the next offset only when ``limit`` entries *decoded*, so one malformed element
    ends its paging early; here it is set whenever Redis returned a full page, and points
    past the skipped elements too.
    """
    if limit < 1:
        raise ConfigError("limit", f"must be at least 1, got {limit}")
    if offset < 0:
        raise ConfigError("offset", f"must not be negative, got {offset}")
    items: list[_Raw] = client.lrange(keys.dead(queue), offset, offset + limit - 1)
    decoded, errors = _decode(items)
    next_offset = offset + len(items) if len(items) == limit else None
    return DeadLetterPage([entry for _raw, entry in decoded], next_offset, errors)


def get_dead_letter(
    client: redis.Redis, keys: StemKeys, queue: str, task_id: str,
) -> DeadLetter | None:
    """The newest entry whose envelope has ``task_id``, or ``None``."""
    decoded, _errors = _decode(client.lrange(keys.dead(queue), 0, -1))
    return next((entry for _raw, entry in decoded if entry.envelope.id == task_id), None)


def replay_dead_letters(
    client: redis.Redis, keys: StemKeys, queue: str, *, limit: int = 50,
    since: float | datetime | None = None, delay_s: float | None = None, dry_run: bool = False,
    task_name: str | None = None, reason: str | None = None,
    clock: Callable[[], float] = time.time, backend: redis.Redis | None = None,
    update_status: bool = True,
) -> list[DeadLetter]:
    """Move up to ``limit`` entries of ``queue``'s dead-letter list back to the queue.

    Entries dead at or after ``since`` (epoch seconds, or a ``datetime``; naive is UTC), and with
    this ``task_name`` / ``reason`` when given, are taken oldest first. Each is republished
    with ``attempt + 1``, ``queue`` = ``queue`` and, when ``delay_s`` is given,
    ``notBefore`` = now + ``delay_s`` (else its own ``notBefore``). Returns the entries as
    they were in the list (attempt not incremented): those removed and republished, or with
    ``dry_run`` those that would be, with nothing written.

    Status records are read and rewritten on ``backend`` (default: ``client``) under
    ``keys.backend``; ``update_status=False`` leaves them alone.
    """
    if limit < 1:
        raise ConfigError("limit", f"must be at least 1, got {limit}")
    if delay_s is not None and not (math.isfinite(delay_s) and delay_s >= 0):
        raise ConfigError("delay_s", f"must be a non-negative number of seconds, got {delay_s}")
    if isinstance(since, datetime):
        since_s: float | None = (since if since.tzinfo else since.replace(tzinfo=UTC)).timestamp()
    else:
        since_s = since
    dead_key = keys.dead(queue)
    decoded, errors = _decode(client.lrange(dead_key, 0, -1))
    if errors:
        _log.warning("skipped %d malformed elements of %s", len(errors), dead_key)
    selected = [
        (raw, entry) for raw, entry in reversed(decoded)  # oldest first among equal deadAt
        if (since_s is None or entry.dead_at >= since_s)
        and (task_name is None or entry.envelope.name == task_name)
        and (reason is None or entry.reason == reason)
    ]
    selected.sort(key=lambda item: item[1].dead_at)
    selected = selected[:limit]
    if dry_run:
        return [entry for _raw, entry in selected]

    replayed: list[DeadLetter] = []
    for raw, entry in selected:
        # redis-py's stub says str; the element is sent back byte for byte as Redis gave it.
        if client.lrem(dead_key, 1, raw) != 1:  # type: ignore[arg-type]
            continue  # another replay or purge took it
        _publish(client, keys, queue, entry.envelope, now=clock(), delay_s=delay_s)
        replayed.append(entry)
    if update_status and replayed:
        _note_replays(backend or client, keys, replayed, now=clock(), delay_s=delay_s)
    return replayed


def _epoch_ms(epoch_s: float) -> int:
    """Dart's ``millisecondsSinceEpoch``: truncated, after rounding float noise away."""
    return round(epoch_s * 1_000_000) // 1000


def _publish(
    client: redis.Redis, keys: StemKeys, queue: str, envelope: Envelope, *, now: float,
    delay_s: float | None,
) -> None:
    not_before = now + delay_s if delay_s is not None else envelope.not_before
    copy = replace(
        envelope, attempt=envelope.attempt + 1, not_before=not_before, queue=queue,
        # Envelope.fromJson gives an entry without enqueuedAt the time it was read.
        enqueued_at=envelope.enqueued_at if envelope.enqueued_at is not None else now,
    )
    if not_before is not None and not_before > now:
        client.zadd(keys.delayed(queue), {dumps(copy.to_json()): _epoch_ms(not_before)})
        return
    stream = keys.stream(queue, copy.priority)
    try:
        client.xgroup_create(stream, keys.group(queue), id="0", mkstream=True)
    except redis.ResponseError as exc:
        if not str(exc).startswith("BUSYGROUP"):
            raise
    fields: Any = copy.stream_fields()  # str -> str, in Stem's order
    client.xadd(stream, fields)


def _replay_count(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return 0


def _note_replays(
    backend: redis.Redis, keys: StemKeys, replayed: Sequence[DeadLetter], *, now: float,
    delay_s: float | None,
) -> None:
    """Rewrite each replayed task's status record as ``stem dlq replay`` does: same state,
    payload, error and attempt, ``createdAt`` kept, replay meta added, TTL reset."""
    now_iso = dart_iso(now)
    for entry in replayed:
        key = keys.result(entry.envelope.id)
        raw = backend.get(key)
        if raw is None:
            continue
        try:
            record = parse_status(raw, task_id=entry.envelope.id)
            data: dict[str, Any] = json.loads(raw)
        except (ValueError, TypeError, OverflowError) as exc:  # ParseError is a ValueError
            _log.warning("not updating the status record %s: %s", key, exc)
            continue
        meta = dict(record.meta)
        meta["lastReplayAt"] = now_iso
        meta["replayCount"] = _replay_count(meta.get("replayCount")) + 1
        meta["lastReplayReason"] = entry.reason
        meta["lastReplayDelayMs"] = round(delay_s * 1000) if delay_s is not None else None
        error = data.get("error")
        created_at = data.get("createdAt")
        document = {
            "id": record.id, "state": record.state, "payload": data.get("payload"),
            "error": error if isinstance(error, dict) else None, "meta": meta,
            "attempt": record.attempt,
            "createdAt": created_at if isinstance(created_at, str) and created_at else now_iso,
            "updatedAt": now_iso,
        }
        backend.set(key, dumps(document), px=STATUS_TTL_MS)
