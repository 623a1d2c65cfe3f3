"""The task span: recorded by the bridge, exported through the SDK provider's processors."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, StatusCode
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes
from prometheus_client import CollectorRegistry

import stem_observe
from stem_observe.sinks._span import TaskSpan

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Recording(SpanProcessor):
    """Remembers what the provider hands its processors."""

    def __init__(self) -> None:
        self.started: list[Any] = []
        self.ended: list[ReadableSpan] = []

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        self.started.append(span)
        span.set_attribute("tenant", "acme")  # as baggage-copying processors do

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span)


class Tagging(Sampler):
    """Samples everything and adds an attribute and trace state, as samplers may."""

    def should_sample(  # noqa: PLR0917 - the Sampler interface
            self, parent_context: Context | None, trace_id: int, name: str,
                      kind: SpanKind | None = None, attributes: Attributes = None,
                      links: Sequence[Link] | None = None,
                      trace_state: TraceState | None = None) -> SamplingResult:
        added = dict(attributes or {})
        added["sampler.rule"] = "tagging"
        return SamplingResult(Decision.RECORD_AND_SAMPLE, added,
                              TraceState([("vendor", "on")]))

    def get_description(self) -> str:
        return "Tagging"


def _install(**provider_options: Any) -> tuple[TracerProvider, InMemorySpanExporter, Recording]:
    provider = TracerProvider(**provider_options)
    exporter = InMemorySpanExporter()
    recording = Recording()
    provider.add_span_processor(recording)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stem_observe.install(registry=CollectorRegistry(), tracer_provider=provider)
    return provider, exporter, recording


@pytest.fixture
def sdk() -> Iterator[tuple[TracerProvider, InMemorySpanExporter, Recording]]:
    installed = _install()
    try:
        yield installed
    finally:
        stem_observe.uninstall()
        installed[0].shutdown()


def test_user_code_sees_a_recording_span_and_its_children_nest(
        sdk: tuple[TracerProvider, InMemorySpanExporter, Recording]) -> None:
    provider, exporter, _ = sdk
    with stem_observe.track_task("orders.ship", task_id="t-1", queue="orders",
                                 headers={"traceparent": TRACEPARENT}):
        current = trace.get_current_span()
        assert isinstance(current, TaskSpan)
        assert current.is_recording()
        current.set_attribute("order.id", 7)
        current.set_attributes(
            {"order.lines": [1, 2], "order.bad": object()})  # type: ignore[dict-item]
        current.add_event("picked", {"items": 3})
        with provider.get_tracer("app").start_as_current_span("charge") as child:
            child.set_attribute("amount", 10)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    task, child_span = spans["stem.consume"], spans["charge"]
    attributes = dict(task.attributes or {})
    assert attributes["order.id"] == 7
    assert attributes["order.lines"] == (1, 2)  # sequences kept as the SDK keeps them
    assert "order.bad" not in attributes  # invalid values dropped, not raised
    assert attributes["stem.task.outcome"] == "succeeded"
    assert [e.name for e in task.events] == ["picked"]
    assert child_span.parent is not None
    assert child_span.parent.span_id == task.context.span_id
    assert child_span.context.trace_id == task.context.trace_id == int(TRACEPARENT[3:35], 16)
    assert task.parent is not None
    assert task.parent.span_id == int(TRACEPARENT[36:52], 16)
    assert task.kind is SpanKind.CONSUMER
    assert task.instrumentation_scope is not None
    assert task.instrumentation_scope.name == "stem_observe"
    assert task.resource is provider.resource
    assert task.start_time is not None
    assert task.end_time is not None
    assert task.end_time >= task.start_time


def test_every_processor_sees_the_start_and_the_end(
        sdk: tuple[TracerProvider, InMemorySpanExporter, Recording]) -> None:
    _, exporter, recording = sdk
    with stem_observe.track_task("a", task_id="t-2"):
        pass
    (started,) = recording.started
    (ended,) = recording.ended
    assert started.context.span_id == ended.context.span_id
    assert dict(ended.attributes or {})["tenant"] == "acme"  # set at on_start, exported
    assert len(exporter.get_finished_spans()) == 1


def test_failure_recorded_once_and_ending_twice_exports_once(
        sdk: tuple[TracerProvider, InMemorySpanExporter, Recording]) -> None:
    _, exporter, _ = sdk
    def fail() -> trace.Span:
        with stem_observe.track_task("a", task_id="t-3"):
            raise ValueError(trace.get_current_span())

    with pytest.raises(ValueError, match="TaskSpan") as raised:
        fail()
    span = raised.value.args[0]
    span.end()
    span.set_attribute("late", True)  # ignored after the end
    (task,) = exporter.get_finished_spans()
    assert task.status.status_code is StatusCode.ERROR
    assert "late" not in dict(task.attributes or {})
    (exception,) = [e for e in task.events if e.name == "exception"]
    assert exception.attributes is not None
    assert exception.attributes["exception.type"] == "ValueError"


def test_user_recorded_exception_and_status_are_kept(
        sdk: tuple[TracerProvider, InMemorySpanExporter, Recording]) -> None:
    _, exporter, _ = sdk
    with stem_observe.track_task("a", task_id="t-4"):
        span = trace.get_current_span()
        span.record_exception(KeyError("k"), {"handled": True})
        span.set_status(StatusCode.OK)
        span.update_name("custom")
    (task,) = exporter.get_finished_spans()
    assert task.name == "custom"
    assert task.status.status_code is StatusCode.OK
    (exception,) = task.events
    assert exception.attributes is not None
    assert exception.attributes["exception.type"] == "KeyError"
    assert exception.attributes["handled"] is True


def test_the_providers_span_limits_apply_to_what_user_code_sets() -> None:
    provider, exporter, _ = _install(span_limits=SpanLimits(
        max_span_attributes=12, max_attribute_length=4, max_events=1))
    try:
        with stem_observe.track_task("a", task_id="t-5", worker_id="w"):
            span = trace.get_current_span()
            for n in range(4):
                span.set_attribute(f"user.{n}", "abcdefgh")
            span.add_event("one")
            span.add_event("two")
    finally:
        stem_observe.uninstall()
        provider.shutdown()
    (task,) = exporter.get_finished_spans()
    attributes = dict(task.attributes or {})
    assert len(attributes) == 12
    assert task.dropped_attributes > 0
    assert [v for k, v in attributes.items() if k.startswith("user.")] == ["abcd"]
    assert [e.name for e in task.events] == ["one"]


def test_the_providers_sampler_decides() -> None:
    provider, exporter, recording = _install(sampler=ALWAYS_OFF)
    try:
        with stem_observe.track_task("a", task_id="t-6"):
            current = trace.get_current_span()
            assert not current.is_recording()
            assert not current.get_span_context().trace_flags.sampled
    finally:
        stem_observe.uninstall()
        provider.shutdown()
    assert exporter.get_finished_spans() == ()
    assert recording.started == []


def test_a_ratio_sampler_follows_a_sampled_parent_and_drops_roots() -> None:
    provider, exporter, _ = _install(sampler=ParentBased(TraceIdRatioBased(0.0)))
    try:
        with stem_observe.track_task("a", task_id="root"):
            pass
        with stem_observe.track_task("a", task_id="child", headers={"traceparent": TRACEPARENT}):
            pass
    finally:
        stem_observe.uninstall()
        provider.shutdown()
    ids = [dict(s.attributes or {})["stem.task.id"] for s in exporter.get_finished_spans()]
    assert ids == ["child"]


def test_sampler_attributes_and_trace_state_reach_the_span() -> None:
    provider, exporter, _ = _install(sampler=Tagging())
    try:
        with stem_observe.track_task("a", task_id="t-7"):
            pass
    finally:
        stem_observe.uninstall()
        provider.shutdown()
    (task,) = exporter.get_finished_spans()
    assert dict(task.attributes or {})["sampler.rule"] == "tagging"
    assert dict(task.attributes or {})["stem.task.id"] == "t-7"
    assert task.context.trace_state.get("vendor") == "on"


def test_a_provider_that_is_not_the_sdks_gets_its_own_spans() -> None:
    class Counting(trace.NoOpTracerProvider):
        def __init__(self) -> None:
            self.started = 0

        def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
            outer = self

            class CountingTracer(trace.NoOpTracer):
                def start_span(self, *a: Any, **k: Any) -> trace.Span:
                    outer.started += 1
                    return super().start_span(*a, **k)

            return CountingTracer()

    provider = Counting()
    stem_observe.install(registry=CollectorRegistry(), tracer_provider=provider)
    try:
        with stem_observe.track_task("a", task_id="t-8"):
            assert not isinstance(trace.get_current_span(), TaskSpan)
    finally:
        stem_observe.uninstall()
    assert provider.started == 1


@pytest.mark.parametrize("by_position", [True, False])
def test_the_ended_span_is_the_same_whichever_way_it_is_built(
        sdk: tuple[TracerProvider, InMemorySpanExporter, Recording], by_position: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Positional arguments only for the ReadableSpan signature this module knows; keywords
    # for any other SDK. Both must give exporters the same span.
    import stem_observe.sinks._span as span_module

    assert span_module._READABLE_BY_POSITION  # the installed SDK's order is the known one
    monkeypatch.setattr(span_module, "_READABLE_BY_POSITION", by_position)
    provider, exporter, _ = sdk
    with stem_observe.track_task("orders.ship", task_id="t-9", queue="orders",
                                 headers={"traceparent": TRACEPARENT}):
        trace.get_current_span().add_event("picked")
    (span,) = exporter.get_finished_spans()
    assert span.name == "stem.consume"
    assert span.kind is SpanKind.CONSUMER
    assert span.parent is not None
    assert span.parent.span_id == int(TRACEPARENT[36:52], 16)
    assert span.resource is provider.resource
    assert (span.attributes or {})["stem.task.id"] == "t-9"
    assert [e.name for e in span.events] == ["picked"]
    assert span.links == ()
    assert span.status.status_code is StatusCode.UNSET
    assert span.start_time is not None
    assert span.end_time is not None
    assert span.start_time <= span.end_time
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "stem_observe"
