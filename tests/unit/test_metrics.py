"""Each signal moves the right series; exemplars carry task and trace IDs; labels stay bounded."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import TypedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest as text_format
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

import stem_observe
from stem_observe import events as ev
from stem_observe.config import Settings
from tests.conftest import Installed

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
class TaskFields(TypedDict):
    task_id: str
    task_name: str
    queue: str
    worker_id: str


TASK: TaskFields = {
    "task_id": "t-1", "task_name": "emails.send", "queue": "emails", "worker_id": "w-1"
}
TQ = {"task": "emails.send", "queue": "emails"}
W = {"worker": "w-1", "namespace": "stem"}
Q = {"queue": "emails", "namespace": "stem"}
S = {"schedule": "nightly"}
BEAT = 4102444800.0  # a heartbeat stamped in the future is clamped to now: never stale here

Changes = dict[tuple[str, frozenset[tuple[str, str]]], float]


def changes(*items: tuple[str, dict[str, str], float]) -> Changes:
    return {(name, frozenset(labels.items())): delta for name, labels, delta in items}


def dur(seconds: float) -> tuple[tuple[str, dict[str, str], float], ...]:
    """The sample changes of one duration observation (count, sum and its buckets)."""
    buckets = [b for b in Settings().duration_buckets if b >= seconds]
    return (
        ("stem_task_duration_seconds_count", TQ, 1),
        ("stem_task_duration_seconds_sum", TQ, seconds),
        *(("stem_task_duration_seconds_bucket", {**TQ, "le": str(b)}, 1) for b in buckets),
        ("stem_task_duration_seconds_bucket", {**TQ, "le": "+Inf"}, 1),
    )


def wait(seconds: float) -> tuple[tuple[str, dict[str, str], float], ...]:
    buckets = [b for b in Settings().queue_wait_buckets if b >= seconds]
    return (
        ("stem_task_queue_wait_seconds_count", TQ, 1),
        ("stem_task_queue_wait_seconds_sum", TQ, seconds),
        *(("stem_task_queue_wait_seconds_bucket", {**TQ, "le": str(b)}, 1) for b in buckets),
        ("stem_task_queue_wait_seconds_bucket", {**TQ, "le": "+Inf"}, 1),
    )


CASES: list[tuple[ev.Event, Changes]] = [
    (ev.TaskPublished(**TASK), changes(("stem_tasks_published_total", TQ, 1))),
    (ev.TaskReceived(**TASK), changes(("stem_tasks_received_total", TQ, 1))),
    (ev.TaskPrerun(**TASK), changes(("stem_tasks_started_total", TQ, 1))),
    (ev.TaskPrerun(**TASK, occurred_at=1000.0, enqueued_at=990.0),
     changes(("stem_tasks_started_total", TQ, 1), *wait(10.0))),
    (ev.TaskPrerun(**TASK, occurred_at=1000.0, enqueued_at=990.0, eta=996.0),
     changes(("stem_tasks_started_total", TQ, 1), *wait(4.0))),
    (ev.TaskSucceeded(**TASK, runtime_s=0.2),
     changes(("stem_tasks_succeeded_total", TQ, 1), *dur(0.2))),
    (ev.TaskFailed(**TASK, error_type="SMTPError", runtime_s=0.3), changes(
        ("stem_tasks_failed_total", TQ, 1),
        ("stem_task_failures_by_error_total", {**TQ, "error_type": "SMTPError"}, 1),
        *dur(0.3))),
    (ev.TaskRetry(**TASK, reason="timeout", runtime_s=1.5),
     changes(("stem_tasks_retried_total", TQ, 1), *dur(1.5))),
    (ev.TaskRevoked(**TASK), changes(("stem_tasks_revoked_total", TQ, 1))),
    (ev.TaskDeadLettered(**TASK, reason="max-retries-exhausted"), changes(
        ("stem_tasks_dead_lettered_total", {**TQ, "reason": "max-retries-exhausted"}, 1))),
    (ev.TaskPostrun(**TASK), changes()),
    (ev.TaskHeartbeat(**TASK, progress=0.5), changes()),
    (ev.WorkerReady(worker_id="w-1", concurrency=8),
     changes(("stem_worker_up", W, 1), ("stem_worker_concurrency", W, 8))),
    (ev.WorkerHeartbeat(worker_id="w-1", timestamp=BEAT, inflight=3, concurrency=4), changes(
        ("stem_worker_up", W, 1), ("stem_worker_inflight", W, 3),
        ("stem_worker_concurrency", W, 4),
        ("stem_worker_last_heartbeat_timestamp_seconds", W, BEAT))),
    (ev.QueueSnapshot(queue="emails", pending=7, inflight=2, delayed=4, delayed_overdue=1,
                      oldest_pending_age_s=42.0, dead_letters=5, oldest_dead_letter_age_s=60.0),
     changes(("stem_queue_depth", Q, 7), ("stem_queue_inflight", Q, 2),
             ("stem_queue_delayed", Q, 4), ("stem_queue_delayed_overdue", Q, 1),
             ("stem_queue_oldest_message_age_seconds", Q, 42), ("stem_dlq_depth", Q, 5),
             ("stem_dlq_oldest_age_seconds", Q, 60))),
    (ev.QueueSnapshot(queue="emails", pending=7), changes(("stem_queue_depth", Q, 7))),
    (ev.ScheduleEntryDue(entry_id="nightly"), changes(("stem_scheduler_due_total", S, 1))),
    (ev.ScheduleEntryDispatched(entry_id="nightly", drift_s=-0.3), changes(
        ("stem_scheduler_dispatch_success_total", S, 1),
        ("stem_scheduler_drift_seconds_count", S, 1),
        ("stem_scheduler_drift_seconds_sum", S, 0.3),
        *(("stem_scheduler_drift_seconds_bucket", {**S, "le": le}, 1)
          for le in ("0.5", "1.0", "5.0", "15.0", "30.0", "60.0", "90.0", "120.0", "300.0",
                     "900.0", "+Inf")))),
    (ev.ScheduleEntryFailed(entry_id="nightly"),
     changes(("stem_scheduler_dispatch_failed_total", S, 1))),
]


def samples(registry: CollectorRegistry) -> Changes:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for metric in registry.collect() for sample in metric.samples
        if not sample.name.endswith("_created") and not sample.name.startswith("stem_observe_")
    }


@pytest.mark.parametrize(("event", "expected"), CASES,
                         ids=[f"{i}-{type(c[0]).__name__}" for i, c in enumerate(CASES)])
def test_each_signal_moves_exactly_its_series(
    installed: Installed, event: ev.Event, expected: Changes
) -> None:
    before = samples(installed.registry)
    stem_observe.emit(event)
    after = samples(installed.registry)
    moved = {
        key: after[key] - before.get(key, 0.0)
        for key in after if after[key] != before.get(key, 0.0)
    }
    assert moved.keys() == expected.keys()
    for key, delta in expected.items():
        assert moved[key] == pytest.approx(delta), key


def test_worker_shutdown_marks_worker_down(installed: Installed) -> None:
    stem_observe.emit(ev.WorkerHeartbeat(worker_id="w-1", inflight=2))
    stem_observe.emit(ev.WorkerShutdown(worker_id="w-1"))
    assert installed.value("stem_worker_up", **W) == 0
    assert installed.value("stem_worker_inflight", **W) == 0
    # A late postrun after shutdown does not drive the gauge below zero.
    stem_observe.emit(ev.TaskPostrun(task_id="t", task_name="a", worker_id="w-1",
                                     in_process=True))
    assert installed.value("stem_worker_inflight", **W) == 0


def test_in_process_tasks_count_worker_inflight(installed: Installed) -> None:
    labels = {"worker": "w-9", "namespace": "stem"}
    with stem_observe.track_task("a", worker_id="w-9"):
        assert installed.value("stem_worker_inflight", **labels) == 1
        stem_observe.emit(ev.WorkerHeartbeat(worker_id="w-9", inflight=1))
        assert installed.value("stem_worker_inflight", **labels) == 1
    assert installed.value("stem_worker_inflight", **labels) == 0


def test_silent_workers_go_down_and_are_forgotten() -> None:
    registry = CollectorRegistry()
    stem_observe.install(registry=registry, tracing=False, worker_forget_after_s=3600)
    try:
        now = time.time()
        stem_observe.emit(ev.WorkerHeartbeat(worker_id="fresh", interval_s=10))
        stem_observe.emit(ev.WorkerHeartbeat(worker_id="silent", interval_s=1))
        bridge = stem_observe.installed()
        assert bridge is not None
        assert bridge.metrics is not None
        # Four intervals of silence (the default limit is three) make a worker down.
        bridge.metrics.workers.sweep(now + 4)
        get = registry.get_sample_value
        assert get("stem_worker_up", {"worker": "fresh", "namespace": "stem"}) == 1
        assert get("stem_worker_up", {"worker": "silent", "namespace": "stem"}) == 0
        # Past worker_forget_after_s its series go, and its label slot is free again.
        bridge.metrics.workers.sweep(now + 3601)
        assert get("stem_worker_up", {"worker": "silent", "namespace": "stem"}) is None
        assert get("stem_worker_inflight", {"worker": "silent", "namespace": "stem"}) is None
    finally:
        stem_observe.uninstall()


def test_worker_restarts_do_not_exhaust_the_worker_label() -> None:
    registry = CollectorRegistry()
    stem_observe.install(registry=registry, tracing=False, max_workers=2,
                         worker_forget_after_s=60)
    try:
        bridge = stem_observe.installed()
        assert bridge is not None
        assert bridge.metrics is not None
        start = time.time()
        for generation in range(5):  # each "restart" has a new pid in its id
            stem_observe.emit(ev.WorkerHeartbeat(worker_id=f"host-{1000 + generation}"))
            bridge.metrics.workers.sweep(start + 61 * (generation + 1) + 1)
        stem_observe.emit(ev.WorkerHeartbeat(worker_id="host-2000"))
        assert registry.get_sample_value(
            "stem_worker_up", {"worker": "host-2000", "namespace": "stem"}) == 1
        assert registry.get_sample_value(
            "stem_observe_label_overflow_total", {"label": "worker"}) == 0
    finally:
        stem_observe.uninstall()


def _exemplar_lines(registry: CollectorRegistry, metric: str) -> list[str]:
    body: str = openmetrics(registry).decode()  # type: ignore[no-untyped-call]
    return [line for line in body.splitlines() if line.startswith(metric) and " # {" in line]


def test_exemplars_carry_task_id_and_trace_id_in_openmetrics(installed: Installed) -> None:
    stem_observe.emit(ev.TaskSucceeded(
        task_id="task-abc", task_name="emails.send", queue="emails",
        headers={"traceparent": TRACEPARENT}, runtime_s=0.05,
    ))
    stem_observe.emit(ev.TaskFailed(
        task_id="task-abc", task_name="emails.send", queue="emails",
        headers={"traceparent": TRACEPARENT},
    ))
    for metric in ("stem_tasks_failed_total", "stem_task_duration_seconds_bucket"):
        lines = _exemplar_lines(installed.registry, metric)
        assert lines, f"no exemplar on {metric}"
        assert 'task_id="task-abc"' in lines[0]
        assert 'trace_id="0af7651916cd43dd8448eb211c80319c"' in lines[0]
    # The classic text format has no exemplars, and task IDs are never labels.
    text = text_format(installed.registry).decode()
    assert "task-abc" not in text
    assert "task_id=" not in text


def test_exemplar_trace_id_is_the_task_span_trace(installed: Installed) -> None:
    with stem_observe.track_task("emails.send", task_id="t-77", queue="emails"):
        pass
    (span,) = installed.spans.get_finished_spans()
    assert span.context is not None
    trace_id = format(span.context.trace_id, "032x")
    (line,) = _exemplar_lines(installed.registry, "stem_task_duration_seconds_bucket")
    assert f'trace_id="{trace_id}"' in line
    assert 'task_id="t-77"' in line


def test_unsampled_trace_has_no_trace_id_exemplar(installed: Installed) -> None:
    unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    stem_observe.emit(
        ev.TaskFailed(task_id="t-2", task_name="x", headers={"traceparent": unsampled})
    )
    (line,) = _exemplar_lines(installed.registry, "stem_tasks_failed_total")
    assert 'task_id="t-2"' in line
    assert "trace_id" not in line


@pytest.fixture
def bridge_registry(request: pytest.FixtureRequest) -> Iterator[CollectorRegistry]:
    """The bridge installed (metrics only) with the settings the test's marker gives."""
    marker = request.node.get_closest_marker("settings")
    registry = CollectorRegistry()
    stem_observe.install(registry=registry, tracing=False, **(marker.kwargs if marker else {}))
    yield registry
    stem_observe.uninstall()


