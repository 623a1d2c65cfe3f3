"""Per-task cost of one task lifecycle (received, prerun, succeeded, postrun).

Four variants, interleaved per repeat (the order rotates each repeat to spread drift):

``none``
    ``stem_observe.track_task(...)`` around a no-op body with nothing installed: the cost
    of the worker API and the signal bus when nobody listens (no event is even built).
``floor``
    The raw prometheus-client and opentelemetry-sdk calls the sinks make per task, written
    by hand with cached label children: three counters, the duration histogram with an
    exemplar, one span (parent extracted from a ``traceparent`` header, 9 attributes, made
    current between prerun and postrun), the trace id formatted for the exemplar.
``bridge``
    ``stem_observe.install(registry=..., tracer_provider=..., logs=True)`` then the same
    loop as ``none``.
``unsampled``
    ``bridge`` with an ``ALWAYS_OFF`` sampler: the cost when head sampling drops the trace.
``fleet`` (only with ``--fleet URL``)
    ``bridge`` plus a started :class:`~stem_observe.sinks.fleet.FleetForwarder` writing to the
    Redis at URL (its queue sized so that nothing is dropped; its thread sends while the loop
    runs, so the timing includes that thread's share of the GIL). After each run the
    forwarder is flushed (untimed) and every event must have reached the stream.

Spans go to an SDK ``TracerProvider`` with a ``BatchSpanProcessor`` (queue sized so nothing
is dropped) and an exporter that discards them. Run::

    .venv/bin/python bench/bench_lifecycle.py [--iterations N] [--repeats R] [--json]
        [--fleet redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Counter, Histogram

import stem_observe
from stem_observe import signals
from stem_observe.config import Settings

__all__ = [
    "VARIANTS",
    "FloorInstruments",
    "Result",
    "main",
    "make_provider",
    "run_benchmark",
    "run_floor",
    "run_tracked",
]

VARIANTS: Final = ("none", "floor", "bridge", "unsampled")
FLEET_VARIANT: Final = "fleet"
FLEET_STREAM: Final = "stem_observe:bench:fleet"
TARGET_RATIO: Final = 1.5  # bridge added cost (bridge - none) <= TARGET_RATIO * floor
TASK_NAME: Final = "bench.task"
QUEUE: Final = "bench"
SPAN_NAME: Final = "stem.consume"
TRACEPARENT: Final = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
HEADERS: Final[Mapping[str, str]] = {"traceparent": TRACEPARENT}
MAX_QUEUE_SIZE: Final = 65536
# The floor observes a fixed runtime: measuring the body is the worker's job (``track_task``
# does it in every variant, so ``bridge - none`` cancels it), not the sinks'. A no-op body
# lands in the first duration bucket, as this value does.
FLOOR_RUNTIME_S: Final = 2e-6

_PROPAGATOR: Final = TraceContextTextMapPropagator()


class DiscardingExporter(SpanExporter):
    """Drops every span; counts them so lost spans (a full queue) show up."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def make_provider(sampler: Sampler = ALWAYS_ON) -> tuple[TracerProvider, DiscardingExporter]:
    """An SDK provider (default sampler: always on) with a large-queue batch processor."""
    exporter = DiscardingExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=MAX_QUEUE_SIZE))
    return provider, exporter


# --------------------------------------------------------------------------- the loops


def run_tracked(task_ids: Sequence[str], headers: Mapping[str, str] = HEADERS) -> int:
    """``track_task`` around a no-op body per id; whatever is installed listens. Returns ns."""
    track = stem_observe.track_task
    start = time.perf_counter_ns()
    for task_id in task_ids:
        with track(TASK_NAME, task_id=task_id, queue=QUEUE, headers=headers):
            pass
    return time.perf_counter_ns() - start


