"""The fleet stream's record format: round trips, limits, bad entries, and version 1 entries
from workers not yet upgraded."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stem_observe import events as ev
from stem_observe.sources._fleet_wire import (
    KINDS,
    MAX_STACKTRACE,
    MAX_TEXT,
    READERS,
    RECORDS_PER_ENTRY,
    VERSION,
    DropReport,
    WireError,
    decode,
    decode_record,
    decode_record_v1,
    drops_record,
    encode,
    encode_v1,
    finish,
    layout,
    pack,
    pack_v1,
)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def as_stream(fields: dict[str, str]) -> dict[bytes, bytes]:
    """What redis-py returns for an entry written with ``fields``."""
    return {k.encode(): v.encode() for k, v in fields.items()}


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


def test_an_entry_is_version_2_with_positional_records() -> None:
    event = ev.TaskReceived(occurred_at=10.5, task_id="t1", task_name="a.b", worker_id="w1")
    fields = pack([encode(event, TRACEPARENT)])
    assert VERSION == "2"
    assert fields == {
        "v": "2",
        # kind, tp, then the layout; defaults travel as they are, trailing nulls are left out
        "e": f'[["task-received","{TRACEPARENT}",10.5,"t1","a.b","default",0,0,"w1"]]',
    }
    assert encode(ev.WorkerStopping(occurred_at=1.0, worker_id="w")) == [
        "worker-stopping", None, 1.0, "w", (), "stem"]


def test_what_the_forwarder_queues_encodes_like_the_event() -> None:
    event = EXAMPLES[4]  # TaskFailed: text, floats, an optional stack trace
    kind, read = READERS[type(event)]
    assert finish(kind, TRACEPARENT, read(event)) == encode(event, TRACEPARENT)


# Version 2 records are positional: a field added to an event must be appended to its
# layouts (older consumers ignore what comes after theirs), never inserted. Pinned here.
LAYOUTS_V2: dict[str, tuple[str, ...]] = {
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


def test_version_2_layouts_are_pinned() -> None:
    assert {kind: layout(kind) for kind in KINDS} == LAYOUTS_V2


def test_traceparent_travels_and_other_headers_and_live_objects_do_not() -> None:
    event = ev.TaskFailed(task_id="t", task_name="n", in_process=True,
                          headers={"traceparent": TRACEPARENT, "secret": "x"},
                          exception=KeyError("k"))
    fields = pack([encode(event, TRACEPARENT)])
    assert "secret" not in fields["e"]
    assert "KeyError('k')" not in fields["e"]
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
    assert drops_record("host-1", 7) == ["fleet-dropped", "host-1", 7]
    assert decode(as_stream(pack([drops_record("host-1", 7)]))) == [DropReport("host-1", 7)]
    v1 = {"v": "1", "e": '[{"k":"fleet-dropped","w":"host-1","n":7}]'}
    assert decode(as_stream(v1)) == [DropReport("host-1", 7)]


def test_a_bad_record_does_not_spoil_its_entry() -> None:
    good = encode(ev.TaskSucceeded(task_id="t", task_name="n"))
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


def test_records_of_the_other_version_are_malformed() -> None:
    v1_record = encode_v1(ev.TaskSucceeded(task_id="t", task_name="n"))
    v2_record = encode(ev.TaskSucceeded(task_id="t", task_name="n"))
    (in_v2,) = decode(as_stream({"v": "2", "e": json.dumps([v1_record])}))
    (in_v1,) = decode(as_stream({"v": "1", "e": json.dumps([v2_record])}))
    assert isinstance(in_v2, WireError)
    assert in_v2.kind == "malformed"
    assert isinstance(in_v1, WireError)
    assert in_v1.kind == "malformed"


def test_records_per_entry_is_what_the_forwarder_packs() -> None:
    assert RECORDS_PER_ENTRY >= 10


@pytest.mark.parametrize(("fields", "kind"), [
    ({"v": "3", "e": "[]"}, "version"),
    ({"v": "", "e": "[]"}, "version"),
    ({"e": "[]"}, "malformed"),
    ({"v": "2", "e": "{not json"}, "malformed"),
    ({"v": "2", "e": "{}"}, "malformed"),
    ({"v": "1", "e": "{not json"}, "malformed"),
    ({"v": "1", "e": "{}"}, "malformed"),
])
def test_bad_entries_raise_wire_errors_with_a_bounded_kind(
    fields: dict[str, str], kind: str,
) -> None:
    with pytest.raises(WireError) as caught:
        decode(as_stream(fields))
    assert caught.value.kind == kind


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
def test_bad_records_raise_wire_errors_with_a_bounded_kind(record: object, kind: str) -> None:
    with pytest.raises(WireError) as caught:
        decode_record(record)
    assert caught.value.kind == kind


def test_invalid_utf8_is_malformed() -> None:
    with pytest.raises(WireError):
        decode({b"v": b"1", b"e": b"\xff\xfe"})


def test_unknown_fields_from_a_newer_forwarder_are_ignored() -> None:
    decoded = decode_record_v1({"k": "task-succeeded", "task_id": "t", "task_name": "n",
                                "shiny": [1, 2]})
    assert isinstance(decoded, ev.TaskSucceeded)
    assert decoded.task_id == "t"
    appended = decode_record(["task-succeeded", None, 1.0, "t", "n", None, None, None, None,
                              0.5, "shiny", [1, 2]])
    assert isinstance(appended, ev.TaskSucceeded)
    assert (appended.task_id, appended.runtime_s) == ("t", 0.5)


def test_nulls_are_defaults() -> None:
    decoded = decode_record(["task-received", None, 2.0, "t", "n", None, None, None, None])
    assert decoded == ev.TaskReceived(occurred_at=2.0, task_id="t", task_name="n")


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
def test_v2_round_trip_property(
    *, task_id: str, task_name: str, queue: str, attempt: int, worker_id: str | None,
    runtime_s: float | None, occurred_at: float, traceparent: str | None,
) -> None:
    event = ev.TaskSucceeded(occurred_at=occurred_at, task_id=task_id, task_name=task_name,
                             queue=queue, attempt=attempt, worker_id=worker_id,
                             runtime_s=runtime_s)
    (decoded,) = decode(as_stream(pack([encode(event, traceparent)])))
    # What v1 made of the same event is what v2 makes of it.
    (decoded_v1,) = decode(as_stream(pack_v1([encode_v1(event, traceparent)])))
    assert decoded == decoded_v1
    assert isinstance(decoded, ev.TaskSucceeded)
    assert (decoded.task_id, decoded.task_name, decoded.queue, decoded.attempt,
            decoded.worker_id, decoded.occurred_at) == (
        task_id, task_name, queue, attempt, worker_id, occurred_at)