def test_long_task_ids_are_truncated_to_fit_an_exemplar(
    bridge_registry: CollectorRegistry,
) -> None:
    stem_observe.emit(ev.TaskRetry(task_id="x" * 300, task_name="a",
                                   headers={"traceparent": TRACEPARENT}))
    (line,) = _exemplar_lines(bridge_registry, "stem_tasks_retried_total")
    assert 'task_id="' + "x" * 80 + '"' in line


# Any text, lone surrogates included (undecodable bytes read with "surrogateescape").
ANY_TEXT = st.one_of(st.text(), st.text(alphabet=st.characters(categories=["Cs", "L", "N", "P"])))


@given(task_id=ANY_TEXT, task_name=ANY_TEXT, queue=ANY_TEXT, error_type=ANY_TEXT)
@settings(max_examples=60, deadline=None)
def test_any_text_is_counted_and_the_scrape_never_breaks(
    task_id: str, task_name: str, queue: str, error_type: str
) -> None:
    registry = CollectorRegistry()
    stem_observe.install(registry=registry, tracing=False)
    try:
        stem_observe.emit(ev.TaskFailed(task_id=task_id, task_name=task_name, queue=queue,
                                        error_type=error_type, runtime_s=0.1))
        total = sum(
            sample.value for metric in registry.collect() if metric.name == "stem_tasks_failed"
            for sample in metric.samples if sample.name == "stem_tasks_failed_total"
        )
        assert total == 1
        text_format(registry).decode()  # both formats render, whatever the input was
        openmetrics(registry).decode()  # type: ignore[no-untyped-call]
    finally:
        stem_observe.uninstall()


