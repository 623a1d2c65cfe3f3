"""``wire`` and ``keys`` against the Stem Redis reference (``stem-redis.md``): its vectors
V1-V13, the timestamp forms Stem writes, malformed input, and round-trip properties."""

from __future__ import annotations

import calendar
import contextlib
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stem_observe import events as ev
from stem_observe.sources.stem.keys import HEARTBEAT_CHANNEL_PREFIX, PRIORITIES, StemKeys
from stem_observe.sources.stem.wire import (
    STATES,
    DeadLetter,
    Envelope,
    ParseError,
    StatusError,
    dart_iso,
    dumps,
    heartbeat_to_json,
    parse_dead_letter,
    parse_envelope_fields,
    parse_envelope_json,
    parse_heartbeat,
    parse_status,
    parse_time,
)


def epoch(*parts: int) -> float:
    """Epoch seconds of a UTC wall time: year, month, day[, hour, minute, second, µs]."""
    year, month, day, hour, minute, second, micros = (*parts, 0, 0, 0, 0)[:7]
    seconds = calendar.timegm((year, month, day, hour, minute, second))
    return (seconds * 10**6 + micros) / 10**6


# --------------------------------------------------------------------------- V1-V3 heartbeats

V1 = (
    '{"workerId":"worker-1","namespace":"stem-prod","timestamp":"2024-01-02T03:04:05.000Z",'
    '"isolateCount":4,"inflight":2,"lastLeaseRenewal":"2024-01-02T03:04:00.000Z","version":"1",'
    '"queues":[{"name":"default","inflight":2}],"extras":{"host":"app-01"}}'
)
V2 = (
    '{"workerId":"worker-a","namespace":"ops","timestamp":"2024-01-01T00:00:00.000Z",'
    '"isolateCount":1,"inflight":0,"lastLeaseRenewal":null,"version":"1","queues":[],'
    '"extras":{}}'
)
V3 = (
    '{"workerId":"test-worker","namespace":"stem","timestamp":"2024-01-01T12:00:00.000Z",'
    '"isolateCount":2,"inflight":1,"lastLeaseRenewal":null,"version":"1",'
    '"queues":[{"name":"default","inflight":1}],"extras":{}}'
)


def test_v1_heartbeat_parses_into_an_event() -> None:
    beat = parse_heartbeat(V1)
    assert isinstance(beat, ev.WorkerHeartbeat)
    assert beat.worker_id == "worker-1"
    assert beat.namespace == "stem-prod"
    assert beat.timestamp == epoch(2024, 1, 2, 3, 4, 5)
    assert beat.occurred_at == beat.timestamp  # no seen_at: the heartbeat's own time
    assert beat.isolate_count == 4
    assert beat.inflight == 2
    assert beat.last_lease_renewal == epoch(2024, 1, 2, 3, 4, 0)
    assert beat.version == "1"
    assert beat.queue_loads == (ev.WorkerQueueLoad("default", 2),)
    assert beat.queues == ("default",)  # no subscriptions: the queues with work in flight
    assert beat.host == "app-01"
    assert beat.extras == {"host": "app-01"}
    assert beat.concurrency is None
    assert beat.pid is None
    assert beat.uptime_s is None
    assert parse_heartbeat(V1, seen_at=1.5).occurred_at == 1.5


def test_v1_heartbeat_serializes_byte_for_byte() -> None:
    beat = heartbeat_to_json(
        worker_id="worker-1", namespace="stem-prod", timestamp=epoch(2024, 1, 2, 3, 4, 5),
        isolate_count=4, inflight=2, last_lease_renewal=epoch(2024, 1, 2, 3, 4, 0),
        queues={"default": 2}, extras={"host": "app-01"},
    )
    assert dumps(beat) == V1


def test_v2_published_heartbeat_and_its_channel() -> None:
    beat = heartbeat_to_json(worker_id="worker-a", namespace="ops",
                             timestamp=epoch(2024, 1, 1), isolate_count=1, inflight=0)
    assert dumps(beat) == V2
    assert StemKeys.heartbeat_channel("ops") == "stem:heartbeat:ops"
    assert StemKeys.heartbeat_channel() == f"{HEARTBEAT_CHANNEL_PREFIX}stem"
    parsed = parse_heartbeat(V2)
    assert (parsed.worker_id, parsed.namespace, parsed.inflight) == ("worker-a", "ops", 0)
    assert parsed.last_lease_renewal is None
    assert parsed.queues == ()
    assert parsed.queue_loads == ()


