"""Each signal moves the right series; exemplars carry task and trace IDs; labels stay bounded."""

from __future__ import annotations

import re
from typing import TypedDict

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest as text_format
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

import stem_observe
from stem_observe import events as ev
from stem_observe.config import Settings
from stem_observe.sinks.metrics import MetricsSink
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

CASES: list[tuple[ev.Event, str, dict[str, str], float]] = [
    (ev.TaskPublished(**TASK), "stem_tasks_published_total", TQ, 1),
    (ev.TaskReceived(**TASK), "stem_tasks_received_total", TQ, 1),
    (ev.TaskPrerun(**TASK), "stem_tasks_started_total", TQ, 1),
    (ev.TaskSucceeded(**TASK, runtime_s=0.2), "stem_tasks_succeeded_total", TQ, 1),
    (ev.TaskSucceeded(**TASK, runtime_s=0.2), "stem_task_duration_seconds_count", TQ, 1),
    (ev.TaskSucceeded(**TASK, runtime_s=0.2), "stem_task_duration_seconds_sum", TQ, 0.2),
    (ev.TaskFailed(**TASK, error_type="SMTPError"), "stem_tasks_failed_total", TQ, 1),
    (ev.TaskFailed(**TASK, error_type="SMTPError"), "stem_task_failures_by_error_total",
     {**TQ, "error_type": "SMTPError"}, 1),
    (ev.TaskRetry(**TASK, reason="timeout", runtime_s=1.5), "stem_tasks_retried_total", TQ, 1),
    (ev.TaskRetry(**TASK, reason="timeout", runtime_s=1.5),
     "stem_task_duration_seconds_sum", TQ, 1.5),
    (ev.TaskRevoked(**TASK), "stem_tasks_revoked_total", TQ, 1),
    (ev.TaskDeadLettered(**TASK, reason="max-retries-exhausted"),
     "stem_tasks_dead_lettered_total", {**TQ, "reason": "max-retries-exhausted"}, 1),
    (ev.TaskPrerun(**TASK, occurred_at=1000.0, enqueued_at=990.0),
     "stem_task_queue_wait_seconds_sum", TQ, 10.0),
    (ev.TaskPrerun(**TASK, occurred_at=1000.0, enqueued_at=990.0, eta=996.0),
     "stem_task_queue_wait_seconds_sum", TQ, 4.0),
    (ev.WorkerReady(worker_id="w-1", concurrency=8), "stem_worker_up", {"worker": "w-1"}, 1),
    (ev.WorkerReady(worker_id="w-1", concurrency=8), "stem_worker_concurrency",
     {"worker": "w-1"}, 8),
    (ev.WorkerHeartbeat(worker_id="w-1", timestamp=1234.5, inflight=3),
     "stem_worker_last_heartbeat_timestamp_seconds", {"worker": "w-1"}, 1234.5),
    (ev.WorkerHeartbeat(worker_id="w-1", inflight=3), "stem_worker_inflight",
     {"worker": "w-1"}, 3),
    (ev.WorkerHeartbeat(worker_id="w-1"), "stem_worker_up", {"worker": "w-1"}, 1),
    (ev.QueueSnapshot(queue="emails", pending=7), "stem_queue_depth", {"queue": "emails"}, 7),
    (ev.QueueSnapshot(queue="emails", inflight=2), "stem_queue_inflight", {"queue": "emails"}, 2),
    (ev.QueueSnapshot(queue="emails", delayed=4), "stem_queue_delayed", {"queue": "emails"}, 4),
    (ev.QueueSnapshot(queue="emails", delayed_overdue=1), "stem_queue_delayed_overdue",
     {"queue": "emails"}, 1),
    (ev.QueueSnapshot(queue="emails", oldest_pending_age_s=42.0),
     "stem_queue_oldest_message_age_seconds", {"queue": "emails"}, 42),
    (ev.QueueSnapshot(queue="emails", dead_letters=5), "stem_dlq_depth", {"queue": "emails"}, 5),
    (ev.QueueSnapshot(queue="emails", oldest_dead_letter_age_s=60.0),
     "stem_dlq_oldest_age_seconds", {"queue": "emails"}, 60),
    (ev.ScheduleEntryDue(entry_id="nightly"), "stem_scheduler_due_total",
     {"schedule": "nightly"}, 1),
    (ev.ScheduleEntryDispatched(entry_id="nightly", drift_s=0.3),
     "stem_scheduler_dispatch_success_total", {"schedule": "nightly"}, 1),
    (ev.ScheduleEntryDispatched(entry_id="nightly", drift_s=-0.3),
     "stem_scheduler_drift_seconds_sum", {"schedule": "nightly"}, 0.3),
    (ev.ScheduleEntryFailed(entry_id="nightly"), "stem_scheduler_dispatch_failed_total",
     {"schedule": "nightly"}, 1),
]


@pytest.mark.parametrize(("event", "sample", "labels", "delta"), CASES,
                         ids=[f"{type(c[0]).__name__}-{c[1]}" for c in CASES])
