"""The simulator against a real Redis: the exact keys, types, TTLs, JSON and key order of the
Stem Redis reference (``stem-redis.md``), and what ``inspect.queue_stats`` reads at each step."""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
import redis

from stem_observe import events as ev
from stem_observe.sources.stem.beat_simulator import SCHEDULE_LOCK_TTL_MS, SimulatedBeat
from stem_observe.sources.stem.inspect import QueueStats, discover_queues, queue_stats
from stem_observe.sources.stem.keys import StemKeys
from stem_observe.sources.stem.schedules import ScheduleTracker
from stem_observe.sources.stem.simulator import (
    HEARTBEAT_TTL_MS,
    RESULT_TTL_MS,
    Delivery,
    StemSimulator,
    retry_delay_ms,
    uuid7,
)
from stem_observe.sources.stem.wire import (
    Envelope,
    ParseError,
    dart_iso,
    dumps,
    parse_dead_letter,
    parse_envelope_fields,
    parse_envelope_json,
    parse_heartbeat,
    parse_schedule,
    parse_status,
)
from tests.support.wait import wait_for

STREAM_FIELDS = ["id", "name", "args", "headers", "enqueuedAt", "notBefore", "priority",
                 "attempt", "maxRetries", "visibilityTimeout", "queue", "meta"]
RECORD_KEYS = ["id", "state", "payload", "error", "meta", "attempt", "createdAt", "updatedAt"]
ENVELOPE_META = {"stem.task": "demo.task", "__stemArgsEncoder": "json"}
BASE_META = {**ENVELOPE_META, "task": "demo.task", "queue": "default", "stem.queue": "default"}
UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


class FakeClock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = int(time.time()) + 0.25

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    @property
    def iso(self) -> str:
        return dart_iso(self.now)

    @property
    def ms(self) -> int:
        return round(self.now * 1_000_000) // 1000


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url, decode_responses=True)
    yield connection
    connection.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(redis_url: str, clock: FakeClock) -> Iterator[StemSimulator]:
    """A simulator on a bytes client (redis-py's default); tests read with ``client``."""
    connection = redis.Redis.from_url(redis_url)
    yield StemSimulator(connection, clock=clock, rng=random.Random(7))
    connection.close()


@pytest.fixture
def beat(sim: StemSimulator) -> SimulatedBeat:
    return SimulatedBeat(sim)


def stats(client: redis.Redis, clock: FakeClock, queue: str = "default",
          keys: StemKeys | None = None) -> QueueStats:
    keys = keys or StemKeys()
    found = queue_stats(client, keys, discover_queues(client, keys), now=clock.now)
    return found.get(queue) or QueueStats(queue)


def xrange(client: redis.Redis, stream: str) -> list[tuple[str, dict[str, str]]]:
    """``XRANGE - +`` with redis-py's loose return type pinned down (str client)."""
    return [(entry_id, dict(fields or {})) for entry_id, fields in cast(Any, client.xrange(stream))]


def zmembers(client: redis.Redis, key: str) -> list[tuple[str, float]]:
    return [(member, score) for member, score in cast(
        Any, client.zrange(key, 0, -1, withscores=True))]


def counts(entry: QueueStats) -> tuple[int, int, int, int]:
    return entry.pending, entry.inflight, entry.delayed, entry.dead_letters


def record(client: redis.Redis, task_id: str) -> Any:
    raw = client.get(f"stem:result:{task_id}")
    assert isinstance(raw, str)
    return json.loads(raw)


def assert_result_ttl(client: redis.Redis, task_id: str) -> None:
    ttl = client.pttl(f"stem:result:{task_id}")
    assert isinstance(ttl, int)
    assert RESULT_TTL_MS - 5_000 < ttl <= RESULT_TTL_MS


def only(deliveries: list[Delivery]) -> Delivery:
    assert len(deliveries) == 1, deliveries
    return deliveries[0]


# --------------------------------------------------------------------------- enqueue


def test_enqueue_writes_what_v11_shows(
    sim: StemSimulator, client: redis.Redis, clock: FakeClock,
) -> None:
    envelope = sim.enqueue("demo.task", {"a": 1})
    task_id = envelope.id
    assert UUID7.fullmatch(task_id)
    assert set(client.keys("*")) == {"stem:stream:default", f"stem:result:{task_id}"}
    assert client.type("stem:stream:default") == "stream"
    assert client.type(f"stem:result:{task_id}") == "string"
    [group] = client.xinfo_groups("stem:stream:default")
    assert group["name"] == "stem:group:default"
    assert (group["consumers"], group["pending"], group["lag"]) == (0, 0, 1)
    [(_entry_id, fields)] = xrange(client, "stem:stream:default")
    assert list(fields.items()) == [
        ("id", task_id), ("name", "demo.task"), ("args", '{"a":1}'),
        ("headers", '{"stem-args-encoder":"json"}'), ("enqueuedAt", clock.iso),
        ("notBefore", ""), ("priority", "0"), ("attempt", "0"), ("maxRetries", "0"),
        ("visibilityTimeout", ""), ("queue", "default"),
        ("meta", '{"stem.task":"demo.task","__stemArgsEncoder":"json"}'),
    ]
    assert parse_envelope_fields(fields) == envelope
    assert client.get(f"stem:result:{task_id}") == (
        f'{{"id":"{task_id}","state":"queued","payload":null,"error":null,'
        '"meta":{"stem.task":"demo.task","__stemArgsEncoder":"json","queue":"default",'
        '"maxRetries":0,"__stemResultEncoder":"json"},"attempt":0,'
        f'"createdAt":"{clock.iso}","updatedAt":"{clock.iso}"}}'
    )
    assert_result_ttl(client, task_id)
    assert counts(stats(client, clock)) == (1, 0, 0, 0)