def test_v3_stored_heartbeat_keys_and_fields() -> None:
    keys = StemKeys()
    assert keys.heartbeat("test-worker") == "stem:worker:heartbeat:test-worker"
    assert keys.heartbeats() == "stem:worker:heartbeats"
    beat = heartbeat_to_json(worker_id="test-worker", namespace="stem",
                             timestamp=epoch(2024, 1, 1, 12), isolate_count=2, inflight=1,
                             queues={"default": 1, "idle": 0})  # only inflight > 0 is listed
    assert dumps(beat) == V3
    parsed = parse_heartbeat(V3.encode())
    assert parsed.timestamp == epoch(2024, 1, 1, 12)
    assert (parsed.isolate_count, parsed.inflight) == (2, 1)
    assert parsed.queue_loads == (ev.WorkerQueueLoad("default", 1),)


def test_heartbeat_extras_are_read_as_the_worker_writes_them() -> None:
    extras = {
        "host": "h1", "hostname": "h1", "pid": 42, "concurrency": 8, "maxConcurrency": 16,
        "prefetch": 16, "autoscale": True, "startedAt": "2024-01-01T00:00:00.000Z",
        "uptimeMs": 90_500, "uptime": "1m", "memoryBytes": 1024, "memoryMaxBytes": 2048,
        "memoryPercent": 12, "loadAvg": [0.5, 0.25, 0.125], "cpuCount": 8, "started": 3,
        "completed": 2, "failed": 1, "queueDepth": 7,
        "subscriptions": {"queues": ["a", "b"], "broadcasts": ["x"]},
    }
    beat = heartbeat_to_json(worker_id="w", namespace="stem", timestamp=epoch(2024, 1, 1),
                             isolate_count=1, inflight=0, queues={"b": 2, "a": 1},
                             extras=extras)
    assert beat["queues"] == [{"name": "a", "inflight": 1}, {"name": "b", "inflight": 2}]
    parsed = parse_heartbeat(dumps(beat))
    assert parsed.queues == ("a", "b")
    assert parsed.broadcasts == ("x",)
    assert (parsed.concurrency, parsed.max_concurrency, parsed.prefetch) == (8, 16, 16)
    assert (parsed.pid, parsed.cpu_count, parsed.queue_depth) == (42, 8, 7)
    assert (parsed.started, parsed.completed, parsed.failed) == (3, 2, 1)
    assert parsed.started_at == epoch(2024, 1, 1)
    assert parsed.uptime_s == 90.5
    assert (parsed.memory_bytes, parsed.memory_max_bytes, parsed.memory_percent) == (
        1024, 2048, 12.0)
    assert parsed.load_avg == (0.5, 0.25, 0.125)
    assert parsed.autoscale is True


# --------------------------------------------------------------------------- V4 status

V4 = (
    '{"id":"task-1","state":"running","payload":{"ok":true},"error":{"type":"Boom",'
    '"message":"failed","stack":"stack","retryable":true,"meta":{"code":500}},'
    '"meta":{"queue":"default"},"attempt":2}'
)


def test_v4_status_record() -> None:
    record = parse_status(V4)
    assert record.id == "task-1"
    assert record.state == "running"
    assert record.known_state
    assert record.attempt == 2
    assert record.error == StatusError("Boom", "failed", "stack", True, {"code": 500})
    assert record.meta == {"queue": "default"}
    assert record.queue == "default"
    assert record.task_name == "unknown"
    assert record.created_at is None
    assert record.updated_at is None


def test_v4_status_with_the_backend_timestamps() -> None:
    data = json.loads(V4)
    data.update(createdAt="2024-01-02T03:04:05.000Z", updatedAt="2024-01-02T03:04:06.250Z")
    record = parse_status(dumps(data))
    assert record.created_at == epoch(2024, 1, 2, 3, 4, 5)
    assert record.updated_at == epoch(2024, 1, 2, 3, 4, 6, 250_000)


def test_v4_lenient_unknown_state_reads_as_queued() -> None:
    record = parse_status('{"id":"task-2","state":"unknown"}')
    assert record.state == "queued"
    assert record.known_state is False
    assert record.attempt == 0
    assert record.error is None
    assert record.meta == {}


def test_status_id_comes_from_the_key_when_missing() -> None:
    assert parse_status('{"state":"succeeded"}', task_id="from-key").id == "from-key"
    assert {parse_status(dumps({"id": "t", "state": s})).state for s in STATES} == STATES


