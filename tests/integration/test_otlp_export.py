"""With ``otlp_endpoint`` set, the bridge builds a tracer provider that exports over OTLP/HTTP."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry

import stem_observe
from tests.support.recording_server import RecordingServer
from tests.support.wait import wait_for

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_spans_reach_an_otlp_http_receiver() -> None:
    with RecordingServer() as receiver:
        bridge = stem_observe.install(
            registry=CollectorRegistry(), otlp_endpoint=receiver.url,
            service_name="billing-worker",
        )
        try:
            with stem_observe.track_task("billing.invoice", task_id="inv-1",
                                         headers={"traceparent": TRACEPARENT}):
                pass
            assert bridge.flush()
        finally:
            stem_observe.uninstall()
        (request,) = wait_for(receiver.received, message="an OTLP export")
    assert request.path == "/v1/traces"
    assert request.headers["content-type"] == "application/x-protobuf"
    export = ExportTraceServiceRequest()
    export.ParseFromString(request.body)
    (resource_spans,) = export.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "billing-worker"
    (span,) = [s for scope in resource_spans.scope_spans for s in scope.spans]
    assert span.name == "stem.consume"
    assert span.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    attributes = {a.key: a.value.string_value for a in span.attributes}
    assert attributes["stem.task.id"] == "inv-1"


def test_an_unreachable_collector_never_reaches_the_task() -> None:
    with RecordingServer() as receiver:
        url = receiver.url  # closed when the block ends: nothing listens there afterwards
    registry = CollectorRegistry()
    stem_observe.install(registry=registry, otlp_endpoint=url)
    try:
        with stem_observe.track_task("a"):
            pass
        labels = {"task": "a", "queue": "default"}
        assert registry.get_sample_value("stem_tasks_succeeded_total", labels) == 1
    finally:
        stem_observe.uninstall()  # shutdown tries to flush into the void, bounded, and returns