def test_enqueue_options_priority_headers_and_meta(
    sim: StemSimulator, client: redis.Redis, clock: FakeClock,
) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    envelope = sim.enqueue(
        "mail.send", {"to": "a@b.c"}, queue="emails", priority=5, max_retries=3,
        headers={"x-tenant": "acme"}, meta={"source": "test"}, task_id="task-42",
        traceparent=traceparent,
    )
    assert envelope.id == "task-42"
    assert set(client.keys("stem:stream:*")) == {"stem:stream:emails:p5"}
    assert [g["name"] for g in client.xinfo_groups("stem:stream:emails:p5")] == [
        "stem:group:emails"]
    [(_entry_id, fields)] = xrange(client, "stem:stream:emails:p5")
    assert list(fields) == STREAM_FIELDS
    assert fields["headers"] == (
        f'{{"x-tenant":"acme","traceparent":"{traceparent}","stem-args-encoder":"json"}}')
    assert fields["meta"] == (
        '{"source":"test","stem.task":"mail.send","__stemArgsEncoder":"json"}')
    assert (fields["priority"], fields["maxRetries"], fields["queue"]) == ("5", "3", "emails")
    status = record(client, "task-42")
    assert list(status) == RECORD_KEYS
    assert status["meta"] == {"source": "test", "stem.task": "mail.send",
                              "__stemArgsEncoder": "json", "queue": "emails",
                              "maxRetries": 3, "__stemResultEncoder": "json"}
    sim.enqueue("mail.send", queue="emails", priority=12)  # >= 9 clamps to p9
    assert client.xlen("stem:stream:emails:p9") == 1
    assert counts(stats(client, clock, "emails")) == (2, 0, 0, 0)


def test_enqueue_delayed_goes_to_the_zset_only(
    sim: StemSimulator, client: redis.Redis, clock: FakeClock,
) -> None:
    due = clock.now + 30
    envelope = sim.enqueue("demo.task", {"a": 1}, not_before=due)
    assert set(client.keys("*")) == {"stem:delayed:default", f"stem:result:{envelope.id}"}
    assert client.type("stem:delayed:default") == "zset"
    [(member, score)] = zmembers(client, "stem:delayed:default")
    assert score == clock.ms + 30_000
    data = json.loads(member)
    assert list(data) == STREAM_FIELDS
    assert data["notBefore"] == dart_iso(due)
    assert (data["visibilityTimeout"], data["attempt"]) == (None, 0)
    assert member == dumps(envelope.to_json())
    assert parse_envelope_json(member) == envelope
    assert record(client, envelope.id)["state"] == "queued"
    entry = stats(client, clock)
    assert counts(entry) == (0, 0, 1, 0)
    assert entry.delayed_overdue == 0
    assert entry.streams == []


def test_enqueue_with_a_past_or_aware_not_before_publishes_now(
    sim: StemSimulator, client: redis.Redis, clock: FakeClock,
) -> None:
    past = sim.enqueue("demo.task", not_before=clock.now - 5)
    aware = sim.enqueue("demo.task", not_before=datetime.fromtimestamp(clock.now + 60, UTC))
    entries = xrange(client, "stem:stream:default")
    assert [fields["id"] for _id, fields in entries] == [past.id]
    assert entries[0][1]["notBefore"] == dart_iso(clock.now - 5)  # kept, not honoured
    assert client.zscore("stem:delayed:default", dumps(aware.to_json())) == clock.ms + 60_000


# --------------------------------------------------------------------------- deliver


