"""Per-task overhead of observing Celery: nothing, the OpenTelemetry instrumentation, this plugin.

Variants (no-op tasks from ``tests/support/celery_app.py``: ``tests.noop`` eager,
``tests.now`` in a worker):

``none``
    Nothing installed.
``otel``
    ``CeleryInstrumentor().instrument(tracer_provider=provider)``: one span per task (and,
    on the producer, one per publish), plus its duration histogram through the global
    MeterProvider, which is OpenTelemetry's no-op one here.
``plugin``
    ``stem_observe.celery.install(app, tracer_provider=provider, registry=CollectorRegistry())``:
    one span per task and the ``stem`` metrics (received, started, succeeded counters,
    duration and queue-wait histograms with exemplars, worker gauges), log correlation;
    with ``--fleet URL`` every event is also forwarded to that Redis stream.

``provider`` is an SDK ``TracerProvider`` (always on) with a ``BatchSpanProcessor`` whose
queue holds 65,536 spans and whose exporter counts and discards them, the same for ``otel``
and ``plugin``.

Two modes:

``eager``
    ``task.apply()`` N times in this process, the variants interleaved per repeat.
``worker``
    A real worker (``celery worker --pool solo``) over a private ``redis-server``: N tasks
    are published first (a plain producer, nothing installed), then the worker starts
    and drains them; each task returns ``time.time()`` and ``time.process_time()`` at its
    start, and the difference between the first task's and the last task's, divided by
    N - 1, is the per-task cost. Worker start-up and the producer are not in the figure;
    each task stores its result in Redis in every variant.

Both modes report wall-clock time and CPU time (``process_time``: every thread of the
process, so the span exporter's and the fleet forwarder's threads count). On a shared
machine wall-clock time varies with what else runs; CPU time varies much less, and it is
what a worker fleet pays for.

Run::

    .venv/bin/python bench/bench_celery.py [--mode eager|worker|both] [--iterations N]
        [--worker-tasks M] [--repeats R] [--fleet redis://...]
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from bench.bench_lifecycle import make_provider  # noqa: E402  (the same always-on provider)

VARIANTS: Final = ("none", "otel", "plugin")
Runs = dict[str, list[float]]
VARIANT_ENV: Final = "BENCH_CELERY_VARIANT"
FLEET_ENV: Final = "BENCH_CELERY_FLEET"
#: The forwarder's ``flush_interval_s`` (default: its own, 0.2 s); the instruction count
#: benchmark scales it by valgrind's slowdown, so batches hold what they hold at full speed.
FLEET_FLUSH_ENV: Final = "BENCH_CELERY_FLEET_FLUSH_S"


def setup_variant(variant: str, app: Any, provider: TracerProvider,
                  fleet: str | None) -> Callable[[], None]:
    """Install ``variant``; returns the function that removes it."""
    if variant == "none":
        return lambda: None
    if variant == "otel":
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
        instrumentor.instrument(tracer_provider=provider)
        return instrumentor.uninstrument  # type: ignore[no-any-return]
    if variant == "plugin":
        import stem_observe.celery

        flush_s = os.environ.get(FLEET_FLUSH_ENV)
        stem_observe.celery.install(
            app, tracer_provider=provider, fleet=fleet, registry=CollectorRegistry(),
            heartbeat_interval_s=0,
            fleet_options={"flush_interval_s": float(flush_s)} if flush_s else None)
        return stem_observe.celery.uninstall
    raise ValueError(f"unknown variant {variant!r}")


def worker_setup(app: Any) -> None:
    """Called by ``tests/support/celery_app.py`` in the benchmark's worker process."""
    provider, _ = make_provider()
    setup_variant(os.environ[VARIANT_ENV], app, provider, os.environ.get(FLEET_ENV) or None)


# --------------------------------------------------------------------------- eager


def run_eager(iterations: int, repeats: int, warmup: int,
              fleet: str | None) -> tuple[Runs, Runs, dict[str, int]]:
    """µs per task by variant: wall-clock and CPU (every thread of this process)."""
    os.environ.setdefault("STEM_OBSERVE_TEST_PLUGIN", "0")
    from tests.support.celery_app import app, noop

    wall: Runs = {v: [] for v in VARIANTS}
    cpu: Runs = {v: [] for v in VARIANTS}
    spans: dict[str, int] = {}
    for rep in range(repeats):
        order = VARIANTS[rep % 3:] + VARIANTS[:rep % 3]
        for variant in order:
            provider, exporter = make_provider()
            remove = setup_variant(variant, app, provider, fleet)
            try:
                apply = noop.apply
                for _ in range(warmup):
                    apply()
                provider.force_flush()
                gc.collect()
                cpu_start = time.process_time_ns()
                start = time.perf_counter_ns()
                for _ in range(iterations):
                    apply()
                elapsed = time.perf_counter_ns() - start
                provider.force_flush()  # the exporter thread's share counts as CPU
                cpu_elapsed = time.process_time_ns() - cpu_start
            finally:
                remove()
                provider.shutdown()
            wall[variant].append(elapsed / iterations / 1000.0)
            cpu[variant].append(cpu_elapsed / iterations / 1000.0)
            spans[variant] = spans.get(variant, 0) + exporter.exported
    return wall, cpu, spans


# --------------------------------------------------------------------------- worker