def test_v12_status_progression_of_a_worker() -> None:
    base = {"stem.task": "demo.task", "__stemArgsEncoder": "json", "task": "demo.task",
            "queue": "default", "stem.queue": "default"}
    running = {**base, "worker": "w-1", "startedAt": "2024-01-01T00:00:01.000Z",
               "__stemResultEncoder": "json"}
    record = parse_status(dumps({"id": "t", "state": "running", "payload": None,
                                 "error": None, "meta": running, "attempt": 0}))
    assert (record.task_name, record.queue, record.worker) == ("demo.task", "default", "w-1")
    assert record.meta_time("startedAt") == epoch(2024, 1, 1, 0, 0, 1)
    assert record.meta_time("completedAt") is None
    succeeded = parse_status(dumps({
        "id": "t", "state": "succeeded", "payload": 3, "error": None,
        "meta": {**running, "completedAt": "2024-01-01T00:00:02.500Z"}, "attempt": 0}))
    assert succeeded.meta_time("completedAt") == epoch(2024, 1, 1, 0, 0, 2, 500_000)
    retried = parse_status(dumps({
        "id": "t", "state": "retried", "payload": None,
        "error": {"type": "StateError", "message": "Bad state: x", "stack": "#0",
                  "retryable": True, "meta": {}},
        "meta": {**base, "retryDelayMs": 1800, "__stemResultEncoder": "json"},
        "attempt": 0}))
    assert retried.worker is None
    assert retried.error is not None
    assert retried.error.retryable
    assert retried.meta["retryDelayMs"] == 1800
    failed = parse_status(dumps({
        "id": "t", "state": "failed", "payload": None,
        "error": {"type": "StateError", "message": "Bad state: x", "stack": None,
                  "retryable": False, "meta": {}},
        "meta": {**base, "worker": None, "failedAt": "2024-01-01T00:00:03.000Z"},
        "attempt": 3, "maxRetries": 3}))
    assert failed.worker is None  # a Worker without consumerName writes null (§3.7.3)
    assert failed.error == StatusError("StateError", "Bad state: x", None, False, {})
    assert failed.meta_time("failedAt") == epoch(2024, 1, 1, 0, 0, 3)


def test_status_meta_helpers() -> None:
    record = parse_status(dumps({"id": "t", "state": "queued", "meta": {
        "stem.task": "a.b", "stem.queue": "q", "maxRetries": "3", "startedAt": 5}}))
    assert (record.task_name, record.queue, record.max_retries) == ("a.b", "q", 3)
    assert record.meta_time("startedAt") is None  # not a time: None, no exception
    empty_error = parse_status('{"id":"t","state":"failed","error":{}}').error
    assert empty_error == StatusError()  # TaskError.fromJson defaults


# --------------------------------------------------------------------------- V5 dead letters

V5_ENVELOPE = (
    '{"id":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","name":"task","args":{"a":1},"headers":{},'
    '"enqueuedAt":"2025-01-01T00:00:00.123456Z","notBefore":null,"priority":0,"attempt":0,'
    '"maxRetries":0,"visibilityTimeout":null,"queue":"default","meta":{}}'
)
V5 = (
    f'{{"envelope":{V5_ENVELOPE},"reason":"boom","meta":{{"trace":"abc"}},'
    '"deadAt":"2025-01-01T00:00:00.000Z"}'
)


def test_v5_dead_letter() -> None:
    letter = parse_dead_letter(V5)
    assert isinstance(letter, DeadLetter)
    assert letter.envelope.id == "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
    assert letter.envelope.name == "task"
    assert letter.envelope.args == {"a": 1}
    assert letter.envelope.enqueued_at == epoch(2025, 1, 1, 0, 0, 0, 123_456)
    assert letter.envelope.not_before is None
    assert letter.envelope.visibility_timeout_ms is None
    assert letter.reason == "boom"
    assert letter.meta == {"trace": "abc"}
    assert letter.error is None
    assert letter.dead_at == epoch(2025, 1, 1)
    assert letter.raw == V5
    assert dumps(letter.to_json()) == V5  # Stem's key order, byte for byte
    assert parse_dead_letter(V5.encode()).raw == V5


def test_dead_letter_reasons_stem_writes() -> None:
    exhausted = parse_dead_letter(dumps({
        "envelope": json.loads(V5_ENVELOPE), "reason": "max-retries-exhausted",
        "meta": {"error": "Exception: boom"}, "deadAt": "2025-01-01T00:00:00.000Z"}))
    assert exhausted.error == "Exception: boom"
    unregistered = parse_dead_letter(dumps({
        "envelope": json.loads(V5_ENVELOPE), "reason": "unregistered-task", "meta": None,
        "deadAt": "2025-01-01T00:00:00.000Z"}))
    assert unregistered.meta is None
    assert unregistered.error is None
    assert unregistered.to_json()["meta"] is None