def test_deliver_ensures_ten_groups_and_reads_highest_priority_first(
    sim: StemSimulator, client: redis.Redis, clock: FakeClock,
) -> None:
    low = sim.enqueue("demo.task", priority=0)
    mid = sim.enqueue("demo.task", priority=3)
    high = sim.enqueue("demo.task", priority=9)
    assert counts(stats(client, clock)) == (3, 0, 0, 0)
    deliveries = sim.deliver("default", "worker-1")
    assert [d.envelope.id for d in deliveries] == [high.id, mid.id, low.id]
    assert [d.stream for d in deliveries] == [
        "stem:stream:default:p9", "stem:stream:default:p3", "stem:stream:default"]
    assert deliveries[0].envelope == high
    first = deliveries[0]
    assert (first.consumer, first.group) == ("worker-1", "stem:group:default")
    assert first.receipt == (
        f"stem:stream:default:p9|stem:group:default|worker-1|{first.entry_id}")
    for stream in StemKeys().streams("default"):
        assert client.type(stream) == "stream"
        assert [g["name"] for g in client.xinfo_groups(stream)] == ["stem:group:default"]
    summary = client.xpending("stem:stream:default:p3", "stem:group:default")
    assert summary["pending"] == 1
    assert summary["consumers"] == [{"name": "worker-1", "pending": 1}]
    assert counts(stats(client, clock)) == (0, 3, 0, 0)
    assert sim.deliver("default", "worker-1") == []


def test_deliver_count_applies_per_stream(
    sim: StemSimulator, client: redis.Redis, clock: FakeClock,
) -> None:
    ids = [sim.enqueue("demo.task", {"n": n}).id for n in range(3)]
    assert [d.envelope.id for d in sim.deliver("default", "w", count=2)] == ids[:2]
    assert counts(stats(client, clock)) == (1, 2, 0, 0)
    assert [d.envelope.id for d in sim.deliver("default", "w", count=2)] == ids[2:]


def test_deliver_drains_due_delayed_envelopes_first(
    sim: StemSimulator, client: redis.Redis, clock: FakeClock,
) -> None:
    envelope = sim.enqueue("demo.task", {"a": 1}, priority=4, not_before=clock.now + 10)
    assert sim.deliver("default", "w") == []
    assert client.zcard("stem:delayed:default") == 1
    clock.advance(10)
    entry = stats(client, clock)
    assert counts(entry) == (0, 0, 1, 0)
    assert entry.delayed_overdue == 1
    delivery = only(sim.deliver("default", "w"))
    assert delivery.stream == "stem:stream:default:p4"
    assert delivery.envelope == envelope  # notBefore kept in the stream entry
    assert client.zcard("stem:delayed:default") == 0
    assert counts(stats(client, clock)) == (0, 1, 0, 0)


def test_drained_envelopes_take_the_delayed_keys_queue(
    sim: StemSimulator, client: redis.Redis, clock: FakeClock,
) -> None:
    stray = Envelope(id="t-9", name="demo.task", queue="elsewhere", enqueued_at=clock.now,
                     not_before=clock.now - 1)
    client.zadd("stem:delayed:default", {dumps(stray.to_json()): clock.ms - 1000})
    delivery = only(sim.deliver("default", "w"))
    assert delivery.envelope.queue == "default"
    assert delivery.envelope.id == "t-9"
    assert client.keys("stem:stream:elsewhere*") == []


# --------------------------------------------------------------------------- outcomes


def test_start_then_succeed(sim: StemSimulator, client: redis.Redis, clock: FakeClock) -> None:
    created = clock.iso
    envelope = sim.enqueue("demo.task", {"a": 1}, meta={"tenant": "acme"})
    delivery = only(sim.deliver("default", "consumer-1"))
    clock.advance(1.5)
    started = clock.iso
    sim.start(delivery, "consumer-1")
    meta = {"tenant": "acme", **BASE_META, "worker": "consumer-1", "startedAt": started}
    assert client.get(f"stem:result:{envelope.id}") == dumps({
        "id": envelope.id, "state": "running", "payload": None, "error": None,
        "meta": {**meta, "__stemResultEncoder": "json"}, "attempt": 0,
        "createdAt": created, "updatedAt": started,
    })
    assert_result_ttl(client, envelope.id)
    assert counts(stats(client, clock)) == (0, 1, 0, 0)

    clock.advance(0.25)
    sim.succeed(delivery, "consumer-1", {"ok": True})
    assert client.xpending("stem:stream:default", "stem:group:default")["pending"] == 0
    assert client.get(f"stem:result:{envelope.id}") == dumps({
        "id": envelope.id, "state": "succeeded", "payload": {"ok": True}, "error": None,
        "meta": {"tenant": "acme", **BASE_META, "worker": "consumer-1",
                 "completedAt": clock.iso, "startedAt": started,
                 "__stemResultEncoder": "json"},
        "attempt": 0, "createdAt": created, "updatedAt": clock.iso,
    })
    assert_result_ttl(client, envelope.id)
    parsed = parse_status(client.get(f"stem:result:{envelope.id}") or "")
    assert (parsed.state, parsed.worker, parsed.task_name) == (
        "succeeded", "consumer-1", "demo.task")
    assert counts(stats(client, clock)) == (0, 0, 0, 0)


