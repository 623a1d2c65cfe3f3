"""The fleet stream's record format: round trips, limits, bad entries, and version 2 and 1
entries from workers not yet upgraded."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stem_observe import events as ev
from stem_observe.sources._fleet_wire import (
    KINDS,
    MAX_ENTRY_BYTES,
    MAX_STACKTRACE,
    MAX_TEXT,
    RAW_KINDS,
    READERS,
    RECORDS_PER_ENTRY,
    VERSION,
    DropReport,
    WireError,
    decode,
    decode_record,
    decode_record_v1,
    decode_record_v2,
    drops_record,
    encode,
    encode_v1,
    encode_v2,
    layout,
    pack,
    pack_v1,
    pack_v2,
    prepare,
)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def as_stream(fields: Any) -> dict[bytes, bytes]:
    """What redis-py returns for an entry written with ``fields``."""
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}


def v3(*records: object) -> dict[bytes, bytes]:
    """A version 3 entry holding ``records`` as they are."""
    return {b"v": b"3", b"e": msgpack.packb(list(records))}


def round_trip(event: ev.Event, traceparent: str | None = None) -> ev.Event | DropReport:
    (item,) = decode(as_stream(pack([encode(event, traceparent)])))
    assert not isinstance(item, WireError), item
    return item


EXAMPLES: list[ev.Event] = [
    ev.TaskPublished(task_id="t1", task_name="a.b", queue="q", eta=12.5),
    ev.TaskReceived(task_id="t1", task_name="a.b", queue="q", enqueued_at=1.0, eta=2.0,
                    worker_id="w1", attempt=2, max_retries=5),
    ev.TaskPrerun(task_id="t1", task_name="a.b", enqueued_at=1.0, worker_id="w1"),
    ev.TaskSucceeded(task_id="t1", task_name="a.b", runtime_s=0.25, worker_id="w1"),
    ev.TaskFailed(task_id="t1", task_name="a.b", error_type="KeyError", error_message="x",
                  stacktrace="Traceback ...", runtime_s=1.5),
    ev.TaskRetry(task_id="t1", task_name="a.b", reason="timeout", error_type="Timeout",
                 next_retry_at=100.0, retry_delay_s=30.0, runtime_s=0.1),
    ev.TaskRevoked(task_id="t1", task_name="a.b", reason="terminated"),
    ev.TaskDeadLettered(task_id="t1", task_name="a.b", reason="unregistered-task", error="e"),
    ev.TaskPostrun(task_id="t1", task_name="a.b", state="failed", runtime_s=0.5),
    ev.TaskHeartbeat(task_id="t1", task_name="a.b", progress=0.0, message="half"),
    ev.WorkerReady(worker_id="w1", queues=("a", "b"), concurrency=4, namespace="celery"),
    ev.WorkerStopping(worker_id="w1", reason="warm"),
    ev.WorkerShutdown(worker_id="w1", reason="warm", gone=True),
    ev.WorkerHeartbeat(worker_id="w1", timestamp=50.0, inflight=3, concurrency=4,
                       queue_loads=(ev.WorkerQueueLoad("a", 2),), load_avg=(0.5, 1.0),
                       interval_s=2.0, host="h", pid=42, autoscale=False),
]


def test_every_worker_event_kind_has_an_example() -> None:
    assert {type(e) for e in EXAMPLES} == set(KINDS.values())


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip_keeps_every_forwarded_field(event: ev.Event) -> None:
    assert round_trip(event) == event


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_version_1_entries_from_older_workers_still_decode(event: ev.Event) -> None:
    traceparent = TRACEPARENT if isinstance(event, ev.TaskEvent) else None
    fields = pack_v1([encode_v1(event, traceparent)])
    assert fields["v"] == "1"
    (decoded,) = decode(as_stream(fields))
    if isinstance(event, ev.TaskEvent):
        event = dataclasses.replace(event, headers={"traceparent": TRACEPARENT})
    assert decoded == event


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_version_2_entries_from_older_workers_still_decode(event: ev.Event) -> None:
    traceparent = TRACEPARENT if isinstance(event, ev.TaskEvent) else None
    fields = pack_v2([encode_v2(event, traceparent)])
    assert fields["v"] == "2"
    (decoded,) = decode(as_stream(fields))
    if isinstance(event, ev.TaskEvent):
        event = dataclasses.replace(event, headers={"traceparent": TRACEPARENT})
    assert decoded == event


def test_an_entry_is_version_3_with_positional_records_in_messagepack() -> None:
    event = ev.TaskReceived(occurred_at=1795898496.7500305, task_id="t1", task_name="a.b",
                            worker_id="w1")
    fields = pack([encode(event, TRACEPARENT)])
    assert VERSION == "3"
    assert fields["v"] == "3"
    assert isinstance(fields["e"], bytes)
    # kind, tp, then the layout; defaults travel as they are; times keep every bit
    assert msgpack.unpackb(fields["e"]) == [
        ["task-received", TRACEPARENT,
         [1795898496.7500305, "t1", "a.b", "default", 0, 0, "w1", None, None]]]
    assert encode(ev.WorkerStopping(occurred_at=1.0, worker_id="w")) == (
        "worker-stopping", None, (1.0, "w", (), "stem", None))


def test_a_version_2_record_is_flat_without_trailing_nulls() -> None:
    event = ev.TaskReceived(occurred_at=10.5, task_id="t1", task_name="a.b", worker_id="w1")
    assert pack_v2([encode_v2(event, TRACEPARENT)]) == {
        "v": "2",
        "e": f'[["task-received","{TRACEPARENT}",10.5,"t1","a.b","default",0,0,"w1"]]',
    }


def test_a_tasks_lifecycle_kinds_travel_as_the_forwarder_read_them() -> None:
    assert {"after-task-publish", "task-received", "task-prerun", "task-succeeded",
            "task-postrun"} == RAW_KINDS
    event = EXAMPLES[3]  # TaskSucceeded
    kind, read = READERS[type(event)]
    assert (kind, TRACEPARENT, read(event)) == encode(event, TRACEPARENT)


def test_other_kinds_are_prepared_when_the_forwarder_reads_them() -> None:
    event = ev.TaskFailed(task_id="t", task_name="n", error_message="m" * 5000,
                          runtime_s=float("inf"))
    kind, read = READERS[type(event)]
    assert kind not in RAW_KINDS
    fields = read(event)
    assert (kind, TRACEPARENT, fields) == encode(event, TRACEPARENT)
    assert len(fields[layout(kind).index("error_message")]) == MAX_TEXT
    assert fields[layout(kind).index("runtime_s")] is None


def test_prepare_makes_a_queued_record_fit() -> None:
    kind = "task-succeeded"
    values = (1.0, "t" * 5000, 42, "q", 0, 0, None, float("nan"))
    assert prepare(kind, "x" * 500, values) == (
        kind, None, (1.0, "t" * MAX_TEXT, "42", "q", 0, 0, None, None))


def test_pack_refuses_what_messagepack_cannot_carry_or_a_consumer_would_not_read() -> None:
    with pytest.raises(TypeError):
        pack([("task-succeeded", None, (1.0, "t", object()))])
    with pytest.raises(OverflowError):
        pack([("task-succeeded", None, (1.0, "t", "n", "q", 2**70))])
    with pytest.raises(ValueError, match="larger than"):
        pack([("task-succeeded", None, (1.0, "t" * (MAX_ENTRY_BYTES + 1), "n"))])


def test_the_consumer_bounds_what_a_raw_record_carries() -> None:
    (decoded,) = decode(v3(["task-succeeded", "t" * 500,
                            [1.0, "i" * 5000, "n", "q" * 2000, 0, 0, None, float("nan")]]))
    assert isinstance(decoded, ev.TaskSucceeded)
    assert (len(decoded.task_id), len(decoded.queue)) == (MAX_TEXT, MAX_TEXT)
    assert decoded.runtime_s is None  # not finite: absent
    assert decoded.headers is None  # over-long: no trace context anyone sends


# Records are positional (versions 3 and 2): a field added to an event must be appended to
# its layouts (older consumers ignore what comes after theirs), never inserted. Pinned here.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "after-task-publish": ("occurred_at", "task_id", "task_name", "queue", "attempt",
                           "max_retries", "worker_id", "eta"),
    "task-received": ("occurred_at", "task_id", "task_name", "queue", "attempt",
                      "max_retries", "worker_id", "enqueued_at", "eta"),
    "task-prerun": ("occurred_at", "task_id", "task_name", "queue", "attempt",
                    "max_retries", "worker_id", "enqueued_at", "eta"),
    "task-postrun": ("occurred_at", "task_id", "task_name", "queue", "attempt",
                     "max_retries", "worker_id", "state", "runtime_s"),
    "task-retry": ("occurred_at", "task_id", "task_name", "queue", "attempt", "max_retries",
                   "worker_id", "reason", "error_type", "error_message", "next_retry_at",
                   "retry_delay_s", "runtime_s"),
    "task-succeeded": ("occurred_at", "task_id", "task_name", "queue", "attempt",
                       "max_retries", "worker_id", "runtime_s"),
    "task-failed": ("occurred_at", "task_id", "task_name", "queue", "attempt", "max_retries",
                    "worker_id", "error_type", "error_message", "stacktrace", "runtime_s"),
    "task-revoked": ("occurred_at", "task_id", "task_name", "queue", "attempt",
                     "max_retries", "worker_id", "reason"),
    "task-dead-lettered": ("occurred_at", "task_id", "task_name", "queue", "attempt",
                           "max_retries", "worker_id", "reason", "error"),
    "task-heartbeat": ("occurred_at", "task_id", "task_name", "queue", "attempt",
                       "max_retries", "worker_id", "progress", "message"),
    "worker-ready": ("occurred_at", "worker_id", "queues", "namespace", "concurrency"),
    "worker-stopping": ("occurred_at", "worker_id", "queues", "namespace", "reason"),
    "worker-shutdown": ("occurred_at", "worker_id", "queues", "namespace", "reason", "gone"),
    "worker-heartbeat": (
        "occurred_at", "worker_id", "queues", "namespace", "timestamp", "inflight",
        "isolate_count", "concurrency", "max_concurrency", "prefetch", "last_lease_renewal",
        "queue_loads", "host", "pid", "started_at", "memory_bytes", "memory_max_bytes",
        "memory_percent", "load_avg", "cpu_count", "started", "completed", "failed",
        "queue_depth", "autoscale", "uptime_s", "broadcasts", "interval_s", "version"),
}


def test_layouts_are_pinned() -> None:
    assert {kind: layout(kind) for kind in KINDS} == LAYOUTS


def test_traceparent_travels_and_other_headers_and_live_objects_do_not() -> None:
    event = ev.TaskFailed(task_id="t", task_name="n", in_process=True,
                          headers={"traceparent": TRACEPARENT, "secret": "x"},
                          exception=KeyError("k"))
    body = pack([encode(event, TRACEPARENT)])["e"]
    assert isinstance(body, bytes)
    assert b"secret" not in body
    assert b"KeyError" not in body
    decoded = round_trip(event, TRACEPARENT)
    assert isinstance(decoded, ev.TaskFailed)
    assert decoded.headers == {"traceparent": TRACEPARENT}
    assert decoded.exception is None
    assert decoded.in_process is False  # seen from serve, it happened elsewhere


def test_large_text_is_cut() -> None:
    event = ev.TaskFailed(task_id="t", task_name="n", error_message="m" * 10_000,
                          stacktrace="s" * 100_000)
    decoded = round_trip(event)
    assert isinstance(decoded, ev.TaskFailed)
    assert len(decoded.error_message) == MAX_TEXT
    assert decoded.stacktrace is not None
    assert len(decoded.stacktrace) == MAX_STACKTRACE


def test_non_finite_numbers_are_left_out() -> None:
    event = ev.TaskSucceeded(task_id="t", task_name="n", runtime_s=float("nan"))
    decoded = round_trip(event)
    assert isinstance(decoded, ev.TaskSucceeded)
    assert decoded.runtime_s is None


def test_drop_report() -> None:
    assert drops_record("host-1", 7) == ("fleet-dropped", None, ("host-1", 7))
    assert decode(as_stream(pack([drops_record("host-1", 7)]))) == [DropReport("host-1", 7)]
    v2 = {"v": "2", "e": '[["fleet-dropped","host-1",7]]'}
    assert decode(as_stream(v2)) == [DropReport("host-1", 7)]
    v1 = {"v": "1", "e": '[{"k":"fleet-dropped","w":"host-1","n":7}]'}
    assert decode(as_stream(v1)) == [DropReport("host-1", 7)]


def test_a_bad_record_does_not_spoil_its_entry() -> None:
    good = encode(ev.TaskSucceeded(task_id="t", task_name="n"))
    items = decode(v3(good, ["task-lost", None, []], 5, good))
    assert [type(i).__name__ for i in items] == [
        "TaskSucceeded", "WireError", "WireError", "TaskSucceeded"]
    assert [i.kind for i in items if isinstance(i, WireError)] == ["kind", "malformed"]


def test_a_bad_record_does_not_spoil_its_version_2_entry() -> None:
    good = encode_v2(ev.TaskSucceeded(task_id="t", task_name="n"))
    items = decode(as_stream({"v": "2", "e": json.dumps([good, ["task-lost"], 5, good])}))
    assert [type(i).__name__ for i in items] == [
        "TaskSucceeded", "WireError", "WireError", "TaskSucceeded"]
    assert [i.kind for i in items if isinstance(i, WireError)] == ["kind", "malformed"]


def test_a_bad_record_does_not_spoil_its_version_1_entry() -> None:
    good = encode_v1(ev.TaskSucceeded(task_id="t", task_name="n"))
    items = decode(as_stream({"v": "1", "e": json.dumps([good, {"k": "task-lost"}, 5, good])}))
    assert [type(i).__name__ for i in items] == [
        "TaskSucceeded", "WireError", "WireError", "TaskSucceeded"]
    assert [i.kind for i in items if isinstance(i, WireError)] == ["kind", "malformed"]


def test_records_of_another_version_are_malformed() -> None:
    event = ev.TaskSucceeded(task_id="t", task_name="n")
    records = {"1": encode_v1(event), "2": encode_v2(event), "3": list(encode(event))}
    for version, record in records.items():
        for other in set(records) - {version}:
            body = (msgpack.packb([record]) if other == "3"
                    else json.dumps([record]).encode())
            (item,) = decode({b"v": other.encode(), b"e": body})
            assert isinstance(item, WireError), (version, other)
            assert item.kind == "malformed"


def test_records_per_entry_is_what_the_forwarder_packs() -> None:
    assert RECORDS_PER_ENTRY >= 10


@pytest.mark.parametrize(("fields", "kind"), [
    ({"v": "4", "e": "[]"}, "version"),
    ({"v": "", "e": "[]"}, "version"),
    ({"e": "[]"}, "malformed"),
    ({"v": "3"}, "malformed"),
    ({"v": "3", "e": b"\xc1"}, "malformed"),  # never used in MessagePack
    ({"v": "3", "e": b"\x91\x01\x02"}, "malformed"),  # trailing bytes
    ({"v": "3", "e": b"\x81\x01\x02"}, "malformed"),  # a map, not an array
    ({"v": "3", "e": b"\xdd\xff\xff\xff\xff"}, "malformed"),  # truncated
    ({"v": "2", "e": "{not json"}, "malformed"),
    ({"v": "2", "e": "{}"}, "malformed"),
    ({"v": "1", "e": "{not json"}, "malformed"),
    ({"v": "1", "e": "{}"}, "malformed"),
])
def test_bad_entries_raise_wire_errors_with_a_bounded_kind(
    fields: dict[str, str | bytes], kind: str,
) -> None:
    with pytest.raises(WireError) as caught:
        decode(as_stream(fields))
    assert caught.value.kind == kind


def test_a_version_3_body_read_as_text_is_malformed() -> None:
    with pytest.raises(WireError, match="not binary"):
        decode({"v": "3", "e": "[]"})


@pytest.mark.parametrize(("record", "kind"), [
    ({"k": "task-exploded"}, "kind"),
    ({"task_id": "t"}, "malformed"),
    ({"k": "task-succeeded", "task_name": "n"}, "malformed"),
    ({"k": "task-succeeded", "task_id": 1, "task_name": "n"}, "malformed"),
    ({"k": "task-succeeded", "task_id": "t", "task_name": "n", "runtime_s": "slow"},
     "malformed"),
    ({"k": "task-postrun", "task_id": "t", "task_name": "n", "state": "odd"}, "malformed"),
    ({"k": "task-received", "task_id": "t", "task_name": "n", "attempt": True}, "malformed"),
    ({"k": "task-succeeded", "task_id": "t", "task_name": "n", "tp": 5}, "malformed"),
    ({"k": "fleet-dropped", "w": "h", "n": -1}, "malformed"),
    ({"k": "worker-heartbeat", "worker_id": "w", "queue_loads": [["a"]]}, "malformed"),
])
def test_bad_version_1_records_raise_wire_errors_with_a_bounded_kind(
    record: dict[str, object], kind: str,
) -> None:
    with pytest.raises(WireError) as caught:
        decode_record_v1(record)
    assert caught.value.kind == kind


@pytest.mark.parametrize(("record", "kind"), [
    (["task-exploded", None, []], "kind"),
    (["task-succeeded", None, [1.0, "t", "n"]], None),
    (["task-succeeded", None], "malformed"),
    (["task-succeeded", None, (1.0, "t", "n")], "malformed"),  # decoded: lists only
    ([5, None, [1.0, "t", "n"]], "malformed"),
    (["task-succeeded", None, [1.0, None, "n"]], "malformed"),  # no task_id
    (["task-succeeded", None, [1.0, "t"]], "malformed"),  # no task_name
    (["task-succeeded", None, [1.0, b"t", "n"]], "malformed"),  # bytes are not text
    (["task-succeeded", None, [1.0, "t", "n", None, None, None, None, "slow"]], "malformed"),
    (["task-received", None, [1.0, "t", "n", None, True]], "malformed"),
    (["task-succeeded", 5, [1.0, "t", "n"]], "malformed"),
    (["task-succeeded", None, [{"a": 1}, "t", "n"]], "malformed"),
    (["fleet-dropped", None, ["h", -1]], "malformed"),
    (["fleet-dropped", None, ["h"]], "malformed"),
    (["worker-heartbeat", None, [1.0, "w", None, None, None, None, None, None, None, None,
                                 None, [["a"]]]], "malformed"),
])
def test_bad_records_raise_wire_errors_with_a_bounded_kind(
    record: object, kind: str | None,
) -> None:
    if kind is None:  # the well-formed control
        assert isinstance(decode_record(record), ev.TaskSucceeded)
        return
    with pytest.raises(WireError) as caught:
        decode_record(record)
    assert caught.value.kind == kind


@pytest.mark.parametrize(("record", "kind"), [
    (["task-exploded"], "kind"),
    ({"k": "task-succeeded", "task_id": "t", "task_name": "n"}, "malformed"),
    ([], "malformed"),
    ([5, None, 1.0, "t", "n"], "malformed"),
    (["task-succeeded", None, 1.0, None, "n"], "malformed"),  # no task_id
    (["task-succeeded", None, 1.0, "t"], "malformed"),  # no task_name
    (["task-succeeded", None, 1.0, 1, "n"], "malformed"),
    (["task-succeeded", None, 1.0, "t", "n", None, None, None, None, "slow"], "malformed"),
    (["task-postrun", None, 1.0, "t", "n", None, None, None, None, "odd"], "malformed"),
    (["task-received", None, 1.0, "t", "n", None, True], "malformed"),
    (["task-succeeded", 5, 1.0, "t", "n"], "malformed"),
    (["task-succeeded", None, "noon", "t", "n"], "malformed"),
    (["fleet-dropped", "h", -1], "malformed"),
    (["fleet-dropped", "h"], "malformed"),
    (["worker-heartbeat", None, 1.0, "w", None, None, None, None, None, None, None, None,
      None, [["a"]]], "malformed"),
])
def test_bad_version_2_records_raise_wire_errors_with_a_bounded_kind(
    record: object, kind: str,
) -> None:
    with pytest.raises(WireError) as caught:
        decode_record_v2(record)
    assert caught.value.kind == kind


def test_invalid_utf8_is_malformed() -> None:
    with pytest.raises(WireError):
        decode({b"v": b"1", b"e": b"\xff\xfe"})


def test_unknown_fields_from_a_newer_forwarder_are_ignored() -> None:
    decoded = decode_record_v1({"k": "task-succeeded", "task_id": "t", "task_name": "n",
                                "shiny": [1, 2]})
    assert isinstance(decoded, ev.TaskSucceeded)
    assert decoded.task_id == "t"
    for appended in (
        decode_record(["task-succeeded", None, [1.0, "t", "n", None, None, None, None, 0.5,
                                                "shiny", [1, 2]], "more"]),
        decode_record_v2(["task-succeeded", None, 1.0, "t", "n", None, None, None, None,
                          0.5, "shiny", [1, 2]]),
    ):
        assert isinstance(appended, ev.TaskSucceeded)
        assert (appended.task_id, appended.runtime_s) == ("t", 0.5)


def test_nulls_are_defaults() -> None:
    expected = ev.TaskReceived(occurred_at=2.0, task_id="t", task_name="n")
    assert decode_record(["task-received", None, [2.0, "t", "n", None, None, None, None,
                                                  None, None]]) == expected
    assert decode_record_v2(["task-received", None, 2.0, "t", "n", None, None, None,
                             None]) == expected


ROBUST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
"""Generation of nested JSON is slow on a loaded 2-vCPU machine; that is not a failure."""

_json: Any = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=20,
)


@ROBUST
@given(kind=st.sampled_from([*KINDS, "fleet-dropped", "x"]),
       body=st.dictionaries(
           st.sampled_from(["task_id", "task_name", "queue", "attempt", "runtime_s", "tp",
                            "worker_id", "queues", "queue_loads", "load_avg", "state", "w",
                            "n", "occurred_at", "timestamp", "gone", "other"]),
           _json, max_size=8))
def test_decode_never_raises_anything_but_wire_error(kind: str, body: dict[str, Any]) -> None:
    fields = {b"v": b"1", b"e": json.dumps([{**body, "k": kind}, body]).encode()}
    for item in decode(fields):
        assert isinstance(item, ev.Event | DropReport | WireError)


_packable: Any = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=20,
)


@ROBUST
@given(kind=st.sampled_from([*KINDS, "fleet-dropped", "x"]),
       tp=_packable, values=st.lists(_packable, max_size=32), other=_packable)
def test_decode_v3_never_raises_anything_but_wire_error(
    kind: str, tp: Any, values: list[Any], other: Any,
) -> None:
    for item in decode(v3([kind, tp, values], [kind, tp, *values], values, other)):
        assert isinstance(item, ev.Event | DropReport | WireError)


@ROBUST
@given(body=st.binary(max_size=64))
def test_decode_v3_of_any_bytes_never_raises_anything_but_wire_error(body: bytes) -> None:
    try:
        items = decode({b"v": b"3", b"e": body})
    except WireError:
        return
    for item in items:
        assert isinstance(item, ev.Event | DropReport | WireError)


@ROBUST
@given(kind=st.sampled_from([*KINDS, "fleet-dropped", "x"]),
       tail=st.lists(_json, max_size=32),
       other=_json)
def test_decode_v2_never_raises_anything_but_wire_error(
    kind: str, tail: list[Any], other: Any,
) -> None:
    fields = {b"v": b"2", b"e": json.dumps([[kind, *tail], tail, other]).encode()}
    for item in decode(fields):
        assert isinstance(item, ev.Event | DropReport | WireError)


_text_st = st.text(max_size=40)
_finite = st.floats(allow_nan=False, allow_infinity=False)


@ROBUST
@given(task_id=_text_st, task_name=_text_st, queue=_text_st, attempt=st.integers(0, 10**6),
       worker_id=st.none() | _text_st, runtime_s=st.none() | st.floats(),
       occurred_at=_finite, traceparent=st.none() | st.text(max_size=200))
def test_round_trip_property(
    *, task_id: str, task_name: str, queue: str, attempt: int, worker_id: str | None,
    runtime_s: float | None, occurred_at: float, traceparent: str | None,
) -> None:
    event = ev.TaskSucceeded(occurred_at=occurred_at, task_id=task_id, task_name=task_name,
                             queue=queue, attempt=attempt, worker_id=worker_id,
                             runtime_s=runtime_s)
    (decoded,) = decode(as_stream(pack([encode(event, traceparent)])))
    # What v1 and v2 made of the same event is what v3 makes of it.
    (decoded_v1,) = decode(as_stream(pack_v1([encode_v1(event, traceparent)])))
    (decoded_v2,) = decode(as_stream(pack_v2([encode_v2(event, traceparent)])))
    assert decoded == decoded_v1 == decoded_v2
    assert isinstance(decoded, ev.TaskSucceeded)
    assert (decoded.task_id, decoded.task_name, decoded.queue, decoded.attempt,
            decoded.worker_id, decoded.occurred_at) == (
        task_id, task_name, queue, attempt, worker_id, occurred_at)


@pytest.mark.parametrize("fields", [
    # an integer no float holds, where a float belongs
    {"v": "2", "e": '[["task-succeeded",null,1.0,"t","n",null,null,null,null,1' + "0" * 400
     + "]]"},
    {"v": "1", "e": '[{"k":"task-succeeded","task_id":"t","task_name":"n","runtime_s":1'
     + "0" * 400 + "}]"},
], ids=["v2", "v1"])
def test_a_huge_integer_for_a_float_is_a_malformed_record(fields: dict[str, str]) -> None:
    (item,) = decode(as_stream(fields))
    assert isinstance(item, WireError)
    assert item.kind == "malformed"


@pytest.mark.parametrize("version", ["2", "1"])
def test_json_nested_too_deep_is_a_malformed_entry(version: str) -> None:
    with pytest.raises(WireError) as caught:
        decode(as_stream({"v": version, "e": "[" * 200_000}))
    assert caught.value.kind == "malformed"


def test_a_drop_report_carries_any_worker_name() -> None:
    record = drops_record("w\udcff", 3)  # a host name decoded with surrogateescape
    assert decode(as_stream(pack([record]))) == [DropReport("w?", 3)]


def test_prepare_clean_makes_text_valid_utf8() -> None:
    kind, tp, values = prepare("task-succeeded", "00-\udcff",
                               (1.0, "t\udcff", "n", "q", 0, 0, None, 0.5), clean=True)
    assert (tp, values[1]) == ("00-?", "t?")
    assert pack([(kind, tp, values)])["v"] == "3"