@pytest.mark.parametrize(("raw", "why"), [
    ("not json", "invalid JSON"),
    ("[]", "must be a JSON object"),
    ('{"reason":"x","deadAt":"2025-01-01T00:00:00.000Z"}', "no envelope"),
    (f'{{"envelope":{V5_ENVELOPE},"reason":"x"}}', "no deadAt"),
    (f'{{"envelope":{V5_ENVELOPE},"deadAt":"yesterday"}}', "not an ISO-8601 time"),
    ('{"envelope":{"args":{}},"deadAt":"2025-01-01T00:00:00.000Z"}', "no name"),
    ('{"envelope":null,"deadAt":"2025-01-01T00:00:00.000Z"}', "JSON object"),
])
def test_malformed_dead_letters(raw: str, why: str) -> None:
    with pytest.raises(ParseError, match=why) as caught:
        parse_dead_letter(raw)
    assert caught.value.kind == "dead_letter"


# --------------------------------------------------------------------------- envelopes (§3.2)

V11_FIELDS = {
    "id": "018bcfe5-69f4-7226-b63c-5ab791b7584a", "name": "demo.task", "args": '{"a":1}',
    "headers": '{"stem-args-encoder":"json"}', "enqueuedAt": "2024-01-02T03:04:05.000Z",
    "notBefore": "", "priority": "0", "attempt": "0", "maxRetries": "0",
    "visibilityTimeout": "", "queue": "default",
    "meta": '{"stem.task":"demo.task","__stemArgsEncoder":"json"}',
}


def v11_envelope() -> Envelope:
    return Envelope(
        id="018bcfe5-69f4-7226-b63c-5ab791b7584a", name="demo.task", args={"a": 1},
        headers={"stem-args-encoder": "json"}, enqueued_at=epoch(2024, 1, 2, 3, 4, 5),
        meta={"stem.task": "demo.task", "__stemArgsEncoder": "json"},
    )


def test_v11_stream_fields_exactly_and_in_order() -> None:
    fields = v11_envelope().stream_fields()
    assert list(fields.items()) == list(V11_FIELDS.items())
    assert list(fields) == ["id", "name", "args", "headers", "enqueuedAt", "notBefore",
                            "priority", "attempt", "maxRetries", "visibilityTimeout", "queue",
                            "meta"]
    assert parse_envelope_fields(V11_FIELDS) == v11_envelope()


def test_v13_retry_envelope_json_in_stem_key_order() -> None:
    retry = Envelope(
        id="t-1", name="demo.task", args={"a": 1}, enqueued_at=epoch(2024, 1, 2, 3, 4, 5),
        not_before=epoch(2024, 1, 2, 3, 4, 7), attempt=1, max_retries=3,
        visibility_timeout_ms=30_000,
    )
    assert dumps(retry.to_json()) == (
        '{"id":"t-1","name":"demo.task","args":{"a":1},"headers":{},'
        '"enqueuedAt":"2024-01-02T03:04:05.000Z","notBefore":"2024-01-02T03:04:07.000Z",'
        '"priority":0,"attempt":1,"maxRetries":3,"visibilityTimeout":30000,'
        '"queue":"default","meta":{}}'
    )
    assert parse_envelope_json(retry.to_json()) == retry
    assert retry.stream_fields()["visibilityTimeout"] == "30000"
    assert retry.task_name == "demo.task"


def test_stream_entry_reader_semantics() -> None:
    """§3.2.4: missing args/headers/meta -> {}; empty notBefore/visibilityTimeout -> None;
    numbers parsed leniently with default 0; missing queue -> default."""
    envelope = parse_envelope_fields({"id": "x", "name": "n"})
    assert (envelope.args, envelope.headers, envelope.meta) == ({}, {}, {})
    assert envelope.not_before is None
    assert envelope.visibility_timeout_ms is None
    assert (envelope.priority, envelope.attempt, envelope.max_retries) == (0, 0, 0)
    assert envelope.queue == "default"
    assert envelope.enqueued_at is None  # Stem substitutes "now"; unknown here
    lenient = parse_envelope_fields({
        "name": "n", "args": "", "priority": " 7 ", "attempt": "abc", "maxRetries": "2.0",
        "notBefore": "2024-01-02T03:04:05.000", "visibilityTimeout": "1500",
        "headers": '{"a":"1","b":2}', "meta": "[1]", "queue": "",
    })
    assert lenient.id  # a missing id gets a fresh one
    assert (lenient.priority, lenient.attempt, lenient.max_retries) == (7, 0, 2)
    assert lenient.not_before == epoch(2024, 1, 2, 3, 4, 5)  # naive = UTC
    assert lenient.visibility_timeout_ms == 1500
    assert lenient.headers == {"a": "1"}  # header values must be strings
    assert lenient.meta == {}
    assert lenient.args == {}
    assert lenient.queue == "default"