def test_a_worker_without_consumer_name_writes_null(
    sim: StemSimulator, client: redis.Redis,
) -> None:
    envelope = sim.enqueue("demo.task")
    delivery = only(sim.deliver("default", "random-consumer"))
    sim.start(delivery, None)
    assert record(client, envelope.id)["meta"]["worker"] is None


def test_retry_then_final_failure(
    sim: StemSimulator, client: redis.Redis, clock: FakeClock,
) -> None:
    created = clock.iso
    envelope = sim.enqueue("demo.task", {"a": 1}, max_retries=1)
    first = only(sim.deliver("default", "w-1"))
    sim.start(first, "w-1")
    clock.advance(0.5)
    assert sim.fail(first, "w-1", "StateError", "boom", stack="#0 main") == "retried"

    # V13: XACK, then ZADD a copy with attempt + 1 and notBefore = now + delay
    assert client.xpending("stem:stream:default", "stem:group:default")["pending"] == 0
    [(member, score)] = zmembers(client, "stem:delayed:default")
    delay = int(score) - clock.ms
    assert 1500 <= delay <= 2000  # §5.1, attempt 0
    retry = parse_envelope_json(member)
    assert (retry.id, retry.attempt, retry.max_retries) == (envelope.id, 1, 1)
    assert retry.not_before is not None
    assert round(retry.not_before * 1000) == int(score)
    assert member == dumps({**envelope.to_json(), "notBefore": dart_iso(score / 1000),
                            "attempt": 1})
    assert client.get(f"stem:result:{envelope.id}") == dumps({
        "id": envelope.id, "state": "retried", "payload": None,
        "error": {"type": "StateError", "message": "StateError: boom", "stack": "#0 main",
                  "retryable": True, "meta": {}},
        "meta": {**BASE_META, "retryDelayMs": delay, "__stemResultEncoder": "json"},
        "attempt": 0, "createdAt": created, "updatedAt": clock.iso,
    })
    assert counts(stats(client, clock)) == (0, 0, 1, 0)

    clock.advance(delay / 1000)
    second = only(sim.deliver("default", "w-1"))
    assert second.envelope == retry
    started = clock.iso
    sim.start(second, "w-1")
    assert record(client, envelope.id)["attempt"] == 1
    clock.advance(2)
    assert sim.fail(second, "w-1", "StateError", "boom") == "dead-lettered"

    assert client.xpending("stem:stream:default", "stem:group:default")["pending"] == 0
    assert client.type("stem:dead:default") == "list"
    [raw] = client.lrange("stem:dead:default", 0, -1)
    assert raw == dumps({"envelope": retry.to_json(), "reason": "max-retries-exhausted",
                         "meta": {"error": "StateError: boom"}, "deadAt": clock.iso})
    assert list(json.loads(raw)) == ["envelope", "reason", "meta", "deadAt"]
    assert client.get(f"stem:result:{envelope.id}") == dumps({
        "id": envelope.id, "state": "failed", "payload": None,
        "error": {"type": "StateError", "message": "StateError: boom", "stack": None,
                  "retryable": False, "meta": {}},
        "meta": {**BASE_META, "worker": "w-1", "failedAt": clock.iso, "startedAt": started,
                 "__stemResultEncoder": "json"},
        "attempt": 1, "createdAt": created, "updatedAt": clock.iso,
    })
    assert_result_ttl(client, envelope.id)
    entry = stats(client, clock)
    assert counts(entry) == (0, 0, 0, 1)
    assert entry.oldest_dead_letter == parse_dead_letter(raw)
    assert entry.oldest_dead_letter_age_s == 0


def test_first_failure_with_no_retries_goes_to_the_dlq(
    sim: StemSimulator, client: redis.Redis, clock: FakeClock,
) -> None:
    envelope = sim.enqueue("demo.task")  # maxRetries defaults to 0 (§5.3)
    delivery = only(sim.deliver("default", "w"))
    sim.start(delivery, "w")
    assert sim.fail(delivery, "w", "Exception", "boom") == "dead-lettered"
    letter = parse_dead_letter(client.lindex("stem:dead:default", 0) or "")
    assert (letter.envelope, letter.reason, letter.error) == (
        envelope, "max-retries-exhausted", "Exception: boom")
    assert client.zcard("stem:delayed:default") == 0
    assert counts(stats(client, clock)) == (0, 0, 0, 1)


def test_a_zero_delay_retry_is_published_to_the_stream(
    sim: StemSimulator, client: redis.Redis, clock: FakeClock,
) -> None:
    envelope = sim.enqueue("demo.task", priority=2, max_retries=2)
    delivery = only(sim.deliver("default", "w"))
    assert sim.fail(delivery, "w", "Exception", "boom", delay_ms=0) == "retried"
    assert client.exists("stem:delayed:default") == 0
    [_first, (_id, fields)] = xrange(client, "stem:stream:default:p2")
    assert (fields["id"], fields["attempt"], fields["notBefore"]) == (
        envelope.id, "1", clock.iso)
    assert record(client, envelope.id)["meta"]["retryDelayMs"] == 0
    assert counts(stats(client, clock)) == (1, 0, 0, 0)