@dataclass(slots=True)
class FloorInstruments:
    """Hand-built instruments like the ``stem`` profile's, label children bound once."""

    tracer: trace.Tracer
    received: Any
    started: Any
    succeeded: Any
    duration: Any
    messaging_system: str
    registry: CollectorRegistry

    @classmethod
    def build(cls, provider: TracerProvider) -> FloorInstruments:
        settings = Settings()
        registry = CollectorRegistry()
        labels = ("task", "queue")
        received = Counter("floor_tasks_received", "", labels, registry=registry)
        started = Counter("floor_tasks_started", "", labels, registry=registry)
        succeeded = Counter("floor_tasks_succeeded", "", labels, registry=registry)
        duration = Histogram(
            "floor_task_duration_seconds", "", labels, registry=registry,
            buckets=settings.duration_buckets,
        )
        return cls(
            tracer=provider.get_tracer("stem_observe.bench.floor"),
            received=received.labels(TASK_NAME, QUEUE),
            started=started.labels(TASK_NAME, QUEUE),
            succeeded=succeeded.labels(TASK_NAME, QUEUE),
            duration=duration.labels(TASK_NAME, QUEUE),
            messaging_system=settings.messaging_system,
            registry=registry,
        )


def run_floor(
    task_ids: Sequence[str], inst: FloorInstruments, headers: Mapping[str, str] = HEADERS
) -> int:
    """The raw metric and span calls of one lifecycle per id, nothing else. Returns ns."""
    tracer = inst.tracer
    received, started, succeeded, duration = (
        inst.received, inst.started, inst.succeeded, inst.duration
    )
    system = inst.messaging_system
    extract = _PROPAGATOR.extract
    attach, detach = otel_context.attach, otel_context.detach
    set_span_in_context = trace.set_span_in_context
    consumer = SpanKind.CONSUMER
    runtime = FLOOR_RUNTIME_S
    start = time.perf_counter_ns()
    for task_id in task_ids:
        # task-received: open the span under the producer's context; count it.
        parent = extract(headers, context=Context())
        span = tracer.start_span(
            SPAN_NAME,
            context=parent,
            kind=consumer,
            attributes={
                "stem.task": TASK_NAME,
                "stem.task.id": task_id,
                "stem.task.attempt": 0,
                "stem.task.max_retries": 0,
                "stem.queue": QUEUE,
                "messaging.system": system,
                "messaging.operation.type": "process",
                "messaging.destination.name": QUEUE,
                "messaging.message.id": task_id,
            },
        )
        span_context = span.get_span_context()
        trace_id = format(span_context.trace_id, "032x") if span_context.trace_flags.sampled else ""
        received.inc()
        # task-prerun: make the span current; count the start.
        token = attach(set_span_in_context(span))
        started.inc()
        # (the task body: nothing)
        # task-succeeded: outcome, end the span; the counter, and the histogram with an exemplar.
        span.set_attribute("stem.task.outcome", "succeeded")
        span.end()
        exemplar = {"task_id": task_id, "trace_id": trace_id}
        succeeded.inc()
        duration.observe(runtime, exemplar)
        # task-postrun: restore the context.
        detach(token)
    return time.perf_counter_ns() - start


# --------------------------------------------------------------------------- the driver


