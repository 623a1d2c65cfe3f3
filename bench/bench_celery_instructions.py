"""Instructions per task added by OpenTelemetry's Celery instrumentation and by the plugin.

Wall-clock and CPU time on a shared machine move by more than what either variant adds
to a real worker (a solo worker over Redis spends 1 to 3 ms per task; repeats differ by
hundreds of µs). Instruction counts do not move with the machine's load. Each variant of
``bench_celery.py`` runs under ``valgrind --tool=cachegrind`` twice, with a small and a
large number of tasks; the difference of the two totals divided by the difference of the
task counts is what one task costs, start-up and shutdown cancelled out. Every thread of
the process counts (the span exporter's, the fleet forwarder's).

``eager``
    ``task.apply()`` in a child process (same variants and provider as ``bench_celery``).
``worker``
    ``celery worker --pool solo`` under valgrind drains tasks published beforehand to a
    private ``redis-server``, storing each result there; the worker is stopped (warm
    shutdown) once the last result is in.

Run::

    .venv/bin/python bench/bench_celery_instructions.py [--mode eager|worker|both]
        [--small N] [--large M] [--fleet redis://...]

It needs ``valgrind``; a worker run takes a few minutes (valgrind slows Python about 50 times).

With ``--fleet``, the plugin's forwarder sends a batch every ``--fleet-flush-s`` seconds
(default 10: its 0.2 s scaled by valgrind's slowdown) or as soon as 500 events wait, so its
batches hold as many events as at full speed; at 0.2 s a batch under valgrind held a few
tasks, and each task paid a large share of a round trip it does not pay at full speed.
Every run checks that every task event reached the stream.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_celery import (  # noqa: E402
    FLEET_FLUSH_ENV,
    VARIANTS,
    publish,
    setup_variant,
    start_worker,
)
from bench.bench_lifecycle import make_provider  # noqa: E402

VALGRIND: Final = ("valgrind", "--tool=cachegrind", "--cache-sim=no",
                   "--cachegrind-out-file=/dev/null")
WARMUP: Final = 200
_REFS: Final = re.compile(r"I\s+refs:\s+([\d,]+)")


def _refs(text: str, where: str) -> int:
    match = _REFS.search(text)
    if match is None:
        raise RuntimeError(f"no instruction count in the valgrind output of {where}:\n"
                           f"{text[-2000:]}")
    return int(match.group(1).replace(",", ""))


def eager_child(variant: str, tasks: int, fleet: str | None) -> None:
    """Run in the valgrind child: ``tasks`` eager applies with ``variant`` installed."""
    os.environ.setdefault("STEM_OBSERVE_TEST_PLUGIN", "0")
    from tests.support.celery_app import app, noop

    provider, exporter = make_provider()
    remove = setup_variant(variant, app, provider, fleet)
    try:
        for _ in range(WARMUP):  # in both runs
            noop.apply()
        gc.collect()
        for _ in range(tasks):
            noop.apply()
        provider.force_flush()
    finally:
        remove()
        provider.shutdown()
    if exporter.exported not in (0, tasks + WARMUP):
        raise RuntimeError(f"{variant}: {exporter.exported} spans exported, not {tasks + WARMUP}")


EVENTS_PER_TASK: Final = 4  # received, prerun, succeeded, postrun


def clear_stream(fleet: str | None) -> None:
    """An empty fleet stream for the next run to fill."""
    if fleet is None:
        return
    import redis

    from stem_observe.sinks.fleet import DEFAULT_STREAM

    client = redis.Redis.from_url(fleet)
    try:
        client.delete(DEFAULT_STREAM)
    finally:
        client.close()


def check_forwarded(fleet: str | None, variant: str, tasks: int) -> None:
    """With fleet forwarding, every task event must be in the stream (which is then
    emptied for the next run): a figure measured while events were dropped would leave
    their cost out."""
    if fleet is None or variant != "plugin":
        return
    import redis

    from stem_observe import events as ev
    from stem_observe.sinks.fleet import DEFAULT_STREAM
    from stem_observe.sources._fleet_wire import decode

    client = redis.Redis.from_url(fleet)
    try:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(  # type: ignore[assignment]
            DEFAULT_STREAM)
        client.delete(DEFAULT_STREAM)
    finally:
        client.close()
    found = sum(isinstance(item, ev.TaskEvent)
                for _id, fields in entries for item in decode(fields))
    if found != EVENTS_PER_TASK * tasks:
        raise RuntimeError(f"{variant} x {tasks}: {found} task events reached the fleet "
                           f"stream, not {EVENTS_PER_TASK * tasks}")


def eager_refs(variant: str, tasks: int, fleet: str | None) -> int:
    cmd = [*VALGRIND, sys.executable, str(Path(__file__).resolve()),
           "--eager-child", variant, "--small", str(tasks)]
    if fleet:
        cmd += ["--fleet", fleet]
    clear_stream(fleet)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"eager {variant} x {tasks} failed:\n{done.stderr[-2000:]}")
    check_forwarded(fleet, variant, tasks + WARMUP)
    return _refs(done.stderr, f"eager {variant} x {tasks}")


def worker_refs(variant: str, tasks: int, redis_url: str, fleet: str | None,
                workdir: Path) -> int:
    producer, ids = publish(redis_url, "tests.now", tasks)
    clear_stream(fleet)
    log_path = workdir / f"worker-{variant}-{tasks}.log"
    with log_path.open("wb") as log:
        worker = start_worker(variant, redis_url, fleet, log, wrapper=VALGRIND)
        try:
            producer.AsyncResult(ids[-1]).get(timeout=1800)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=600)
    check_forwarded(fleet, variant, tasks)
    return _refs(log_path.read_text(errors="replace"), f"worker {variant} x {tasks}")


def per_task(small: int, large: int, refs: dict[int, int]) -> float:
    return (refs[large] - refs[small]) / (large - small)


def report(title: str, figures: dict[str, float]) -> list[str]:
    none = figures["none"]
    lines = [title, f"{'variant':<8} {'instructions/task':>18} {'added':>10}"]
    for variant in VARIANTS:
        lines.append(f"{variant:<8} {figures[variant]:>18,.0f} {figures[variant] - none:>+10,.0f}")
    otel, plugin = figures["otel"] - none, figures["plugin"] - none
    verdict = "MET" if plugin < otel else "NOT MET"
    lines.append(f"target: plugin adds less than otel ({plugin:,.0f} < {otel:,.0f}): {verdict}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mode", choices=("eager", "worker", "both"), default="both")
    parser.add_argument("--small", type=int, default=200, help="tasks in the small run")
    parser.add_argument("--large", type=int, default=1200, help="tasks in the large run")
    parser.add_argument("--fleet", default=None, help="Redis URL for the plugin's fleet mode")
    parser.add_argument("--fleet-flush-s", type=float, default=10.0,
                        help="the forwarder's flush interval under valgrind")
    parser.add_argument("--eager-child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.eager_child:
        eager_child(args.eager_child, args.small, args.fleet)
        return 0
    os.environ[FLEET_FLUSH_ENV] = str(args.fleet_flush_s)  # children and workers inherit it
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install valgrind)")
    if args.large <= args.small:
        parser.error("--large must be more than --small")
    fleet = (f"{args.fleet}, flushed every {args.fleet_flush_s:g} s or at 500 events"
             if args.fleet else "off")
    lines = [f"Python {sys.version.split()[0]}; plugin fleet forwarding: {fleet}"]
    sizes = (args.small, args.large)
    if args.mode in ("eager", "both"):
        figures = {v: per_task(*sizes, {n: eager_refs(v, n, args.fleet) for n in sizes})
                   for v in VARIANTS}
        lines += ["", *report(f"eager: task.apply(), {args.large} - {args.small} tasks",
                              figures)]
    if args.mode in ("worker", "both"):
        from tests.support.redis_server import RedisServer

        with tempfile.TemporaryDirectory() as tmp:
            redis = RedisServer(Path(tmp))
            redis.start()
            try:
                figures = {
                    v: per_task(*sizes, {n: worker_refs(v, n, redis.url, args.fleet, Path(tmp))
                                         for n in sizes})
                    for v in VARIANTS
                }
            finally:
                redis.stop()
        lines += ["", *report(f"worker (solo pool, Redis): {args.large} - {args.small} tasks",
                              figures)]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
