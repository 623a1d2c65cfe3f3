"""The fleet forwarder without a Redis: bounded, counted, never blocking, loud on bad config."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

import stem_observe
from stem_observe.errors import ConfigError
from stem_observe.sinks.fleet import FLEET_SENDER, FleetForwarder
from tests.support.redis_server import free_port
from tests.support.wait import wait_for


@pytest.fixture
def unreachable() -> str:
    """A Redis URL nobody answers on."""
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def run_tasks(count: int) -> None:
    for i in range(count):
        with stem_observe.track_task("fleet.unit", task_id=f"t{i}", queue="q"):
            pass


def test_with_redis_away_events_queue_up_to_the_bound_and_the_rest_is_counted(
    unreachable: str, registry: CollectorRegistry,
) -> None:
    forwarder = FleetForwarder(unreachable, queue_max=100, flush_interval_s=0.05,
                               timeout_s=0.5, registry=registry).start()
    try:
        started = time.perf_counter()
        run_tasks(500)  # 4 events each
        elapsed = time.perf_counter() - started
        wait_for(lambda: forwarder.dropped + forwarder.queued == 2000,
                 message="every event queued or counted")
        assert forwarder.queued <= 100
        assert forwarder.dropped_by_reason().get("queue_full", 0) >= 1900
        assert registry.get_sample_value(
            "stem_observe_fleet_dropped_total", {"reason": "queue_full"}) == \
            forwarder.dropped_by_reason()["queue_full"]
        # No I/O on the emitting thread: far below one connection attempt per event.
        assert elapsed < 2.0, f"500 tasks took {elapsed:.2f}s with Redis away"
    finally:
        started = time.monotonic()
        forwarder.close(timeout_s=1.0)
        assert time.monotonic() - started < 3.0
    assert forwarder.dropped == 2000  # what was still queued at close counts too
    assert forwarder.queued == 0
    assert registry.get_sample_value("stem_observe_fleet_queue_size") is None  # unregistered


def test_closed_forwarder_no_longer_receives(unreachable: str) -> None:
    forwarder = FleetForwarder(unreachable, timeout_s=0.2, registry=None).start()
    forwarder.close(timeout_s=0.5)
    dropped = forwarder.dropped
    run_tasks(3)
    assert forwarder.queued == 0
    assert forwarder.dropped == dropped
    with pytest.raises(RuntimeError):
        forwarder.start()


def test_events_from_the_fleet_stream_are_not_forwarded_again(unreachable: str) -> None:
    forwarder = FleetForwarder(unreachable, timeout_s=0.2, registry=None).start()
    try:
        stem_observe.emit(stem_observe.TaskSucceeded(task_id="t", task_name="n"), FLEET_SENDER)
        stem_observe.emit(stem_observe.WorkerReady(worker_id="w"), FLEET_SENDER)
        assert forwarder.queued == 0
        assert forwarder.dropped == 0
        stem_observe.emit(stem_observe.WorkerReady(worker_id="w"))
        assert forwarder.queued + forwarder.dropped == 1
    finally:
        forwarder.close(timeout_s=0.5)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"queue_max": 0}, "queue_max"),
    ({"batch_max": 1.5}, "batch_max"),
    ({"maxlen": -1}, "maxlen"),
    ({"flush_interval_s": 0}, "flush_interval_s"),
    ({"timeout_s": True}, "timeout_s"),
    ({"stream": ""}, "stream"),
])
def test_bad_settings_name_the_parameter(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        FleetForwarder("redis://127.0.0.1:1/0", registry=None, **kwargs)  # type: ignore[arg-type]
    assert name in str(caught.value)


def test_bad_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        FleetForwarder("http://example.com/", registry=None)
    assert "redis_url" in str(caught.value)


def test_a_queued_failure_holds_its_fields_not_its_exception(unreachable: str) -> None:
    forwarder = FleetForwarder(unreachable, timeout_s=0.2, registry=None).start()
    try:
        error = KeyError("card")
        stem_observe.emit(stem_observe.TaskFailed(task_id="t", task_name="n", exception=error,
                                                  error_type="KeyError"))
        assert forwarder.queued == 1
        ((kind, traceparent, values),) = list(forwarder._queue)
        assert (kind, traceparent) == ("task-failed", None)
        assert "t" in values
        assert "KeyError" in values
        assert error not in values
    finally:
        forwarder.close(timeout_s=0.5)
    assert forwarder.dropped == 1  # Redis never answered: counted at close


def test_an_event_whose_fields_cannot_be_read_is_counted_not_queued(unreachable: str) -> None:
    forwarder = FleetForwarder(unreachable, timeout_s=0.2, registry=None).start()
    try:
        stem_observe.emit(stem_observe.TaskFailed(
            task_id="t", task_name="n", runtime_s="1.5"))  # type: ignore[arg-type]
        assert forwarder.queued == 0
        assert forwarder.dropped_by_reason() == {"unencodable": 1}
    finally:
        forwarder.close(timeout_s=0.5)