@pytest.mark.settings(max_task_names=3)
def test_task_names_past_the_limit_fold_into_overflow_and_are_counted(
    bridge_registry: CollectorRegistry,
) -> None:
    for index in range(10):
        stem_observe.emit(ev.TaskPrerun(task_id=f"t{index}", task_name=f"task-{index}"))
    names = {
        sample.labels["task"]
        for metric in bridge_registry.collect() if metric.name == "stem_tasks_started"
        for sample in metric.samples if sample.name == "stem_tasks_started_total"
    }
    assert names == {"task-0", "task-1", "task-2", "__overflow__"}
    get = bridge_registry.get_sample_value
    assert get("stem_tasks_started_total", {"task": "__overflow__", "queue": "default"}) == 7
    assert get("stem_observe_label_overflow_total", {"label": "task"}) == 7
    # An admitted name keeps its own series after the limit is reached.
    stem_observe.emit(ev.TaskPrerun(task_id="again", task_name="task-1"))
    assert get("stem_tasks_started_total", {"task": "task-1", "queue": "default"}) == 2


@pytest.mark.settings(max_label_values=2, max_queues=1, max_workers=1)
def test_error_types_queues_and_workers_are_bounded_too(
    bridge_registry: CollectorRegistry,
) -> None:
    for index in range(5):
        stem_observe.emit(ev.TaskFailed(task_id=f"t{index}", task_name="a", queue=f"q{index}",
                                        error_type=f"E{index}"))
        stem_observe.emit(ev.WorkerHeartbeat(worker_id=f"w{index}"))
    for label, folded in (("error_type", 3), ("queue", 4), ("worker", 4)):
        assert bridge_registry.get_sample_value(
            "stem_observe_label_overflow_total", {"label": label}) == folded, label


