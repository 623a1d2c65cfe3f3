"""A tracer provider that exports over OTLP/HTTP, for when the application has none."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from stem_observe.config import Settings
from stem_observe.errors import ConfigError

__all__ = ["CountingExporter", "build_span_processor", "build_tracer_provider"]

#: Large enough that a busy worker does not drop spans while the export thread waits
#: for the GIL (2048, the SDK default, lost spans under load).
MAX_QUEUE_SIZE = 32_768
#: Bounds how long a flush or shutdown waits for an unreachable collector.
EXPORT_TIMEOUT_S = 5


def build_tracer_provider(settings: Settings) -> TracerProvider:
    """An SDK provider sampling ``trace_sample_ratio`` of root spans, exporting to
    ``otlp_endpoint`` (a full ``.../v1/traces`` URL or a collector base URL)."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)),
    )
    provider.add_span_processor(build_span_processor(settings))
    return provider


def build_span_processor(settings: Settings) -> BatchSpanProcessor:
    """A batch processor exporting to ``otlp_endpoint`` over OTLP/HTTP."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ConfigError(
            "otlp_endpoint",
            "exporting traces needs the otlp extra: pip install 'stem-observe[otlp]'",
        ) from exc
    endpoint = settings.otlp_endpoint or ""
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError("otlp_endpoint", f"expected an http(s) URL, got {endpoint!r}")
    if not endpoint.rstrip("/").endswith("/v1/traces"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    exporter = CountingExporter(OTLPSpanExporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT_S))
    return BatchSpanProcessor(exporter, max_queue_size=MAX_QUEUE_SIZE)


class CountingExporter(SpanExporter):
    """Delegates to ``exporter`` and counts the spans it failed to export.

    ``failed`` is read by the bridge's ``stem_observe_spans_dropped_total{reason="export_failed"}``.
    Called from the batch processor's thread only.
    """

    failed_total = 0  # across instances: one process usually has one

    def __init__(self, exporter: SpanExporter) -> None:
        self._exporter = exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._exporter.export(spans)
        except Exception:
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            CountingExporter.failed_total += len(spans)
        return result

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._exporter.force_flush(timeout_millis)