def test_each_signal_moves_its_series(
    installed: Installed, event: ev.Event, sample: str, labels: dict[str, str], delta: float
) -> None:
    before = installed.value(sample, **labels)
    stem_observe.emit(event)
    assert installed.value(sample, **labels) == pytest.approx(before + delta)


def test_worker_shutdown_marks_worker_down(installed: Installed) -> None:
    stem_observe.emit(ev.WorkerHeartbeat(worker_id="w-1", inflight=2))
    stem_observe.emit(ev.WorkerShutdown(worker_id="w-1"))
    assert installed.value("stem_worker_up", worker="w-1") == 0
    assert installed.value("stem_worker_inflight", worker="w-1") == 0


def test_in_process_tasks_count_worker_inflight(installed: Installed) -> None:
    with stem_observe.track_task("a", worker_id="w-9"):
        assert installed.value("stem_worker_inflight", worker="w-9") == 1
    assert installed.value("stem_worker_inflight", worker="w-9") == 0


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


def test_long_task_ids_are_truncated_to_fit_an_exemplar() -> None:
    registry = CollectorRegistry()
    sink = MetricsSink(registry=registry)
    sink.on_retry(ev.TaskRetry(task_id="x" * 300, task_name="a"), "f" * 32)
    (line,) = _exemplar_lines(registry, "stem_tasks_retried_total")
    assert 'task_id="' + "x" * 80 + '"' in line


def test_task_names_past_the_limit_fold_into_overflow_and_are_counted() -> None:
    registry = CollectorRegistry()
    sink = MetricsSink(Settings(max_task_names=3), registry=registry)
    for index in range(10):
        sink.on_prerun(ev.TaskPrerun(task_id=f"t{index}", task_name=f"task-{index}"), None)
    names = {
        sample.labels["task"]
        for metric in registry.collect() if metric.name == "stem_tasks_started"
        for sample in metric.samples if sample.name == "stem_tasks_started_total"
    }
    assert names == {"task-0", "task-1", "task-2", "__overflow__"}
    assert registry.get_sample_value(
        "stem_tasks_started_total", {"task": "__overflow__", "queue": "default"}) == 7
    assert registry.get_sample_value(
        "stem_observe_label_overflow_total", {"label": "task"}) == 7
    # An admitted name keeps its own series after the limit is reached.
    sink.on_prerun(ev.TaskPrerun(task_id="again", task_name="task-1"), None)
    assert registry.get_sample_value(
        "stem_tasks_started_total", {"task": "task-1", "queue": "default"}) == 2


def test_error_types_queues_and_workers_are_bounded_too() -> None:
    registry = CollectorRegistry()
    sink = MetricsSink(Settings(max_label_values=2, max_queues=1, max_workers=1),
                       registry=registry)
    for index in range(5):
        sink.on_failed(ev.TaskFailed(task_id=f"t{index}", task_name="a", queue=f"q{index}",
                                     error_type=f"E{index}"), None)
        sink.on_worker_heartbeat(ev.WorkerHeartbeat(worker_id=f"w{index}"), None)
    for label, folded in (("error_type", 3), ("queue", 4), ("worker", 4)):
        assert registry.get_sample_value(
            "stem_observe_label_overflow_total", {"label": label}) == folded, label


def test_celery_exporter_profile_uses_its_names_and_labels() -> None:
    registry = CollectorRegistry()
    sink = MetricsSink(Settings(metrics_profile="celery-exporter"), registry=registry)
    task: TaskFields = {
        "task_id": "t", "task_name": "proj.add", "queue": "celery", "worker_id": "celery@h1"
    }
    labels = {"name": "proj.add", "hostname": "celery@h1", "queue_name": "celery"}
    sink.on_received(ev.TaskReceived(**task), None)
    sink.on_prerun(ev.TaskPrerun(**task), None)
    sink.on_succeeded(ev.TaskSucceeded(**task, runtime_s=0.5), None)
    sink.on_retry(ev.TaskRetry(**task), None)
    sink.on_failed(ev.TaskFailed(**task, error_type="ZeroDivisionError"), None)
    sink.on_worker_heartbeat(ev.WorkerHeartbeat(worker_id="celery@h1", inflight=2), None)
    sink.on_queue_snapshot(ev.QueueSnapshot(queue="celery", pending=9), None)
    get = registry.get_sample_value
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


def test_registry_is_injectable_and_close_unregisters() -> None:
    registry = CollectorRegistry()
    sink = MetricsSink(registry=registry)
    assert "stem_tasks_started" in {m.name for m in registry.collect()}
    sink.close()
    assert not list(registry.collect())
    MetricsSink(registry=registry)  # the names are free again


def test_no_metric_name_carries_a_task_id_label() -> None:
    registry = CollectorRegistry()
    MetricsSink(registry=registry)
    for metric in registry.collect():
        assert not re.search(r"task_id|trace_id", metric.name)
        for sample in metric.samples:
            assert "task_id" not in sample.labels
