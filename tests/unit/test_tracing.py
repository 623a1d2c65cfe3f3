"""One span per task attempt, named and attributed as Stem names them."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

import stem_observe
from stem_observe import events as ev
from stem_observe.config import Settings
from stem_observe.sinks.tracing import TracingSink
from tests.conftest import Installed

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"


def only_span(installed: Installed) -> ReadableSpan:
    spans = installed.spans.get_finished_spans()
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def test_failing_task_records_exception_and_task_id(installed: Installed) -> None:
    with pytest.raises(KeyError), stem_observe.track_task(
        "payments.charge", task_id="t-42", queue="payments", attempt=2, max_retries=3,
        worker_id="w-1",
    ):
        raise KeyError("card")
    span = only_span(installed)
    assert span.name == "stem.consume"
    assert span.kind is SpanKind.CONSUMER
    assert span.status.status_code is StatusCode.ERROR
    attributes = dict(span.attributes or {})
    assert attributes["stem.task.id"] == "t-42"
    assert attributes["stem.task"] == "payments.charge"
    assert attributes["stem.queue"] == "payments"
    assert attributes["stem.task.attempt"] == 2
    assert attributes["stem.task.max_retries"] == 3
    assert attributes["stem.worker.id"] == "w-1"
    assert attributes["messaging.message.id"] == "t-42"
    assert attributes["messaging.destination.name"] == "payments"
    assert attributes["stem.task.outcome"] == "failed"
    (exception,) = [e for e in span.events if e.name == "exception"]
    assert exception.attributes is not None
    assert exception.attributes["exception.type"] == "KeyError"
    assert "card" in str(exception.attributes["exception.message"])
    assert "raise KeyError" in str(exception.attributes["exception.stacktrace"])


def test_traceparent_header_makes_the_span_a_child_of_that_trace(installed: Installed) -> None:
    with stem_observe.track_task("a", headers={"traceparent": TRACEPARENT}):
        pass
    span = only_span(installed)
    assert span.context is not None
    assert span.parent is not None
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert format(span.parent.span_id, "016x") == PARENT_SPAN_ID
    assert span.parent.is_remote


def test_in_process_task_span_is_current_while_it_runs(installed: Installed) -> None:
    with stem_observe.track_task("a", task_id="t-1"):
        current = trace.get_current_span()
        assert current.is_recording()
    assert not trace.get_current_span().get_span_context().is_valid
    span = only_span(installed)
    assert span.context is not None
    assert current.get_span_context().span_id == span.context.span_id


def test_retry_adds_an_event_with_reason_and_next_retry_time(installed: Installed) -> None:
    with stem_observe.track_task("emails.send", task_id="t-1") as run:
        run.retry("smtp timeout", eta=1_900_000_000.0, exc=TimeoutError("slow"))
    span = only_span(installed)
    assert span.status.status_code is StatusCode.UNSET
    (retry,) = [e for e in span.events if e.name == "retry"]
    assert retry.attributes is not None
    assert retry.attributes["stem.retry.reason"] == "smtp timeout"
    assert retry.attributes["stem.retry.next_at"] == "2030-03-17T17:46:40Z"
    assert retry.attributes["exception.type"] == "TimeoutError"
    assert dict(span.attributes or {})["stem.task.outcome"] == "retried"


def test_observed_events_use_their_own_times_and_start_a_fresh_trace() -> None:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sink = TracingSink(tracer_provider=provider)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("unrelated"):  # must not become the parent
        sink.on_prerun(ev.TaskPrerun(task_id="t", task_name="a", occurred_at=100.0))
        sink.on_succeeded(ev.TaskSucceeded(task_id="t", task_name="a", occurred_at=102.5))
    consume = next(s for s in exporter.get_finished_spans() if s.name == "stem.consume")
    assert consume.start_time == 100_000_000_000
    assert consume.end_time == 102_500_000_000
    assert consume.parent is None


def test_revoked_and_postrun_without_outcome_end_the_span(installed: Installed) -> None:
    stem_observe.emit(ev.TaskPrerun(task_id="r", task_name="a"))
    stem_observe.emit(ev.TaskRevoked(task_id="r", task_name="a", reason="terminated"))
    stem_observe.emit(ev.TaskPrerun(task_id="p", task_name="a"))
    stem_observe.emit(ev.TaskPostrun(task_id="p", task_name="a", state="succeeded"))
    finished = installed.spans.get_finished_spans()
    spans = {dict(s.attributes or {})["stem.task.id"]: s for s in finished}
    assert dict(spans["r"].attributes or {})["stem.revoke.reason"] == "terminated"
    assert dict(spans["p"].attributes or {})["stem.task.outcome"] == "succeeded"
    assert installed.bridge.tracing is not None
    assert installed.bridge.tracing.open_spans() == 0


def test_heartbeat_progress_and_dead_letter_are_span_events(installed: Installed) -> None:
    def task() -> None:
        with stem_observe.track_task("a") as run:
            run.heartbeat(0.5, "half way")
            run.dead_letter("max-retries-exhausted", "RuntimeError: no")
            raise RuntimeError("no")

    with pytest.raises(RuntimeError, match="no"):
        task()
    names = [e.name for e in only_span(installed).events]
    assert names == ["progress", "dead-lettered", "exception"]


def test_open_spans_are_bounded_and_evictions_counted() -> None:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sink = TracingSink(Settings(max_open_spans=3), tracer_provider=provider)
    for index in range(5):
        sink.on_prerun(ev.TaskPrerun(task_id=f"t{index}", task_name="a"))
    assert sink.open_spans() == 3
    assert sink.evicted == 2
    evicted = [dict(s.attributes or {})["stem.task.id"] for s in exporter.get_finished_spans()]
    assert evicted == ["t0", "t1"]


def test_unsampled_tasks_record_nothing_and_yield_no_trace_id() -> None:
    provider = TracerProvider(sampler=ALWAYS_OFF)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sink = TracingSink(tracer_provider=provider)
    assert sink.on_prerun(ev.TaskPrerun(task_id="t", task_name="a", in_process=True)) is None
    assert sink.on_failed(ev.TaskFailed(task_id="t", task_name="a")) is None
    sink.on_postrun(ev.TaskPostrun(task_id="t", task_name="a", in_process=True))
    assert exporter.get_finished_spans() == ()


def test_a_late_outcome_after_eviction_starts_no_second_span() -> None:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sink = TracingSink(Settings(max_open_spans=1), tracer_provider=provider)
    sink.on_prerun(ev.TaskPrerun(task_id="old", task_name="a"))
    sink.on_prerun(ev.TaskPrerun(task_id="new", task_name="a"))  # evicts "old"
    sink.on_succeeded(ev.TaskSucceeded(task_id="old", task_name="a"))
    sink.on_succeeded(ev.TaskSucceeded(task_id="new", task_name="a"))
    ids = [str(dict(s.attributes or {})["stem.task.id"]) for s in exporter.get_finished_spans()]
    assert sorted(ids) == ["new", "old"]
    assert (sink.evicted, sink.late_outcomes) == (1, 1)