def publish(redis_url: str, task_name: str, tasks: int) -> tuple[Any, list[str]]:
    """An emptied broker with ``tasks`` messages of ``task_name``; the producer and the ids."""
    from celery import Celery

    producer = Celery("bench-producer", broker=redis_url, backend=redis_url)
    producer.conf.update(task_default_queue="tests", broker_connection_retry_on_startup=True)
    with producer.connection_for_write() as conn:
        conn.default_channel.client.flushdb()
    return producer, [producer.send_task(task_name).id for _ in range(tasks)]


def start_worker(variant: str, redis_url: str, fleet: str | None, log: IO[bytes], *,
                 wrapper: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """A solo ``celery worker`` with ``variant`` installed (run under ``wrapper``, if any)."""
    env = {
        **os.environ,
        "STEM_OBSERVE_TEST_BROKER_URL": redis_url,
        "STEM_OBSERVE_TEST_BACKEND_URL": redis_url,
        "STEM_OBSERVE_TEST_PLUGIN": "0",
        "STEM_OBSERVE_TEST_WORKER_SETUP": "bench.bench_celery:worker_setup",
        VARIANT_ENV: variant,
        FLEET_ENV: fleet or "",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [*wrapper, sys.executable, "-m", "celery", "-A", "tests.support.celery_app", "worker",
         "--pool", "solo", "-Q", "tests", "-n", f"bench-{variant}@%h", "--without-gossip",
         "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )


def run_worker_once(variant: str, tasks: int, redis_url: str, fleet: str | None,
                    workdir: Path) -> tuple[float, float]:
    """(wall, CPU) µs per task between the first task's start and the last one's."""
    producer, ids = publish(redis_url, "tests.clocks", tasks)
    with (workdir / f"worker-{variant}.log").open("wb") as log:
        worker = start_worker(variant, redis_url, fleet, log)
        try:
            first_at, first_cpu = producer.AsyncResult(ids[0]).get(timeout=120)
            last_at, last_cpu = producer.AsyncResult(ids[-1]).get(timeout=300)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
    per_task = 1e6 / (tasks - 1)
    return (last_at - first_at) * per_task, (last_cpu - first_cpu) * per_task


def run_worker(tasks: int, repeats: int, fleet: str | None) -> tuple[Runs, Runs]:
    from tests.support.redis_server import RedisServer

    wall: Runs = {v: [] for v in VARIANTS}
    cpu: Runs = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp))
        redis.start()
        try:
            for rep in range(repeats):
                order = VARIANTS[rep % 3:] + VARIANTS[:rep % 3]
                for variant in order:
                    w, c = run_worker_once(variant, tasks, redis.url, fleet, Path(tmp))
                    wall[variant].append(w)
                    cpu[variant].append(c)
        finally:
            redis.stop()
    return wall, cpu


def _report(title: str, runs: Runs) -> list[str]:
    none = statistics.median(runs["none"])
    lines = [title, f"{'variant':<8} {'median µs/task':>15} {'min':>9} {'added (median)':>15}"]
    for v in VARIANTS:
        med = statistics.median(runs[v])
        lines.append(f"{v:<8} {med:>15.1f} {min(runs[v]):>9.1f} {med - none:>15.1f}")
    otel = statistics.median(runs["otel"]) - none
    plugin = statistics.median(runs["plugin"]) - none
    verdict = "MET" if plugin < otel else "NOT MET"
    lines.append(f"target: plugin adds less than otel ({plugin:.1f} < {otel:.1f} µs): {verdict}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mode", choices=("eager", "worker", "both"), default="both")
    parser.add_argument("--iterations", type=int, default=5000, help="eager tasks per run")
    parser.add_argument("--warmup", type=int, default=500, help="untimed eager tasks per run")
    parser.add_argument("--worker-tasks", type=int, default=2000, help="tasks per worker run")
    parser.add_argument("--repeats", type=int, default=5, help="eager repeats")
    parser.add_argument("--worker-repeats", type=int, default=3)
    parser.add_argument("--fleet", default=None, help="Redis URL for the plugin's fleet mode")
    args = parser.parse_args(argv)
    if args.fleet is not None:
        import importlib.util

        if importlib.util.find_spec("stem_observe.sinks.fleet") is None:
            parser.error("--fleet needs stem_observe.sinks.fleet")
    lines = [f"Python {sys.version.split()[0]}; plugin fleet forwarding: {args.fleet or 'off'}"]
    if args.mode in ("eager", "both"):
        wall, cpu, spans = run_eager(args.iterations, args.repeats, args.warmup, args.fleet)
        title = f"eager: task.apply() x {args.iterations}, {args.repeats} repeats"
        lines += ["", *_report(f"{title}; wall clock", wall),
                  "", *_report(f"{title}; CPU time (all threads)", cpu)]
        expected = (args.iterations + args.warmup) * args.repeats
        lines.append(f"spans exported: otel {spans.get('otel', 0)}, plugin "
                     f"{spans.get('plugin', 0)} (expected {expected} each)")
    if args.mode in ("worker", "both"):
        wall, cpu = run_worker(args.worker_tasks, args.worker_repeats, args.fleet)
        title = (f"worker (solo pool, Redis): {args.worker_tasks} tasks, "
                 f"{args.worker_repeats} repeats")
        lines += ["", *_report(f"{title}; wall clock", wall),
                  "", *_report(f"{title}; worker CPU time (all threads)", cpu)]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