@dataclass(slots=True)
class Result:
    """Timings (µs per task, one per repeat) and sanity counts."""

    iterations: int
    repeats: int
    warmup: int
    variants: tuple[str, ...] = VARIANTS
    runs_us: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in VARIANTS})
    spans_expected: dict[str, int] = field(default_factory=lambda: {"floor": 0, "bridge": 0})
    spans_exported: dict[str, int] = field(default_factory=dict)
    bridge_count_errors: list[str] = field(default_factory=list)

    def median(self, variant: str) -> float:
        return statistics.median(self.runs_us[variant])

    def minimum(self, variant: str) -> float:
        return min(self.runs_us[variant])

    @property
    def added_cost_us(self) -> float:
        return self.median("bridge") - self.median("none")

    @property
    def ratio_bridge_floor(self) -> float:
        return self.median("bridge") / self.median("floor")

    @property
    def ratio_added_floor(self) -> float:
        return self.added_cost_us / self.median("floor")

    @property
    def target_met(self) -> bool:
        return self.added_cost_us <= TARGET_RATIO * self.median("floor")

    def as_dict(self) -> dict[str, Any]:
        return {
            "iterations": self.iterations,
            "repeats": self.repeats,
            "warmup": self.warmup,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "opentelemetry_sdk": _version("opentelemetry-sdk"),
            "prometheus_client": _version("prometheus-client"),
            "variants": {
                v: {
                    "median_us": round(self.median(v), 3),
                    "min_us": round(self.minimum(v), 3),
                    "runs_us": [round(x, 3) for x in self.runs_us[v]],
                }
                for v in self.variants
            },
            "bridge_added_cost_us": round(self.added_cost_us, 3),
            "ratio_bridge_over_floor": round(self.ratio_bridge_floor, 3),
            "ratio_added_over_floor": round(self.ratio_added_floor, 3),
            "target": f"bridge - none <= {TARGET_RATIO} x floor",
            "target_met": self.target_met,
            "spans_expected": self.spans_expected,
            "spans_exported": self.spans_exported,
            "bridge_count_errors": self.bridge_count_errors,
        }


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def _assert_nobody_listens() -> None:
    if stem_observe.installed() is not None or any(
        sig.receivers for sig in signals.SIGNALS.values()
    ):
        raise RuntimeError("the 'none' variant needs a bus with no receivers connected")