@pytest.mark.parametrize("fields", [
    {"id": "x", "args": "{}"},
    {"id": "x", "name": ""},
    {"name": "n", "args": "{not json"},
    {"name": "n", "enqueuedAt": "not a time"},
])
def test_malformed_stream_entries(fields: dict[str, str]) -> None:
    with pytest.raises(ParseError) as caught:
        parse_envelope_fields(fields)
    assert caught.value.kind == "stream_entry"
    with pytest.raises(ParseError) as custom:
        parse_envelope_fields(fields, kind="delivery")
    assert custom.value.kind == "delivery"


@pytest.mark.parametrize(("value", "why"), [
    ("{", "invalid JSON"),
    ("[1]", "must be a JSON object"),
    ({"args": {}}, "no name"),
    ({"name": 3, "args": {}}, "no name"),
    ({"name": "n"}, "args must be a JSON object"),
    ({"name": "n", "args": [1]}, "args must be a JSON object"),
    ({"name": "n", "args": {}, "notBefore": 5}, "expected an ISO-8601 time"),
])
def test_malformed_envelope_json(value: Any, why: str) -> None:
    with pytest.raises(ParseError, match=why) as caught:
        parse_envelope_json(value)
    assert caught.value.kind == "envelope"


def test_envelope_json_defaults() -> None:
    envelope = parse_envelope_json(b'{"name":"n","args":{},"priority":"3","attempt":1.0}')
    assert envelope.id
    assert envelope.queue == "default"
    assert (envelope.priority, envelope.attempt) == (3, 1)
    assert envelope.enqueued_at is None
    assert envelope.not_before is None


def test_v7_retry_policy_travels_in_envelope_meta() -> None:
    policy = {"backoff": True, "backoffMaxMs": 10000, "jitter": False, "defaultDelayMs": 500,
              "maxRetries": 4, "autoRetryFor": ["Timeout"], "dontAutoRetryFor": ["StateError"]}
    envelope = Envelope(id="t", name="n", meta={"stem.retryPolicy": policy})
    assert dumps(envelope.to_json()["meta"]["stem.retryPolicy"]) == (
        '{"backoff":true,"backoffMaxMs":10000,"jitter":false,"defaultDelayMs":500,'
        '"maxRetries":4,"autoRetryFor":["Timeout"],"dontAutoRetryFor":["StateError"]}'
    )
    assert parse_envelope_fields(envelope.stream_fields()).meta == envelope.meta


# --------------------------------------------------------------------------- V10 keys


def test_v10_broker_key_names_with_namespace_unit() -> None:
    keys = StemKeys(broker="unit")
    assert keys.stream("emails") == "unit:stream:emails"
    assert [keys.stream("emails", p) for p in PRIORITIES] == [
        f"unit:stream:emails:p{p}" for p in range(1, 10)]
    assert keys.stream("emails", 0) == keys.stream("emails", -4) == "unit:stream:emails"
    assert keys.stream("emails", 42) == "unit:stream:emails:p9"  # values >= 9 clamp
    assert keys.streams("emails") == (
        *(f"unit:stream:emails:p{p}" for p in range(9, 0, -1)), "unit:stream:emails")
    assert keys.group("emails") == "unit:group:emails"
    assert keys.delayed("emails") == "unit:delayed:emails"
    assert keys.dead("emails") == "unit:dead:emails"
    assert keys.stream_pattern() == "unit:stream:*"
    assert keys.dead_pattern() == "unit:dead:*"
    assert keys.delayed_pattern() == "unit:delayed:*"
    assert {keys.queue_of_stream(s) for s in keys.streams("emails")} == {"emails"}