def test_revoke_writes_cancelled(
    sim: StemSimulator, client: redis.Redis, clock: FakeClock,
) -> None:
    created = clock.iso
    envelope = sim.enqueue("demo.task")
    delivery = only(sim.deliver("default", "w"))
    clock.advance(1)
    sim.revoke(delivery, "w", "user asked", requested_by="dashboard")
    assert client.get(f"stem:result:{envelope.id}") == dumps({
        "id": envelope.id, "state": "cancelled", "payload": None, "error": None,
        "meta": {**BASE_META, "worker": "w", "revoked": True, "__stemResultEncoder": "json",
                 "revokedReason": "user asked", "revokedBy": "dashboard",
                 "revokedAt": clock.iso},
        "attempt": 0, "createdAt": created, "updatedAt": clock.iso,
    })
    assert counts(stats(client, clock)) == (0, 0, 0, 0)
    sim.enqueue("demo.task")
    other = only(sim.deliver("default", "w"))
    sim.revoke(other, "w", revoked_at=0.0)
    meta = record(client, other.envelope.id)["meta"]
    assert "revokedBy" not in meta
    assert (meta["revokedReason"], meta["revokedAt"]) == ("revoked", "1970-01-01T00:00:00.000Z")


def test_unregistered_task_is_dead_lettered_without_a_status_write(
    sim: StemSimulator, client: redis.Redis, clock: FakeClock,
) -> None:
    envelope = sim.enqueue("nobody.handles.this")
    queued = client.get(f"stem:result:{envelope.id}")
    delivery = only(sim.deliver("default", "w"))
    clock.advance(3)
    sim.dead_letter_unregistered(delivery)
    assert client.lrange("stem:dead:default", 0, -1) == [dumps({
        "envelope": envelope.to_json(), "reason": "unregistered-task", "meta": None,
        "deadAt": clock.iso})]
    assert client.get(f"stem:result:{envelope.id}") == queued
    assert counts(stats(client, clock)) == (0, 0, 0, 1)


def test_created_at_survives_an_unreadable_previous_record(
    sim: StemSimulator, client: redis.Redis, clock: FakeClock,
) -> None:
    envelope = sim.enqueue("demo.task")
    client.set(f"stem:result:{envelope.id}", "not json")
    clock.advance(1)
    sim.start(only(sim.deliver("default", "w")), "w")
    assert record(client, envelope.id)["createdAt"] == clock.iso


def test_run_task_outcomes(sim: StemSimulator, client: redis.Redis, clock: FakeClock) -> None:
    assert sim.run_task("a", result=1).outcome == "succeeded"
    assert sim.run_task("b", outcome="fail", max_retries=1).outcome == "retried"
    assert sim.run_task("c", outcome="fail").outcome == "dead-lettered"
    assert sim.run_task("d", outcome="revoke").outcome == "cancelled"
    assert sim.run_task("e", outcome="unregistered").outcome == "dead-lettered"
    assert counts(stats(client, clock)) == (0, 0, 1, 2)
    waiting = sim.enqueue("f", priority=9)
    run = sim.run_task("g", queue="default")
    assert [d.envelope.id for d in run.others] == [waiting.id]  # left in flight
    assert counts(stats(client, clock)) == (0, 1, 1, 2)
    older = sim.enqueue("h")  # a backlog ahead of it on the same stream
    with pytest.raises(LookupError, match="was not delivered"):
        sim.run_task("i")
    assert counts(stats(client, clock)) == (1, 2, 1, 2)  # "h" in flight, "i" pending
    assert record(client, older.id)["state"] == "queued"


# --------------------------------------------------------------------------- heartbeats


def test_heartbeat_is_stored_with_its_ttl(
    sim: StemSimulator, client: redis.Redis, clock: FakeClock,
) -> None:
    sim.enqueue("demo.task")
    delivery = only(sim.deliver("default", "w-1"))
    started = clock.now
    sim.start(delivery, "w-1")
    clock.advance(90)
    beat = sim.heartbeat("w-1", queues={"default": 1, "emails": 0}, isolate_count=2,
                         inflight=1, extras={"queueDepth": 4})
    raw = client.get("stem:worker:heartbeat:w-1")
    assert raw == dumps(beat)
    assert client.type("stem:worker:heartbeats") == "set"
    assert client.smembers("stem:worker:heartbeats") == {"w-1"}
    ttl = client.pttl("stem:worker:heartbeat:w-1")
    assert isinstance(ttl, int)
    assert HEARTBEAT_TTL_MS - 5_000 < ttl <= HEARTBEAT_TTL_MS
    assert list(beat) == ["workerId", "namespace", "timestamp", "isolateCount", "inflight",
                          "lastLeaseRenewal", "version", "queues", "extras"]
    assert beat["timestamp"] == clock.iso
    assert beat["lastLeaseRenewal"] == dart_iso(started)
    assert beat["version"] == "1"
    assert beat["queues"] == [{"name": "default", "inflight": 1}]
    extras = beat["extras"]
    assert {"host", "hostname", "pid", "concurrency", "maxConcurrency", "prefetch",
            "startedAt", "uptimeMs", "cpuCount", "started", "completed", "failed",
            "subscriptions", "queueDepth"} <= set(extras)
    assert extras["subscriptions"] == {"queues": ["default", "emails"]}
    assert (extras["started"], extras["completed"], extras["failed"]) == (1, 0, 0)
    assert (extras["uptimeMs"], extras["uptime"]) == (90_000, "1m")
    assert extras["prefetch"] == 2 * extras["concurrency"]
    event = parse_heartbeat(raw or "")
    assert (event.worker_id, event.namespace, event.inflight, event.isolate_count) == (
        "w-1", "stem", 1, 2)
    assert event.queues == ("default", "emails")
    assert event.queue_depth == 4
    assert event.uptime_s == 90


