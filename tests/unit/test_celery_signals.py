"""The Celery plugin's signal mapping, in eager mode and with odd input from Celery."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from celery import signals as cs
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry

import stem_observe
import stem_observe.celery
from stem_observe import events as ev
from stem_observe import signals
from stem_observe.sources.celery import PUBLISHED_AT
from tests.support import celery_app as tasks


class Plugged:
    def __init__(self, registry: CollectorRegistry, spans: InMemorySpanExporter,
                 provider: TracerProvider) -> None:
        self.registry = registry
        self.spans = spans
        self.provider = provider
        self.events: list[ev.Event] = []

    def record(self, sender: object, *, event: ev.Event) -> None:
        assert sender == "celery"
        self.events.append(event)

    def kinds(self, task_id: str | None = None) -> list[str]:
        return [type(e).__name__ for e in self.events
                if task_id is None or getattr(e, "task_id", None) == task_id]

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def plugged() -> Iterator[Plugged]:
    registry = CollectorRegistry()
    provider = TracerProvider()
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    stem_observe.celery.install(tasks.app, registry=registry, tracer_provider=provider,
                                heartbeat_interval_s=0)
    state = Plugged(registry, spans, provider)
    for sig in signals.SIGNALS.values():
        sig.connect(state.record, weak=False)
    try:
        yield state
    finally:
        for sig in signals.SIGNALS.values():
            sig.disconnect(state.record)
        stem_observe.celery.uninstall()
        provider.shutdown()
    assert stem_observe.installed() is None


def test_a_success_in_eager_mode(plugged: Plugged) -> None:
    result = tasks.add.apply((1, 2))
    assert result.get() == 3
    assert plugged.kinds(result.id) == [
        "TaskReceived", "TaskPrerun", "TaskSucceeded", "TaskPostrun"]
    succeeded = plugged.events[2]
    assert isinstance(succeeded, ev.TaskSucceeded)
    assert (succeeded.task_name, succeeded.queue, succeeded.attempt) == ("tests.add", "tests", 0)
    assert succeeded.runtime_s is not None
    assert succeeded.runtime_s >= 0
    assert plugged.value("stem_tasks_succeeded_total", task="tests.add", queue="tests") == 1
    (span,) = plugged.spans.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["stem.task.id"] == result.id
    assert span.attributes["messaging.system"] == "celery"


def test_a_failure_in_eager_mode(plugged: Plugged) -> None:
    result = tasks.broken.apply()
    assert result.state == "FAILURE"
    assert plugged.kinds(result.id) == ["TaskReceived", "TaskPrerun", "TaskFailed", "TaskPostrun"]
    failed = next(e for e in plugged.events if isinstance(e, ev.TaskFailed))
    assert failed.error_type == "ValueError"
    assert failed.error_message == "broken for good"
    postrun = plugged.events[-1]
    assert isinstance(postrun, ev.TaskPostrun)
    assert postrun.state == "failed"
    assert plugged.value("stem_task_failures_by_error_total", task="tests.broken",
                         queue="tests", error_type="ValueError") == 1


def test_a_rejected_task_fails_and_is_dead_lettered(plugged: Plugged) -> None:
    result = tasks.rejected.apply()
    assert plugged.kinds(result.id) == [
        "TaskReceived", "TaskPrerun", "TaskFailed", "TaskDeadLettered", "TaskPostrun"]
    dead = next(e for e in plugged.events if isinstance(e, ev.TaskDeadLettered))
    assert dead.reason == "rejected"


def test_a_rejected_and_requeued_task_is_a_retry(plugged: Plugged) -> None:
    result = tasks.rejected.apply(kwargs={"requeue": True})
    assert plugged.kinds(result.id) == [
        "TaskReceived", "TaskPrerun", "TaskRetry", "TaskPostrun"]


def test_publish_injects_trace_context_and_a_timestamp(plugged: Plugged) -> None:
    plugin = stem_observe.celery.installed_plugin()
    assert plugin is not None
    headers: dict[str, Any] = {"id": "t-1", "task": "tests.add"}
    with plugged.provider.get_tracer("t").start_as_current_span("producer") as span:
        cs.before_task_publish.send(sender="tests.add", headers=headers, body=((), {}, {}),
                                    exchange="", routing_key="tests")
        expected: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(expected)
        context = span.get_span_context()
    assert headers["traceparent"] == expected["traceparent"]
    assert headers["traceparent"].startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-")
    assert float(headers[PUBLISHED_AT]) > 0
    cs.after_task_publish.send(sender="tests.add", headers=headers, body=((), {}, {}),
                               exchange="", routing_key="tests")
    (published,) = [e for e in plugged.events if isinstance(e, ev.TaskPublished)]
    assert (published.task_id, published.queue) == ("t-1", "tests")
    assert published.headers == {"traceparent": headers["traceparent"]}


def test_odd_input_from_celery_is_counted_and_skipped(plugged: Plugged) -> None:
    before = dict(signals.receiver_errors)

    class OddTask:
        name = 42  # not a string
        request = None  # no request at all

    cs.before_task_publish.send(sender="x", headers=None)  # no headers dict
    cs.after_task_publish.send(sender="x", headers={"id": 7}, routing_key=None)
    cs.task_prerun.send(sender=OddTask(), task_id="odd-1", task=OddTask())
    cs.task_success.send(sender=OddTask(), result=1)
    cs.task_postrun.send(sender=OddTask(), task_id="odd-1", task=OddTask(), state=object())
    cs.task_rejected.send(sender=None, message=object(), exc=None)
    cs.task_retry.send(sender=None, request=None, reason=None)
    cs.heartbeat_sent.send(sender=None)
    errors = {k: v - before.get(k, 0) for k, v in signals.receiver_errors.items()}
    assert errors.get("celery:before_task_publish") == 1
    assert errors.get("celery:after_task_publish") == 1
    assert errors.get("celery:task_retry") == 1  # no task id: skipped
    # An odd task still yields its lifecycle, with defaults where Celery gave nothing.
    assert plugged.kinds("odd-1") == ["TaskReceived", "TaskPrerun", "TaskPostrun"]
    prerun = plugged.events[1]
    assert isinstance(prerun, ev.TaskPrerun)
    assert (prerun.task_name, prerun.queue) == ("unknown", "celery")
    dead = [e for e in plugged.events if isinstance(e, ev.TaskDeadLettered)]
    assert [d.reason for d in dead] == ["invalid-message"]
    # And the next real task is unaffected.
    assert tasks.add.apply((2, 2)).get() == 4


def test_install_twice_is_harmless(plugged: Plugged) -> None:
    bridge = stem_observe.installed()
    assert stem_observe.celery.install(tasks.app) is bridge
    assert stem_observe.celery.install(tasks.app) is bridge
    result = tasks.add.apply((1, 1))
    # Each signal is received once: no receiver was connected twice.
    assert plugged.kinds(result.id) == [
        "TaskReceived", "TaskPrerun", "TaskSucceeded", "TaskPostrun"]
    with pytest.raises(stem_observe.StemObserveError):
        stem_observe.celery.install(tasks.app, metrics_profile="celery-exporter")


def test_install_reuses_a_bridge_the_user_installed() -> None:
    registry = CollectorRegistry()
    bridge = stem_observe.install(registry=registry, tracing=False)
    try:
        assert stem_observe.celery.install(tasks.app) is bridge
        stem_observe.celery.uninstall()
        assert stem_observe.installed() is bridge  # not ours to uninstall
    finally:
        stem_observe.celery.uninstall()
        stem_observe.uninstall()


def test_fleet_needs_a_redis_url() -> None:
    with pytest.raises(stem_observe.ConfigError, match="fleet"):
        stem_observe.celery.install(tasks.app, fleet="http://example.invalid")
    assert stem_observe.celery.installed_plugin() is None


def test_fleet_options_reach_the_forwarder() -> None:
    stem_observe.celery.install(tasks.app, fleet="redis://127.0.0.1:1/0",
                                registry=CollectorRegistry(), heartbeat_interval_s=0,
                                fleet_options={"flush_interval_s": 7.5, "batch_max": 42})
    try:
        forwarder = stem_observe.celery.fleet_forwarder()
        assert forwarder is not None
        assert (forwarder.flush_interval_s, forwarder.batch_max) == (7.5, 42)
        with pytest.raises(stem_observe.ConfigError, match="fleet_options"):
            stem_observe.celery.install(tasks.app, fleet_options={"batch_max": 1})
    finally:
        stem_observe.celery.uninstall()
    assert stem_observe.celery.fleet_forwarder() is None


def test_a_pool_childs_forwarder_names_the_workers_node() -> None:
    stem_observe.celery.install(tasks.app, fleet="redis://127.0.0.1:1/0",
                                registry=CollectorRegistry(), heartbeat_interval_s=0)
    try:
        forwarder = stem_observe.celery.fleet_forwarder()
        plugin = stem_observe.celery.installed_plugin()
        assert forwarder is not None
        assert plugin is not None
        assert forwarder.worker == socket.gethostname()  # the node is not known yet
        plugin.hostname = "celery@node-1"  # learnt by the main process before forking
        plugin.on_worker_process_init()
        assert forwarder.worker == "celery@node-1"
    finally:
        stem_observe.celery.uninstall()


@pytest.mark.parametrize(("options", "problem"), [
    ({"flush_intreval_s": 1.0}, "flush_intreval_s"),
    ({"batch_max": 0}, "batch_max"),
])
def test_bad_fleet_options_are_refused_by_name(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(stem_observe.ConfigError, match=problem):
        stem_observe.celery.install(tasks.app, fleet="redis://127.0.0.1:1/0",
                                    registry=CollectorRegistry(), heartbeat_interval_s=0,
                                    fleet_options=options)
    assert stem_observe.celery.installed_plugin() is None
    assert stem_observe.installed() is None  # the bridge it installed is gone again


@pytest.mark.parametrize(("options", "counted"), [({}, False), ({"metrics": True}, True)])
def test_fleet_workers_leave_task_metrics_to_serve(options: dict[str, Any],
                                                   counted: bool) -> None:
    registry = CollectorRegistry()
    bridge = stem_observe.celery.install(tasks.app, fleet="redis://127.0.0.1:1/0",
                                         registry=registry, heartbeat_interval_s=0, **options)
    try:
        assert (bridge.metrics is not None) is counted
        assert bridge.tracing is not None
        names = {metric.name for metric in registry.collect()}
        assert ("stem_tasks_started" in names) is counted
    finally:
        stem_observe.celery.uninstall()


def test_queue_wait_on_the_span_excludes_the_eta(plugged: Plugged) -> None:
    with stem_observe.track_task("t", task_id="w-1", enqueued_at=100.0, eta=160.0) as _:
        pass
    (span,) = [s for s in plugged.spans.get_finished_spans()
               if s.attributes and s.attributes.get("stem.task.id") == "w-1"]
    assert span.attributes is not None
    wait = float(span.attributes["stem.task.queue_wait_s"])  # type: ignore[arg-type]
    assert wait > 0
    assert span.start_time is not None
    assert abs(span.start_time / 1e9 - 160.0 - wait) < 1e-3