def test_key_parsers() -> None:
    keys = StemKeys(broker="unit", backend="res")
    assert keys.queue_of_stream("stem:stream:emails") is None  # other namespace
    assert keys.queue_of_stream("unit:stream:") is None
    assert keys.queue_of_stream("unit:stream:jobs:pending") == "jobs:pending"
    assert keys.queue_of_stream("unit:stream:jobs:p10") == "jobs:p10"
    assert keys.queue_of_stream("unit:stream:jobs:p0") == "jobs:p0"
    assert keys.queue_of_stream("unit:stream:a.control.broadcast:p2") == "a.control.broadcast"
    assert keys.queue_of("unit:dead:emails", "dead") == "emails"
    assert keys.queue_of("unit:delayed:emails", "delayed") == "emails"
    assert keys.queue_of("unit:dead:", "dead") is None
    assert keys.queue_of("unit:delayed:emails", "dead") is None
    assert keys.result("t-1") == "res:result:t-1"
    assert keys.result_pattern() == "res:result:*"
    assert keys.task_id_of_result("res:result:t-1") == "t-1"
    assert keys.task_id_of_result("res:result:") is None
    assert keys.task_id_of_result("stem:result:t-1") is None
    assert keys.heartbeat("w") == "res:worker:heartbeat:w"
    assert keys.heartbeats() == "res:worker:heartbeats"
    assert StemKeys() == StemKeys("stem", "stem")


queue_names = st.text(min_size=1, max_size=30).filter(
    lambda q: not re.search(r":p\w*$", q, flags=re.ASCII))


@given(queue=queue_names, priority=st.integers(-5, 20))
def test_every_stream_key_maps_back_to_its_queue(queue: str, priority: int) -> None:
    keys = StemKeys(broker="ns")
    assert keys.queue_of_stream(keys.stream(queue, priority)) == queue
    assert keys.queue_of(keys.dead(queue), "dead") == queue


# Non-ASCII digits such as "²" are digits to str.isdigit(), not to int().
def test_non_ascii_digit_suffix_is_not_a_priority() -> None:
    assert StemKeys().queue_of_stream("stem:stream:x:p²") == "x:p²"


# --------------------------------------------------------------------------- times


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-01-02T03:04:05.000Z", epoch(2024, 1, 2, 3, 4, 5)),
    ("2024-01-02T03:04:05Z", epoch(2024, 1, 2, 3, 4, 5)),
    ("2024-01-02T03:04:05.000z", epoch(2024, 1, 2, 3, 4, 5)),
    ("2024-01-02T05:04:05.000+02:00", epoch(2024, 1, 2, 3, 4, 5)),
    ("2024-01-02T01:04:05.000-02:00", epoch(2024, 1, 2, 3, 4, 5)),
    ("2024-01-02T03:04:05.000+00:00", epoch(2024, 1, 2, 3, 4, 5)),
    ("2024-01-02T03:04:05.123Z", epoch(2024, 1, 2, 3, 4, 5, 123_000)),
    ("2024-01-02T03:04:05.123456Z", epoch(2024, 1, 2, 3, 4, 5, 123_456)),
    ("2024-01-02T03:04:05.000500Z", epoch(2024, 1, 2, 3, 4, 5, 500)),
    ("2024-01-02T03:04:05.123", epoch(2024, 1, 2, 3, 4, 5, 123_000)),  # naive: UTC
    ("2024-01-02T03:04:05.123456", epoch(2024, 1, 2, 3, 4, 5, 123_456)),
    (" 2024-01-02T03:04:05Z ", epoch(2024, 1, 2, 3, 4, 5)),
    # V6/V8/V9 timestamps
    ("2025-01-02T03:04:05.000Z", epoch(2025, 1, 2, 3, 4, 5)),
    ("2025-01-03T00:00:00.000Z", 1735862400.0),  # V8 nextRunAt = its ZADD score / 1000
])
def test_parse_time_forms(text: str, expected: float) -> None:
    assert parse_time(text) == expected


def test_parse_time_nothing_and_errors() -> None:
    assert parse_time(None) is None
    assert parse_time("") is None
    for bad in ("yesterday", "2024-13-01T00:00:00Z", "   "):
        with pytest.raises(ParseError, match="not an ISO-8601 time") as caught:
            parse_time(bad, kind="status")
        assert caught.value.kind == "status"
    wrong: object
    for wrong in (1704164645, 1.5, True, [], {}):
        with pytest.raises(ParseError, match="expected an ISO-8601 time") as typed:
            parse_time(wrong)
        assert typed.value.kind == "time"