def test_heartbeat_namespaces_ttl_and_no_store(
    redis_url: str, client: redis.Redis, clock: FakeClock,
) -> None:
    keys = StemKeys(broker="unit", backend="res")
    sim = StemSimulator(redis.Redis.from_url(redis_url, decode_responses=True), keys,
                        worker_namespace="ops", clock=clock)
    beat = sim.heartbeat("w-2", ttl_ms=5_000)
    assert beat["namespace"] == "ops"
    assert beat["lastLeaseRenewal"] is None
    assert beat["queues"] == []
    assert beat["extras"]["subscriptions"] == {"queues": ["default"]}
    ttl = client.pttl("res:worker:heartbeat:w-2")
    assert isinstance(ttl, int)
    assert 0 < ttl <= 5_000
    assert client.smembers("res:worker:heartbeats") == {"w-2"}
    client.flushall()
    sim.heartbeat("w-2", store=False)
    assert client.dbsize() == 0


def test_heartbeat_is_published_on_the_worker_namespace_channel(
    redis_url: str, client: redis.Redis, clock: FakeClock,
) -> None:
    sim = StemSimulator(redis.Redis.from_url(redis_url), worker_namespace="ops", clock=clock)
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    try:
        pubsub.subscribe("stem:heartbeat:ops")
        wait_for(lambda: pubsub.get_message(timeout=0.05), message="subscribe confirmation")
        beat = sim.heartbeat("worker-a", publish=True, store=False)
        message = wait_for(lambda: pubsub.get_message(timeout=0.05), message="heartbeat")
        assert message["type"] == "message"
        assert message["channel"] == "stem:heartbeat:ops"
        assert message["data"] == dumps(beat)
        assert parse_heartbeat(message["data"]).worker_id == "worker-a"
        assert client.dbsize() == 0  # publish only: no keys
    finally:
        pubsub.close()


# --------------------------------------------------------------------------- namespaces etc.


def test_v10_namespaced_broker_and_backend_keys(
    redis_url: str, client: redis.Redis, clock: FakeClock,
) -> None:
    keys = StemKeys(broker="unit", backend="res")
    sim = StemSimulator(redis.Redis.from_url(redis_url, decode_responses=True), keys,
                        clock=clock)
    envelope = sim.enqueue("mail.send", queue="emails", max_retries=1)
    assert client.exists("res:result:" + envelope.id) == 1
    delivery = only(sim.deliver("emails", "w"))
    expected = {"unit:stream:emails", *(f"unit:stream:emails:p{p}" for p in range(1, 10))}
    assert set(client.keys("unit:stream:*")) == expected
    for stream in expected:
        assert [g["name"] for g in client.xinfo_groups(stream)] == ["unit:group:emails"]
    sim.fail(delivery, "w", "Exception", "boom", delay_ms=500)
    assert client.zcard("unit:delayed:emails") == 1
    clock.advance(1)
    sim.fail(only(sim.deliver("emails", "w")), "w", "Exception", "boom")
    assert client.llen("unit:dead:emails") == 1
    assert counts(stats(client, clock, "emails", keys)) == (0, 0, 0, 1)
    assert not client.keys("stem:*")


def test_retry_delays_follow_the_exponential_jitter_strategy() -> None:
    rng = random.Random(3)
    for attempt in range(12):
        capped = min(2000 * 2**attempt, 300_000)
        for _ in range(50):
            assert capped * 3 // 4 <= retry_delay_ms(attempt, rng) <= capped


def test_uuid7_ids() -> None:
    rng = random.Random(1)
    first, second = uuid7(1_700_000_000_123, rng), uuid7(1_700_000_000_124, rng)
    assert UUID7.fullmatch(first)
    assert uuid.UUID(first).version == 7
    assert int(first.replace("-", "")[:12], 16) == 1_700_000_000_123
    assert first < second
    assert uuid7(5, random.Random(9)) == uuid7(5, random.Random(9))


