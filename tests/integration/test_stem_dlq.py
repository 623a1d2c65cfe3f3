"""Dead-letter list, get and replay against a real Redis, written as Stem's broker writes it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import redis

from stem_observe.errors import ConfigError
from stem_observe.sources.stem.dlq import (
    STATUS_TTL_MS,
    DeadLetterPage,
    get_dead_letter,
    list_dead_letters,
    replay_dead_letters,
)
from stem_observe.sources.stem.keys import StemKeys
from stem_observe.sources.stem.wire import DeadLetter, Envelope, dart_iso, dumps

KEYS = StemKeys()
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
NOW = T0 + 3600.0
STREAM_FIELDS = ["id", "name", "args", "headers", "enqueuedAt", "notBefore", "priority",
                 "attempt", "maxRetries", "visibilityTimeout", "queue", "meta"]


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


def clock() -> float:
    return NOW


def envelope(task_id: str, **changes: Any) -> Envelope:
    fields: dict[str, Any] = {
        "id": task_id, "name": "emails.send", "args": {"to": "a@example.com"},
        "headers": {"stem-args-encoder": "json"}, "enqueued_at": T0 - 60, "attempt": 2,
        "max_retries": 2, "queue": "default",
        "meta": {"stem.task": "emails.send", "__stemArgsEncoder": "json"},
    }
    fields.update(changes)
    return Envelope(**fields)


def dead_letter_json(env: Envelope, *, dead_at: float, reason: str | None = "max-retries-exhausted",
                     meta: dict[str, Any] | None = None) -> str:
    """An element exactly as ``RedisStreamsBroker.deadLetter`` LPUSHes it."""
    return dumps({"envelope": env.to_json(), "reason": reason,
                  "meta": meta if meta is not None else {"error": "Exception: boom"},
                  "deadAt": dart_iso(dead_at)})


def push(client: redis.Redis, env: Envelope, *, dead_at: float, queue: str = "default",
         **kwargs: Any) -> None:
    client.lpush(KEYS.dead(queue), dead_letter_json(env, dead_at=dead_at, **kwargs))


def ids(entries: list[DeadLetter]) -> list[str]:
    return [entry.envelope.id for entry in entries]


def stream_entries(client: redis.Redis, stream: str) -> list[dict[str, str]]:
    """The fields of every entry of ``stream``, decoded, in order."""
    reply: Any = client.xrange(stream)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _id, fields in reply]


def stream_ids(client: redis.Redis, stream: str) -> list[str]:
    return [fields["id"] for fields in stream_entries(client, stream)]


def delayed(client: redis.Redis, queue: str) -> list[tuple[bytes, float]]:
    reply: Any = client.zrange(KEYS.delayed(queue), 0, -1, withscores=True)
    return [(member, score) for member, score in reply]


# --------------------------------------------------------------------------- list / get


def test_list_pages_newest_first_with_a_next_offset_only_after_a_full_page(
    client: redis.Redis,
) -> None:
    for n in range(5):
        push(client, envelope(f"t{n}"), dead_at=T0 + n)

    entries, next_offset = list_dead_letters(client, KEYS, "default", limit=2)
    assert ids(entries) == ["t4", "t3"]
    assert next_offset == 2
    entries, next_offset = list_dead_letters(client, KEYS, "default", limit=2, offset=4)
    assert ids(entries) == ["t0"]
    assert next_offset is None
    # A page that is exactly full says there may be more, as Stem's does.
    assert list_dead_letters(client, KEYS, "default", limit=5)[1] == 5
    assert list_dead_letters(client, KEYS, "missing") == ([], None)


def test_list_decodes_every_field_stem_writes(client: redis.Redis) -> None:
    env = envelope("t1", priority=3, not_before=T0 - 10, visibility_timeout_ms=30000)
    push(client, env, dead_at=T0 + 0.123, reason="signature-invalid",
         meta={"error": "bad signature", "keyId": "k1"})
    page = list_dead_letters(client, KEYS, "default")
    assert isinstance(page, DeadLetterPage)
    (entry,) = page.entries
    assert entry.envelope == env
    assert entry.reason == "signature-invalid"
    assert entry.meta == {"error": "bad signature", "keyId": "k1"}
    assert entry.dead_at == pytest.approx(T0 + 0.123)
    assert entry.to_json()["deadAt"] == "2026-01-01T00:00:00.123Z"


def test_malformed_elements_are_skipped_and_counted(client: redis.Redis) -> None:
    key = KEYS.dead("default")
    push(client, envelope("old"), dead_at=T0)
    client.lpush(key, "not json")
    client.lpush(key, json.dumps({"reason": "x", "deadAt": dart_iso(T0)}))  # no envelope
    client.lpush(key, json.dumps({"envelope": envelope("x").to_json()}))  # no deadAt
    client.lpush(key, json.dumps({"envelope": {"id": "y", "args": {}}, "deadAt": dart_iso(T0)}))
    client.lpush(key, '{"envelope":{"id":"z","name":"n","args":[]},'
                      '"deadAt":"2026-01-01T00:00:00.000Z"}')  # args must be an object
    push(client, envelope("new"), dead_at=T0 + 1)

    page = list_dead_letters(client, KEYS, "default", limit=4)
    assert ids(page.entries) == ["new"]
    assert page.skipped == 3
    assert [error.kind for error in page.parse_errors] == ["dead_letter"] * 3
    assert page.next_offset == 4  # past the skipped elements: paging goes on
    page = list_dead_letters(client, KEYS, "default", limit=4, offset=4)
    assert ids(page.entries) == ["old"]
    assert page.skipped == 2
    assert page.next_offset is None

    assert get_dead_letter(client, KEYS, "default", "old") is not None
    replayed = replay_dead_letters(client, KEYS, "default", clock=clock)
    assert ids(replayed) == ["old", "new"]
    assert client.llen(key) == 5  # the malformed elements are left alone


def test_list_rejects_bad_paging(client: redis.Redis) -> None:
    with pytest.raises(ConfigError, match="limit"):
        list_dead_letters(client, KEYS, "default", limit=0)
    with pytest.raises(ConfigError, match="offset"):
        list_dead_letters(client, KEYS, "default", offset=-1)


def test_get_returns_the_newest_entry_with_that_id(client: redis.Redis) -> None:
    push(client, envelope("t1", attempt=0), dead_at=T0, reason="first")
    push(client, envelope("t2"), dead_at=T0 + 1)
    push(client, envelope("t1", attempt=1), dead_at=T0 + 2, reason="second")

    entry = get_dead_letter(client, KEYS, "default", "t1")
    assert entry is not None
    assert entry.reason == "second"
    assert entry.envelope.attempt == 1
    assert get_dead_letter(client, KEYS, "default", "nope") is None
    assert get_dead_letter(client, KEYS, "other", "t1") is None


# --------------------------------------------------------------------------- replay


def test_replay_filters_sorts_oldest_first_and_limits(client: redis.Redis) -> None:
    push(client, envelope("a"), dead_at=T0 + 1)
    push(client, envelope("b", name="reports.build"), dead_at=T0 + 2)
    push(client, envelope("c"), dead_at=T0 + 3, reason="unregistered-task", meta=None)
    push(client, envelope("d"), dead_at=T0 + 4)
    push(client, envelope("e"), dead_at=T0 + 5)

    def dry(**kwargs: Any) -> list[str]:
        return ids(replay_dead_letters(client, KEYS, "default", dry_run=True, clock=clock,
                                       **kwargs))

    assert dry() == ["a", "b", "c", "d", "e"]
    assert dry(limit=2) == ["a", "b"]
    assert dry(since=T0 + 3) == ["c", "d", "e"]
    assert dry(since=datetime(2026, 1, 1, 0, 0, 4, tzinfo=UTC)) == ["d", "e"]
    assert dry(since=datetime(2026, 1, 1, 0, 0, 4)) == ["d", "e"]  # naive = UTC
    assert dry(since=datetime(2026, 1, 1, 1, 0, 4, tzinfo=timezone(timedelta(hours=1)))) == [
        "d", "e"]
    assert dry(task_name="reports.build") == ["b"]
    assert dry(reason="unregistered-task") == ["c"]
    assert dry(reason="max-retries-exhausted", since=T0 + 2, limit=2) == ["b", "d"]
    assert dry(task_name="nothing") == []

    replayed = replay_dead_letters(client, KEYS, "default", limit=2, since=T0 + 2,
                                   reason="max-retries-exhausted", clock=clock)
    assert ids(replayed) == ["b", "d"]
    remaining = list_dead_letters(client, KEYS, "default").entries
    assert ids(remaining) == ["e", "c", "a"]
    assert sorted(stream_ids(client, KEYS.stream("default"))) == ["b", "d"]


def test_replay_rejects_bad_arguments(client: redis.Redis) -> None:
    with pytest.raises(ConfigError, match="limit"):
        replay_dead_letters(client, KEYS, "default", limit=0)
    for delay in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="delay_s"):
            replay_dead_letters(client, KEYS, "default", delay_s=delay)


def test_dry_run_changes_nothing(client: redis.Redis) -> None:
    push(client, envelope("a"), dead_at=T0)
    client.set(KEYS.result("a"), dumps({"id": "a", "state": "failed"}))
    before = client.lrange(KEYS.dead("default"), 0, -1)

    replayed = replay_dead_letters(client, KEYS, "default", dry_run=True, delay_s=30,
                                   clock=clock)
    assert ids(replayed) == ["a"]
    assert replayed[0].envelope.attempt == 2  # as it is in the list
    assert client.lrange(KEYS.dead("default"), 0, -1) == before
    assert sorted(client.keys("*")) == [KEYS.dead("default").encode(),
                                        KEYS.result("a").encode()]
    assert client.get(KEYS.result("a")) == dumps({"id": "a", "state": "failed"}).encode()


def test_replay_with_a_delay_goes_to_the_delayed_set(client: redis.Redis) -> None:
    env = envelope("a", queue="emails", priority=4)
    push(client, env, dead_at=T0, queue="emails")

    replayed = replay_dead_letters(client, KEYS, "emails", delay_s=30, clock=clock)
    assert ids(replayed) == ["a"]
    assert client.llen(KEYS.dead("emails")) == 0
    members = delayed(client, "emails")
    assert members == [(
        dumps(Envelope(**{**_fields(env), "attempt": 3, "not_before": NOW + 30})
              .to_json()).encode(),
        (NOW + 30) * 1000,
    )]
    member = json.loads(members[0][0])
    assert list(member) == ["id", "name", "args", "headers", "enqueuedAt", "notBefore",
                            "priority", "attempt", "maxRetries", "visibilityTimeout", "queue",
                            "meta"]
    assert member["notBefore"] == "2026-01-01T01:00:30.000Z"
    assert member["attempt"] == 3
    assert not client.exists(KEYS.stream("emails", 4))


def test_replay_keeps_a_future_not_before_when_no_delay_is_given(client: redis.Redis) -> None:
    push(client, envelope("a", not_before=NOW + 120), dead_at=T0)
    replay_dead_letters(client, KEYS, "default", clock=clock)
    ((member, score),) = delayed(client, "default")
    assert score == (NOW + 120) * 1000
    assert json.loads(member)["notBefore"] == dart_iso(NOW + 120)


def test_replay_without_delay_xadds_the_twelve_fields_to_the_priority_stream(
    client: redis.Redis,
) -> None:
    env = envelope("a", queue="elsewhere", priority=3, not_before=T0 - 5,
                   visibility_timeout_ms=30000, meta={"k": "ü"})
    push(client, env, dead_at=T0, queue="default")
    push(client, envelope("b", priority=0, enqueued_at=None), dead_at=T0 + 1)

    replay_dead_letters(client, KEYS, "default", clock=clock)

    (fields,) = stream_entries(client, KEYS.stream("default", 3))
    assert list(fields) == STREAM_FIELDS
    assert fields == {
        "id": "a", "name": "emails.send", "args": '{"to":"a@example.com"}',
        "headers": '{"stem-args-encoder":"json"}', "enqueuedAt": dart_iso(T0 - 60),
        "notBefore": dart_iso(T0 - 5), "priority": "3", "attempt": "3", "maxRetries": "2",
        "visibilityTimeout": "30000", "queue": "default", "meta": '{"k":"ü"}',
    }
    (fields,) = stream_entries(client, KEYS.stream("default"))
    assert fields["id"] == "b"
    assert fields["notBefore"] == ""
    assert fields["visibilityTimeout"] == ""
    assert fields["enqueuedAt"] == dart_iso(NOW)  # Envelope.fromJson's default
    for stream in (KEYS.stream("default", 3), KEYS.stream("default")):
        groups = client.xinfo_groups(stream)
        assert [g["name"] for g in groups] == [KEYS.group("default").encode()]
        assert groups[0]["lag"] == 1  # created at 0: the entry is waiting for a consumer
    assert client.zcard(KEYS.delayed("default")) == 0


def test_replay_removes_elements_that_are_not_utf8(client: redis.Redis) -> None:
    element = dead_letter_json(envelope("a"), dead_at=T0, reason="bad-\x00").encode()
    element = element.replace(b"bad-\\u0000", b"bad-\xff")  # invalid UTF-8, valid JSON
    client.lpush(KEYS.dead("default"), element)
    (entry,) = list_dead_letters(client, KEYS, "default").entries
    assert entry.reason == "bad-\udcff"
    # The element goes back to LREM byte for byte (DeadLetter.raw is text, not sendable).
    assert ids(replay_dead_letters(client, KEYS, "default", clock=clock)) == ["a"]
    assert client.llen(KEYS.dead("default")) == 0


def test_replay_into_an_existing_group_ignores_busygroup(client: redis.Redis) -> None:
    stream = KEYS.stream("default")
    client.xgroup_create(stream, KEYS.group("default"), id="0", mkstream=True)
    push(client, envelope("a"), dead_at=T0)
    assert ids(replay_dead_letters(client, KEYS, "default", clock=clock)) == ["a"]
    assert stream_ids(client, stream) == ["a"]


def test_replay_rewrites_existing_status_records(client: redis.Redis) -> None:
    record: dict[str, Any] = {
        "id": "a", "state": "failed", "payload": {"partial": [1, 2]},
        "error": {"type": "Exception", "message": "boom", "stack": "#0 main", "retryable": False,
                  "meta": {}},
        "meta": {"stem.task": "emails.send", "queue": "default", "worker": "w1",
                 "failedAt": dart_iso(T0)},
        "attempt": 2, "createdAt": dart_iso(T0 - 60), "updatedAt": dart_iso(T0),
    }
    client.set(KEYS.result("a"), dumps(record), px=1000)
    push(client, envelope("a"), dead_at=T0)
    push(client, envelope("b"), dead_at=T0 + 1)  # no status record: none is created

    replay_dead_letters(client, KEYS, "default", delay_s=1.5, clock=clock)

    assert not client.exists(KEYS.result("b"))
    rewritten = json.loads(client.get(KEYS.result("a")) or b"null")
    assert list(rewritten) == ["id", "state", "payload", "error", "meta", "attempt",
                               "createdAt", "updatedAt"]
    assert rewritten == {
        **record,
        "meta": {**record["meta"], "lastReplayAt": dart_iso(NOW), "replayCount": 1,
                 "lastReplayReason": "max-retries-exhausted", "lastReplayDelayMs": 1500},
        "updatedAt": dart_iso(NOW),
    }
    assert STATUS_TTL_MS - 5000 < client.pttl(KEYS.result("a")) <= STATUS_TTL_MS

    push(client, envelope("a"), dead_at=T0 + 2, reason="unregistered-task")
    replay_dead_letters(client, KEYS, "default", clock=clock)
    meta = json.loads(client.get(KEYS.result("a")) or b"null")["meta"]
    assert meta["replayCount"] == 2
    assert meta["lastReplayReason"] == "unregistered-task"
    assert meta["lastReplayDelayMs"] is None


def test_status_records_live_on_the_backend_under_its_namespace(
    client: redis.Redis, redis_url: str,
) -> None:
    keys = StemKeys(broker="brk", backend="res")
    backend = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/1")
    try:
        backend.flushdb()
        backend.set(keys.result("a"), dumps({"id": "a", "state": "failed", "attempt": 0}))
        client.lpush(keys.dead("q"), dead_letter_json(envelope("a", queue="q"), dead_at=T0))
        replay_dead_letters(client, keys, "q", clock=clock, backend=backend)
        assert json.loads(backend.get(keys.result("a")) or b"null")["meta"]["replayCount"] == 1
        assert not client.exists(keys.result("a"))
        assert stream_ids(client, "brk:stream:q") == ["a"]

        client.lpush(keys.dead("q"), dead_letter_json(envelope("a", queue="q"), dead_at=T0))
        replay_dead_letters(client, keys, "q", clock=clock, backend=backend, update_status=False)
        assert json.loads(backend.get(keys.result("a")) or b"null")["meta"]["replayCount"] == 1
    finally:
        backend.flushdb()
        backend.close()


def test_concurrent_replays_publish_each_entry_once(
    client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for n in range(20):
        push(client, envelope(f"t{n:02d}"), dead_at=T0 + n)
    barrier = threading.Barrier(2)
    reads: list[str] = []
    replayers = [redis.Redis.from_url(redis_url) for _ in range(2)]
    for replayer in replayers:
        read = replayer.lrange

        def lrange_then_wait(name: str, start: int, end: int,
                             read: Any = read) -> list[bytes | str]:
            items: list[bytes | str] = read(name, start, end)
            reads.append(name)
            barrier.wait(timeout=10)  # both have read the whole list before either removes
            return items

        monkeypatch.setattr(replayer, "lrange", lrange_then_wait)
    try:
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(replay_dead_letters, replayer, KEYS, "default", limit=50,
                                   clock=clock) for replayer in replayers]
            results = [future.result(timeout=30) for future in futures]
    finally:
        for replayer in replayers:
            replayer.close()
    assert reads == [KEYS.dead("default")] * 2
    replayed = ids(results[0]) + ids(results[1])
    assert sorted(replayed) == [f"t{n:02d}" for n in range(20)]  # each exactly once
    assert sorted(stream_ids(client, KEYS.stream("default"))) == sorted(replayed)
    assert client.llen(KEYS.dead("default")) == 0


def _fields(env: Envelope) -> dict[str, Any]:
    return {name: getattr(env, name) for name in Envelope.__dataclass_fields__}