@pytest.mark.settings(metrics_profile="celery-exporter")
def test_celery_exporter_profile_uses_its_names_and_labels(
    bridge_registry: CollectorRegistry,
) -> None:
    task: TaskFields = {
        "task_id": "t", "task_name": "proj.add", "queue": "celery", "worker_id": "celery@h1"
    }
    labels = {"name": "proj.add", "hostname": "celery@h1", "queue_name": "celery"}
    for event in (
        ev.TaskReceived(**task), ev.TaskPrerun(**task), ev.TaskSucceeded(**task, runtime_s=0.5),
        ev.TaskRetry(**task), ev.TaskFailed(**task, error_type="ZeroDivisionError"),
        ev.WorkerHeartbeat(worker_id="celery@h1", inflight=2),
        ev.QueueSnapshot(queue="celery", pending=9),
    ):
        stem_observe.emit(event)
    get = bridge_registry.get_sample_value
    assert get("celery_task_received_total", labels) == 1
    assert get("celery_task_started_total", labels) == 1
    assert get("celery_task_succeeded_total", labels) == 1
    assert get("celery_task_retried_total", labels) == 1
    assert get("celery_task_failed_total", {**labels, "exception": "ZeroDivisionError"}) == 1
    assert get("celery_task_runtime_count", labels) == 1
    assert get("celery_worker_up", {"hostname": "celery@h1"}) == 1
    assert get("celery_worker_tasks_active", {"hostname": "celery@h1"}) == 2
    assert get("celery_queue_length", {"queue_name": "celery"}) == 9
    assert get("stem_tasks_started_total", {"task": "proj.add", "queue": "celery"}) is None


def test_registry_is_injectable_and_uninstall_unregisters() -> None:
    registry = CollectorRegistry()
    stem_observe.install(registry=registry)
    assert "stem_tasks_started" in {m.name for m in registry.collect()}
    stem_observe.uninstall()
    assert not list(registry.collect())
    stem_observe.install(registry=registry)  # the names are free again
    stem_observe.uninstall()


def test_no_metric_carries_a_task_id_label(bridge_registry: CollectorRegistry) -> None:
    stem_observe.emit(ev.TaskFailed(task_id="t-1", task_name="a"))
    for metric in bridge_registry.collect():
        assert not re.search(r"task_id|trace_id", metric.name)
        for sample in metric.samples:
            assert "task_id" not in sample.labels