# --------------------------------------------------------------------------- Beat

SCHEDULE_FIELDS = ["taskName", "queue", "spec", "args", "kwargs", "enabled", "jitterMs",
                   "lastRunAt", "nextRunAt", "lastJitterMs", "lastError", "timezone",
                   "totalRunCount", "lastSuccessAt", "lastErrorAt", "driftMs", "expireAt",
                   "meta", "version"]
HISTORY_FIELDS = ["scheduledAt", "executedAt", "success", "durationMs", "error"]


def naive(epoch_s: float) -> str:
    """What Beat's ``DateTime.now().toIso8601String()`` writes on a UTC host."""
    return dart_iso(epoch_s)[:-1]


def test_add_schedule_writes_what_upsert_writes(
    beat: SimulatedBeat, client: redis.Redis, clock: FakeClock,
) -> None:
    beat.add_schedule("nightly", "reports.build", every_s=30, queue="reports",
                     args={"value": 1}, meta={"source": "test"})
    fields = cast(dict[str, str], client.hgetall("stem:schedule:nightly"))
    assert list(fields) == SCHEDULE_FIELDS  # HSET's order (§3.10)
    due = clock.now + 30
    assert fields == {
        "taskName": "reports.build", "queue": "reports",
        "spec": '{"kind":"interval","everyMs":30000}', "args": '{"value":1}', "kwargs": "{}",
        "enabled": "true", "jitterMs": "", "lastRunAt": "", "nextRunAt": dart_iso(due),
        "lastJitterMs": "", "lastError": "", "timezone": "", "totalRunCount": "0",
        "lastSuccessAt": "", "lastErrorAt": "", "driftMs": "", "expireAt": "",
        "meta": '{"source":"test"}', "version": "1",
    }
    assert zmembers(client, "stem:schedule:index") == [("nightly", float(round(due * 1000)))]
    entry = parse_schedule("nightly", fields)
    assert (entry.task_name, entry.queue, entry.next_run_at) == ("reports.build", "reports", due)
    beat.add_schedule("nightly", "reports.build", every_s=60, first_run_at=clock.now + 5)
    fields = cast(dict[str, str], client.hgetall("stem:schedule:nightly"))
    assert (fields["version"], fields["nextRunAt"]) == ("2", dart_iso(clock.now + 5))
    with pytest.raises(ValueError, match="every_s"):
        beat.add_schedule("bad", "t", every_s=0)


def test_beat_dispatches_due_entries_on_time_and_late(
    beat: SimulatedBeat, client: redis.Redis, clock: FakeClock,
) -> None:
    beat.add_schedule("tick", "clock.tick", every_s=10, queue="beat", meta={"team": "ops"})
    first_due = clock.now + 10
    assert beat.due_schedules() == []
    assert beat.beat_tick() == []
    clock.advance(10)
    assert beat.due_schedules() == [("tick", first_due)]
    (on_time,) = beat.beat_tick()
    assert (on_time.entry_id, on_time.scheduled_for, on_time.executed_at, on_time.error) == (
        "tick", first_due, clock.now, None)
    assert on_time.drift_s == 0
    envelope = on_time.envelope
    assert envelope is not None
    ((_, stream_fields),) = xrange(client, "stem:stream:beat")
    assert list(stream_fields) == STREAM_FIELDS
    assert parse_envelope_fields(stream_fields) == envelope
    assert (envelope.name, envelope.queue, envelope.attempt, envelope.max_retries) == (
        "clock.tick", "beat", 0, 0)
    assert envelope.headers == {"scheduled-from": "beat", "schedule-id": "tick"}
    assert envelope.meta == {"team": "ops"}
    assert client.get(f"stem:result:{envelope.id}") is None  # Beat writes no status record
    fields = cast(dict[str, str], client.hgetall("stem:schedule:tick"))
    executed = naive(clock.now)
    assert {k: fields[k] for k in ("lastRunAt", "nextRunAt", "lastError", "totalRunCount",
                                   "lastSuccessAt", "lastErrorAt", "driftMs", "version")} == {
        "lastRunAt": executed, "nextRunAt": naive(clock.now + 10), "lastError": "",
        "totalRunCount": "1", "lastSuccessAt": executed, "lastErrorAt": "", "driftMs": "0",
        "version": "2"}
    assert zmembers(client, "stem:schedule:index") == [("tick", float(clock.ms + 10_000))]
    assert client.exists("stem:schedule:tick:lock", "stem:lock:stem:schedule:tick") == 0
    # Beat ran 2.5 s late: the next run counts from this execution, not from the due time.
    clock.advance(12.5)
    (late,) = beat.beat_tick()
    assert late.drift_s == pytest.approx(2.5)
    history = xrange(client, "stem:schedule:tick:history")
    assert [list(fields) for _, fields in history] == [HISTORY_FIELDS, HISTORY_FIELDS]
    assert [fields for _, fields in history] == [
        {"scheduledAt": dart_iso(first_due), "executedAt": naive(first_due),
         "success": "true", "durationMs": "0", "error": ""},
        {"scheduledAt": naive(first_due + 10), "executedAt": naive(clock.now),
         "success": "true", "durationMs": "0", "error": ""},
    ]
    fields = cast(dict[str, str], client.hgetall("stem:schedule:tick"))
    assert (fields["driftMs"], fields["totalRunCount"], fields["version"]) == ("2500", "2", "3")
    assert fields["nextRunAt"] == naive(clock.now + 10)