@pytest.mark.parametrize(("value", "text"), [
    (epoch(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05.000Z"),
    (epoch(2024, 1, 2, 3, 4, 5, 120_000), "2024-01-02T03:04:05.120Z"),
    (epoch(2024, 1, 2, 3, 4, 5, 123_456), "2024-01-02T03:04:05.123456Z"),
    (epoch(2024, 1, 2, 3, 4, 5, 123_400), "2024-01-02T03:04:05.123400Z"),
    (epoch(2024, 1, 2, 3, 4, 5, 1), "2024-01-02T03:04:05.000001Z"),
    (0.0, "1970-01-01T00:00:00.000Z"),
])
def test_dart_iso_forms(value: float, text: str) -> None:
    assert dart_iso(value) == text


DART_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.(\d{3}|\d{6})Z")


@given(st.integers(min_value=946_684_800_000_000, max_value=4_102_444_800_000_000))
def test_dart_iso_parse_time_round_trip_to_the_microsecond(micros: int) -> None:
    text = dart_iso(micros / 1e6)
    assert DART_ISO.fullmatch(text)
    assert len(text) == (27 if micros % 1000 else 24)
    parsed = parse_time(text)
    assert parsed is not None
    assert round(parsed * 1e6) == micros
    assert dart_iso(parsed) == text


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(("raw", "why"), [
    ("{", "invalid JSON"),
    (b"\xff", "invalid JSON"),
    ("[]", "must be a JSON object"),
    ('"running"', "must be a JSON object"),
    ('{"state":"queued"}', "no id"),
    ('{"id":5,"state":"queued"}', "no id"),
    ('{"id":"t","state":"queued","createdAt":"soon"}', "not an ISO-8601 time"),
    ('{"id":"t","state":"queued","updatedAt":17}', "expected an ISO-8601 time"),
])
def test_malformed_status_records(raw: str | bytes, why: str) -> None:
    with pytest.raises(ParseError, match=why) as caught:
        parse_status(raw)
    assert caught.value.kind == "status"


@pytest.mark.parametrize(("raw", "why"), [
    ("{", "invalid JSON"),
    ("null", "must be a JSON object"),
    ('{"timestamp":"2024-01-01T00:00:00.000Z"}', "no workerId"),
    ('{"workerId":"","timestamp":"2024-01-01T00:00:00.000Z"}', "no workerId"),
    ('{"workerId":"w"}', "no timestamp"),
    ('{"workerId":"w","timestamp":1704067200}', "expected an ISO-8601 time"),
    ('{"workerId":"w","timestamp":"noon"}', "not an ISO-8601 time"),
])
def test_malformed_heartbeats(raw: str, why: str) -> None:
    with pytest.raises(ParseError, match=why) as caught:
        parse_heartbeat(raw)
    assert caught.value.kind == "heartbeat"


def test_heartbeat_tolerates_wrong_types_it_can_ignore() -> None:
    beat = parse_heartbeat(dumps({
        "workerId": "w", "timestamp": "2024-01-01T00:00:00.000Z", "extras": [1],
        "queues": [{"name": "a", "inflight": "2"}, {"inflight": 1}, "b"],
        "lastLeaseRenewal": "garbage",
    }))
    assert beat.extras == {}
    assert beat.last_lease_renewal is None
    assert beat.queue_loads == (ev.WorkerQueueLoad("a", 2),)
    assert beat.namespace == "stem"
    assert beat.version == "1"


def test_parse_error_is_a_value_error_with_a_kind() -> None:
    error = ParseError("status", "broken")
    assert isinstance(error, ValueError)
    assert error.kind == "status"
    assert str(error) == "status: broken"


# Non-finite numbers (JSON 1e400 reads as inf; NaN is accepted) read leniently.
@pytest.mark.parametrize("parse", [
    lambda: parse_envelope_fields({"name": "n", "priority": "Infinity"}),
    lambda: parse_envelope_json('{"name":"n","args":{},"attempt":1e400}'),
    lambda: parse_status('{"id":"t","state":"queued","attempt":NaN}'),
    lambda: parse_heartbeat('{"workerId":"w","timestamp":"2024-01-01T00:00:00Z",'
                            '"extras":{"concurrency":"-inf"}}'),
])
def test_non_finite_numbers_read_leniently(parse: Any) -> None:
    with contextlib.suppress(ParseError):
        parse()


# Lists of the wrong type in a heartbeat are ignored, not iterated.
@pytest.mark.parametrize("extra", [
    {"queues": 5},
    {"extras": {"subscriptions": {"broadcasts": 5}}},
])
def test_heartbeat_lists_of_the_wrong_type(extra: dict[str, Any]) -> None:
    raw = dumps({"workerId": "w", "timestamp": "2024-01-01T00:00:00.000Z", **extra})
    try:
        beat = parse_heartbeat(raw)
    except ParseError:
        return
    assert beat.queue_loads == ()
    assert beat.broadcasts == ()


# --------------------------------------------------------------------------- round trips

json_scalars = (st.none() | st.booleans() | st.integers(-(2**60), 2**60)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
times = st.none() | st.integers(946_684_800_000_000, 4_102_444_800_000_000).map(
    lambda micros: micros / 1e6)
envelopes = st.builds(
    Envelope,
    id=st.text(min_size=1, max_size=40),
    name=st.text(min_size=1, max_size=40),
    args=json_objects,
    headers=st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3),
    enqueued_at=times,
    not_before=times,
    priority=st.integers(-3, 12),
    attempt=st.integers(0, 50),
    max_retries=st.integers(0, 50),
    visibility_timeout_ms=st.none() | st.integers(0, 10**9),
    queue=st.text(min_size=1, max_size=30),
    meta=json_objects,
)


@given(envelopes)
def test_envelope_json_round_trip(envelope: Envelope) -> None:
    assert parse_envelope_json(envelope.to_json()) == envelope
    assert parse_envelope_json(dumps(envelope.to_json())) == envelope
    assert list(envelope.to_json()) == [
        "id", "name", "args", "headers", "enqueuedAt", "notBefore", "priority", "attempt",
        "maxRetries", "visibilityTimeout", "queue", "meta"]


@given(envelopes)
def test_envelope_stream_fields_round_trip(envelope: Envelope) -> None:
    fields = envelope.stream_fields()
    assert all(isinstance(value, str) for value in fields.values())
    assert parse_envelope_fields(fields) == envelope


@given(envelopes, st.sampled_from(["max-retries-exhausted", "unregistered-task", None]),
       st.none() | json_objects, st.integers(946_684_800_000, 4_102_444_800_000))
def test_dead_letter_round_trip(
    envelope: Envelope, reason: str | None, meta: dict[str, Any] | None, dead_ms: int,
) -> None:
    raw = dumps({"envelope": envelope.to_json(), "reason": reason, "meta": meta,
                 "deadAt": dart_iso(dead_ms / 1000)})
    letter = parse_dead_letter(raw)
    assert (letter.envelope, letter.reason, letter.meta) == (envelope, reason, meta)
    assert letter.dead_at == dead_ms / 1000
    assert dumps(letter.to_json()) == raw


# --------------------------------------------------------------------------- schedules

from stem_observe.sources.stem.wire import parse_schedule  # noqa: E402

V8_HASH = {
    "taskName": "task", "queue": "default",
    "spec": '{"kind":"interval","everyMs":30000,"startAt":"2025-01-01T00:00:00.000Z"}',
    "args": '{"value":1}', "kwargs": "{}", "enabled": "true", "jitterMs": "1000",
    "lastRunAt": "2025-01-02T00:00:00.000Z", "nextRunAt": "2025-01-03T00:00:00.000Z",
    "lastJitterMs": "500", "lastError": "oops", "timezone": "UTC", "totalRunCount": "2",
    "lastSuccessAt": "2025-01-02T01:00:00.000Z", "lastErrorAt": "2025-01-02T02:00:00.000Z",
    "driftMs": "250", "expireAt": "2025-01-05T00:00:00.000Z", "meta": '{"source":"test"}',
    "version": "1",
}


def test_v8_schedule_hash_parses() -> None:
    entry = parse_schedule("schedule-1", {k.encode(): v.encode() for k, v in V8_HASH.items()})
    assert (entry.task_name, entry.queue, entry.enabled) == ("task", "default", True)
    assert entry.spec == {"kind": "interval", "everyMs": 30000,
                          "startAt": "2025-01-01T00:00:00.000Z"}
    assert entry.next_run_at == 1735862400.0  # the ZADD score of V8, in seconds
    assert (entry.total_run_count, entry.drift_ms, entry.jitter_ms, entry.version) == (
        2, 250, 1000, 1)
    assert entry.last_error == "oops"


def test_schedule_defaults_and_errors() -> None:
    entry = parse_schedule("s", {"taskName": "t", "lastError": "", "enabled": "false",
                                 "spec": "every:5m"})
    assert entry.spec == {"kind": "legacy", "value": "every:5m"}
    assert not entry.enabled
    assert entry.last_error is None
    assert parse_schedule("s", {"taskName": "t"}).enabled
    with pytest.raises(ParseError) as raised:
        parse_schedule("s", {"queue": "q"})
    assert raised.value.kind == "schedule"
    with pytest.raises(ParseError):
        parse_schedule("s", {"taskName": "t", "spec": "{broken"})
    with pytest.raises(ParseError):
        parse_schedule("s", {"taskName": "t", "nextRunAt": "soon"})
