"""The fleet stream's record format: round trips, limits, and bad entries."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stem_observe import events as ev
from stem_observe.sources._fleet_wire import (
    KINDS,
    MAX_STACKTRACE,
    MAX_TEXT,
    RECORDS_PER_ENTRY,
    DropReport,
    WireError,
    decode,
    decode_record,
    drops_record,
    encode,
    pack,
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
    assert decode(as_stream(pack([drops_record("host-1", 7)]))) == [DropReport("host-1", 7)]


def test_a_bad_record_does_not_spoil_its_entry() -> None:
    good = encode(ev.TaskSucceeded(task_id="t", task_name="n"))
    items = decode(as_stream({"v": "1", "e": json.dumps([good, {"k": "task-lost"}, 5, good])}))
    assert [type(i).__name__ for i in items] == [
        "TaskSucceeded", "WireError", "WireError", "TaskSucceeded"]
    assert [i.kind for i in items if isinstance(i, WireError)] == ["kind", "malformed"]


def test_records_per_entry_is_what_the_forwarder_packs() -> None:
    assert RECORDS_PER_ENTRY >= 10


@pytest.mark.parametrize(("fields", "kind"), [
    ({"v": "2", "e": "[]"}, "version"),
    ({"e": "[]"}, "malformed"),
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
def test_bad_records_raise_wire_errors_with_a_bounded_kind(
    record: dict[str, object], kind: str,
) -> None:
    with pytest.raises(WireError) as caught:
        decode_record(record)
    assert caught.value.kind == kind


def test_invalid_utf8_is_malformed() -> None:
    with pytest.raises(WireError):
        decode({b"v": b"1", b"e": b"\xff\xfe"})


def test_unknown_fields_from_a_newer_forwarder_are_ignored() -> None:
    decoded = decode_record({"k": "task-succeeded", "task_id": "t", "task_name": "n",
                             "shiny": [1, 2]})
    assert isinstance(decoded, ev.TaskSucceeded)
    assert decoded.task_id == "t"


_json: Any = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=20,
)


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