def test_a_failed_dispatch_publishes_nothing_and_records_the_error(
    beat: SimulatedBeat, client: redis.Redis, clock: FakeClock,
) -> None:
    beat.add_schedule("sync", "crm.sync", every_s=5, queue="crm")
    clock.advance(6)
    (failed,) = beat.beat_tick(failing={"sync": "SocketException"})
    assert (failed.envelope, failed.error) == (None, "SocketException: publish failed")
    assert failed.drift_s == pytest.approx(1)
    assert not client.exists("stem:stream:crm")
    ((_, entry),) = xrange(client, "stem:schedule:sync:history")
    assert entry == {"scheduledAt": dart_iso(clock.now - 1), "executedAt": naive(clock.now),
                     "success": "false", "durationMs": "",
                     "error": "SocketException: publish failed"}
    fields = cast(dict[str, str], client.hgetall("stem:schedule:sync"))
    assert (fields["lastError"], fields["lastErrorAt"], fields["lastSuccessAt"]) == (
        "SocketException: publish failed", naive(clock.now), "")
    assert (fields["driftMs"], fields["totalRunCount"]) == ("1000", "1")
    clock.advance(5)
    (recovered,) = beat.beat_tick()
    assert recovered.error is None
    fields = cast(dict[str, str], client.hgetall("stem:schedule:sync"))
    assert (fields["lastError"], fields["lastSuccessAt"]) == ("", naive(clock.now))
    assert fields["lastErrorAt"] == naive(clock.now - 5)  # kept from the failure


def test_a_held_claim_or_lock_skips_the_dispatch(
    beat: SimulatedBeat, client: redis.Redis, clock: FakeClock,
) -> None:
    beat.add_schedule("once", "t", every_s=1)
    clock.advance(1)
    client.set("stem:lock:stem:schedule:once", "other-beat", px=SCHEDULE_LOCK_TTL_MS)
    assert beat.beat_tick() == []  # another Beat holds the lock store's lock
    ttl = client.pttl("stem:schedule:once:lock")  # the store's claim stays until it expires
    assert isinstance(ttl, int)
    assert 0 < ttl <= SCHEDULE_LOCK_TTL_MS
    assert beat.beat_tick() == []  # and keeps other Beats out meanwhile
    client.delete("stem:schedule:once:lock", "stem:lock:stem:schedule:once")
    client.hset("stem:schedule:once", "enabled", "false")
    assert beat.beat_tick() == []  # disabled: claimed, then released
    assert client.exists("stem:schedule:once:lock") == 0
    assert not client.exists("stem:schedule:once:history")
    assert client.get("stem:lock:stem:schedule:once") is None


def test_the_watcher_reads_beats_history_as_dispatches_with_drift(
    beat: SimulatedBeat, client: redis.Redis, clock: FakeClock,
) -> None:
    events: list[ev.Event] = []
    errors: list[ParseError] = []
    tracker = ScheduleTracker(client, StemKeys(), events.append, errors.append)
    beat.add_schedule("ok", "a.task", every_s=2, queue="qa")
    beat.add_schedule("bad", "b.task", every_s=2, queue="qb")
    tracker.poll(prime=True)
    clock.advance(2)
    beat.beat_tick(failing={"bad": "StateError"})
    clock.advance(3)  # "ok" one second late, "bad" failing again
    beat.beat_tick(failing={"bad": "StateError"})
    assert tracker.poll() == 4
    dispatched = [e for e in events if isinstance(e, ev.ScheduleEntryDispatched)]
    failed = [e for e in events if isinstance(e, ev.ScheduleEntryFailed)]
    due = [e for e in events if isinstance(e, ev.ScheduleEntryDue)]
    assert (len(events), len(due), errors) == (8, 4, [])  # each entry: due, then its outcome
    assert [(e.entry_id, e.task_name, e.queue) for e in dispatched] == [("ok", "a.task", "qa")] * 2
    assert [e.drift_s for e in dispatched] == [pytest.approx(0), pytest.approx(1)]
    assert [(e.entry_id, e.error_type, e.error_message) for e in failed] == [
        ("bad", "StateError", "publish failed")] * 2
    assert [e.occurred_at for e in dispatched] == [clock.now - 3, clock.now]