def _succeeded_count(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value(
        "stem_tasks_succeeded_total", {"task": TASK_NAME, "queue": QUEUE}
    )


def run_benchmark(iterations: int = 20_000, repeats: int = 5, warmup: int = 2_000,
                  fleet_url: str | None = None) -> Result:
    """Time every variant ``repeats`` times, interleaved; see the module docstring."""
    if iterations < 1 or repeats < 1 or warmup < 0:
        raise ValueError("iterations and repeats must be >= 1, warmup >= 0")
    stem_observe.uninstall()
    _assert_nobody_listens()
    variants = VARIANTS + ((FLEET_VARIANT,) if fleet_url else ())
    result = Result(iterations=iterations, repeats=repeats, warmup=warmup, variants=variants,
                    runs_us={v: [] for v in variants})
    task_ids = [str(uuid.uuid4()) for _ in range(iterations)]
    warm_ids = [str(uuid.uuid4()) for _ in range(warmup)]

    floor_provider, floor_exporter = make_provider()
    bridge_provider, bridge_exporter = make_provider()
    floor = FloorInstruments.build(floor_provider)

    def none() -> int:
        _assert_nobody_listens()
        run_tracked(warm_ids)
        gc.collect()
        return run_tracked(task_ids)

    def floor_variant() -> int:
        run_floor(warm_ids, floor)
        floor_provider.force_flush()
        gc.collect()
        elapsed = run_floor(task_ids, floor)
        result.spans_expected["floor"] += warmup + iterations
        floor_provider.force_flush()
        return elapsed

    def bridge(provider: TracerProvider = bridge_provider, sampled: bool = True,
               forward_to: str | None = None) -> int:
        registry = CollectorRegistry()
        stem_observe.install(registry=registry, tracer_provider=provider, logs=True)
        forwarder = None
        if forward_to is not None:
            from stem_observe.sinks.fleet import FleetForwarder

            forwarder = FleetForwarder(forward_to, stream=FLEET_STREAM, registry=None,
                                       queue_max=4 * (iterations + warmup) + 1).start()
        try:
            run_tracked(warm_ids)
            provider.force_flush()
            gc.collect()
            elapsed = run_tracked(task_ids)
            if sampled:
                result.spans_expected["bridge"] += warmup + iterations
            provider.force_flush()
            count = _succeeded_count(registry)
            if count != warmup + iterations:
                result.bridge_count_errors.append(
                    f"stem_tasks_succeeded_total={count}, expected {warmup + iterations}"
                )
            if forwarder is not None:
                forwarder.flush(60)
                if forwarder.dropped or forwarder.forwarded != 4 * (warmup + iterations):
                    result.bridge_count_errors.append(
                        f"fleet: {forwarder.forwarded} forwarded, {forwarder.dropped} dropped, "
                        f"expected {4 * (warmup + iterations)} forwarded")
        finally:
            if forwarder is not None:
                forwarder.close()
            stem_observe.uninstall()
        return elapsed

    unsampled_provider, unsampled_exporter = make_provider(ALWAYS_OFF)

    def unsampled() -> int:
        return bridge(unsampled_provider, sampled=False)

    def fleet() -> int:
        return bridge(forward_to=fleet_url)

    runners: dict[str, Callable[[], int]] = {
        "none": none, "floor": floor_variant, "bridge": bridge, "unsampled": unsampled,
        FLEET_VARIANT: fleet,
    }
    if fleet_url:
        import redis

        with redis.Redis.from_url(fleet_url) as client:
            client.delete(FLEET_STREAM)
    try:
        for rep in range(repeats):
            order = variants[rep % len(variants):] + variants[: rep % len(variants)]
            for variant in order:
                elapsed_ns = runners[variant]()
                result.runs_us[variant].append(elapsed_ns / iterations / 1000.0)
    finally:
        stem_observe.uninstall()
        floor_provider.shutdown()
        bridge_provider.shutdown()
        unsampled_provider.shutdown()
    result.spans_exported = {"floor": floor_exporter.exported, "bridge": bridge_exporter.exported}
    if unsampled_exporter.exported:
        result.bridge_count_errors.append(
            f"unsampled: {unsampled_exporter.exported} spans exported, expected none"
        )
    return result


def format_report(result: Result) -> str:
    floor_us = result.median("floor")
    lines = [
        f"stem_observe task lifecycle: {result.iterations} tasks x {result.repeats} repeats "
        f"(warm-up {result.warmup}), Python {platform.python_version()}, "
        f"opentelemetry-sdk {_version('opentelemetry-sdk')}, "
        f"prometheus-client {_version('prometheus-client')}",
        "",
        f"{'variant':<8} {'median µs/task':>15} {'min µs/task':>12}",
    ]
    for v in result.variants:
        lines.append(f"{v:<8} {result.median(v):>15.2f} {result.minimum(v):>12.2f}")
    lines += [
        "",
        f"bridge added cost = bridge - none   {result.added_cost_us:8.2f} µs/task",
        f"bridge / floor                      {result.ratio_bridge_floor:8.2f} x",
        f"(bridge - none) / floor             {result.ratio_added_floor:8.2f} x",
        f"unsampled (head sampling said no)   {result.median('unsampled'):8.2f} µs/task",
        *([f"fleet forwarding adds (fleet - bridge) "
           f"{result.median(FLEET_VARIANT) - result.median('bridge'):5.2f} µs/task"]
          if FLEET_VARIANT in result.variants else []),
        f"target: bridge added cost <= {TARGET_RATIO} x floor "
        f"({TARGET_RATIO * floor_us:.2f} µs): {'MET' if result.target_met else 'NOT MET'}",
    ]
    for v in ("floor", "bridge"):
        expected, exported = result.spans_expected[v], result.spans_exported.get(v, 0)
        if exported != expected:
            lines.append(f"WARNING: {v}: {exported} spans exported of {expected} (dropped?)")
    lines.extend(f"WARNING: bridge metrics: {e}" for e in result.bridge_count_errors)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=20_000, help="tasks per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant")
    parser.add_argument("--warmup", type=int, default=2_000, help="untimed tasks before each run")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--fleet", metavar="URL", default=None,
                        help="also time the bridge with fleet forwarding to this Redis "
                             f"(stream {FLEET_STREAM}, deleted first)")
    args = parser.parse_args(argv)
    result = run_benchmark(args.iterations, args.repeats, args.warmup, args.fleet)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
