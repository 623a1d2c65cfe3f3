"""``stem-observe demo --stem``: the sidecar's pipeline against simulated Stem workers.

Simulated Stem workers (``sources.stem.simulator``) fill a Redis exactly as real ones
would: a producer enqueues tasks with ``traceparent`` headers, worker threads deliver,
start, run and finish them (flaky ones retry with Stem's backoff, payments fail into the
dead-letter list, a few are revoked) and heartbeat, and a simulated Beat dispatches two
schedules (one sometimes late, one sometimes failing). :class:`StemWorkload` is that
workload on its own, for tests. The same :class:`StemWatcher` that ``stem-observe serve``
runs turns that Redis back into signals, metrics and spans. Without ``--redis`` a private
``redis-server`` is started on a free port (keyspace notifications on) and removed after.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

import redis
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import REGISTRY, CollectorRegistry

from stem_observe import events as ev
from stem_observe import signals
from stem_observe.bridge import install, uninstall
from stem_observe.demo import DEFAULT_TASK_TYPES, SpanSummary, TaskType
from stem_observe.errors import StemObserveError
from stem_observe.server import HttpServer, Response, json_response
from stem_observe.sources.stem.beat_simulator import SimulatedBeat
from stem_observe.sources.stem.simulator import Delivery, StemSimulator
from stem_observe.sources.stem.watcher import StemWatcher, WatcherOptions

__all__ = ["DEFAULT_SCHEDULES", "ScheduleType", "StemWorkload", "private_redis",
           "run_stem_demo"]

_WATCHED = (ev.TaskPrerun, ev.TaskSucceeded, ev.TaskRetry, ev.TaskFailed, ev.TaskDeadLettered,
            ev.WorkerHeartbeat, ev.ScheduleEntryDispatched, ev.ScheduleEntryFailed)


@contextmanager
def private_redis() -> Iterator[str]:
    """A throwaway ``redis-server`` (no persistence) on a free port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise StemObserveError(
            "demo --stem needs Redis: install redis-server or pass --redis URL")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="stem-observe-demo-") as workdir:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir, "--notify-keyspace-events", "K$"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=port)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    if client.ping():
                        break
                except redis.ConnectionError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise StemObserveError("the private redis-server did not start") from None
                    time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            client.close()
            process.terminate()
            process.wait(timeout=10)


@dataclass(frozen=True, slots=True)
class ScheduleType:
    """A Beat schedule of the workload, due every ``every_s``: ``late_rate`` of its runs are
    dispatched ``late_s`` late (a stalled Beat) and ``fail_rate`` fail to publish with one
    of ``errors``."""

    entry_id: str
    task_name: str
    queue: str
    every_s: float
    late_rate: float = 0.0
    late_s: float = 0.0
    fail_rate: float = 0.0
    errors: tuple[str, ...] = ("RedisException",)


DEFAULT_SCHEDULES: tuple[ScheduleType, ...] = (
    ScheduleType("reports-hourly", "reports.generate", "reports", every_s=5, late_rate=0.3,
                 late_s=2.5),
    ScheduleType("payments-reconcile", "payments.charge", "payments", every_s=3,
                 fail_rate=0.25, errors=("SocketException", "RedisException")),
)


class StemWorkload:
    """Simulated Stem producers, workers and Beat writing one Redis, each thread through its
    own :class:`StemSimulator`: a producer enqueues ``rate`` tasks/s of ``task_types`` (by
    weight, with ``traceparent`` headers); ``workers`` workers deliver, start and finish them
    (a task fails with its type's rates, retrying with Stem's backoff until it is
    dead-lettered; ``revoke_rate`` of deliveries are revoked) and heartbeat every
    ``heartbeat_interval_s``; Beat dispatches ``schedules`` every ``beat_tick_s``.

    :meth:`start` it, :meth:`close` it. :meth:`set_task_type` changes a task type's rates
    while it runs (a dependency going down)."""

    def __init__(
        self, client: redis.Redis, task_types: Sequence[TaskType] = DEFAULT_TASK_TYPES, *,
        rate: float = 20.0, workers: int = 3, seed: int | None = None,
        schedules: Sequence[ScheduleType] = DEFAULT_SCHEDULES, revoke_rate: float = 0.0,
        heartbeat_interval_s: float = 2.0, beat_tick_s: float = 1.0,
    ) -> None:
        self.client = client
        self.task_types = tuple(task_types)
        self.rate = rate
        self.workers = workers
        self.seed = seed
        self.schedules = tuple(schedules)
        self.revoke_rate = revoke_rate
        self.heartbeat_interval_s = heartbeat_interval_s
        self.beat_tick_s = beat_tick_s
        self.stop = threading.Event()
        self.queues = sorted({t.queue for t in self.task_types} | {s.queue for s in schedules})
        self.kinds = {t.name: t for t in self.task_types}
        self.worker_ids = [f"stem-demo-worker-{index + 1}" for index in range(workers)]
        self._threads: list[threading.Thread] = []

    def set_task_type(self, kind: TaskType) -> None:
        """Replace the task type of ``kind.name`` (its rates, duration, weight)."""
        if kind.name not in self.kinds:
            raise KeyError(kind.name)
        self.kinds[kind.name] = kind
        self.task_types = tuple(kind if t.name == kind.name else t for t in self.task_types)

    def start(self) -> StemWorkload:
        self._threads = [threading.Thread(target=self._produce, name="stem-demo-producer",
                                          daemon=True)]
        self._threads += [threading.Thread(target=self._work, args=(index,), name=worker,
                                           daemon=True)
                          for index, worker in enumerate(self.worker_ids)]
        if self.schedules:
            self._threads.append(threading.Thread(target=self._beat, name="stem-demo-beat",
                                                  daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=timeout_s)

    def _rng(self, stream: int) -> random.Random:
        return random.Random(None if self.seed is None else self.seed * 1000 + stream)

    def _produce(self) -> None:
        rng = self._rng(0)
        simulator = StemSimulator(self.client, rng=rng)
        while not self.stop.wait(rng.expovariate(self.rate)):
            kinds = self.task_types
            kind = rng.choices(kinds, [t.weight for t in kinds])[0]
            traceparent = f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01"
            simulator.enqueue(kind.name, {"n": rng.randint(1, 100)}, queue=kind.queue,
                              max_retries=kind.max_retries, traceparent=traceparent)

    def _work(self, index: int) -> None:
        rng = self._rng(index + 1)
        simulator = StemSimulator(self.client, rng=rng)
        worker_id = self.worker_ids[index]
        mine = self.queues if index == 0 else self.queues[index % len(self.queues)::2]
        next_beat = 0.0
        while not self.stop.is_set():
            if time.monotonic() >= next_beat:
                simulator.heartbeat(worker_id, queues=dict.fromkeys(mine, 0), publish=True)
                next_beat = time.monotonic() + self.heartbeat_interval_s
            busy = False
            for queue in mine:
                for delivery in simulator.deliver(queue, worker_id, count=1):
                    busy = True
                    self._run(simulator, delivery, worker_id, rng)
            if not busy:
                self.stop.wait(0.05)

    def _run(self, simulator: StemSimulator, delivery: Delivery, worker_id: str,
             rng: random.Random) -> None:
        kind = self.kinds.get(delivery.envelope.name)
        simulator.start(delivery, worker_id)
        if rng.random() < self.revoke_rate:
            simulator.revoke(delivery, worker_id, requested_by="stem-demo")
            return
        mean = kind.mean_s if kind else 0.02
        self.stop.wait(rng.expovariate(1.0 / mean))
        roll = rng.random()
        if kind and roll < kind.permanent_rate + kind.transient_rate:
            simulator.fail(delivery, worker_id, rng.choice(kind.errors), "upstream failed")
        else:
            simulator.succeed(delivery, worker_id, {"ok": True})

    def _beat(self) -> None:
        """Beat: each tick dispatches the due entries; a late run waits ``late_s`` more."""
        rng = self._rng(self.workers + 1)
        beat = SimulatedBeat(StemSimulator(self.client, rng=rng))
        kinds = {s.entry_id: s for s in self.schedules}
        for entry in self.schedules:
            beat.add_schedule(entry.entry_id, entry.task_name, queue=entry.queue,
                              every_s=entry.every_s)
        hold: dict[str, float] = {}  # entry id -> when this due run is dispatched
        while not self.stop.wait(self.beat_tick_s):
            now = time.time()
            for entry_id, due_at in beat.due_schedules():
                kind = kinds.get(entry_id)
                if kind is None:
                    continue
                if entry_id not in hold:
                    late = kind.late_s if rng.random() < kind.late_rate else 0.0
                    hold[entry_id] = due_at + late
                if now < hold[entry_id]:
                    continue
                del hold[entry_id]
                error = rng.choice(kind.errors) if rng.random() < kind.fail_rate else None
                beat.dispatch_schedule(entry_id, error_type=error)


def run_stem_demo(
    out: TextIO, *, duration_s: float = 60.0, rate: float = 20.0, workers: int = 3,
    host: str = "127.0.0.1", port: int = 9464, redis_url: str | None = None,
    seed: int | None = None, registry: CollectorRegistry = REGISTRY,
    task_types: Sequence[TaskType] = DEFAULT_TASK_TYPES, report_every_s: float = 5.0,
) -> Counter[str]:
    """Run until ``duration_s`` passes (0: until interrupted); returns signal counts."""
    options = {"duration_s": duration_s, "rate": rate, "workers": workers, "host": host,
               "port": port, "seed": seed, "registry": registry, "task_types": task_types,
               "report_every_s": report_every_s}
    if redis_url is None:
        with private_redis() as url:
            return _run(out, url, notifications="enable", **options)  # type: ignore[arg-type]
    return _run(out, redis_url, notifications="auto", **options)  # type: ignore[arg-type]


def _run(out: TextIO, url: str, *, duration_s: float, rate: float, workers: int, host: str,
         port: int, seed: int | None, registry: CollectorRegistry,
         task_types: Sequence[TaskType], report_every_s: float,
         notifications: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def count(sender: object, *, event: ev.Event) -> None:
        if sender == "stem":
            with lock:
                counts[signals.signal_for(type(event)).name] += 1

    spans = SpanSummary()
    provider = TracerProvider(resource=Resource.create({"service.name": "stem-observe-demo"}))
    provider.add_span_processor(BatchSpanProcessor(spans, max_queue_size=32_768))
    client = redis.Redis.from_url(url)
    install(registry=registry, tracer_provider=provider, logs=False)
    watcher = StemWatcher(client, WatcherOptions(
        poll_interval_s=1.0, reconcile_interval_s=30.0, heartbeat_interval_s=2.0,
        notifications=notifications,  # type: ignore[arg-type]
    ), registry=registry)
    server = HttpServer(registry=registry, host=host, port=port)

    def readyz(headers: dict[str, str]) -> Response:
        ready = watcher.healthy()
        return json_response(200 if ready else 503, {"status": "ready" if ready else "starting"})

    server.route("/readyz", readyz)
    for kind in _WATCHED:
        signals.SIGNALS[kind].connect(count, weak=False)
    workload = StemWorkload(client, task_types, rate=rate, workers=workers, seed=seed,
                            revoke_rate=0.01)
    stop = workload.stop
    started = time.monotonic()
    try:
        try:
            server.start()
        except OSError:
            server = HttpServer(registry=registry, host=host, port=0).start()
            server.route("/readyz", readyz)
        watcher.start()
        workload.start()
        until = f"for {duration_s:g}s" if duration_s else "until Ctrl-C"
        print(f"stem-observe demo --stem: {workers} simulated Stem workers and Beat on {url} "
              f"(queues {', '.join(workload.queues)}), ~{rate:g} tasks/s, {until}\n"
              f"  metrics : {server.url}/metrics\n"
              f"  readyz  : {server.url}/readyz\n"
              f"  inspect : STEM_BROKER_URL={url} stem-observe observe queues", file=out,
              flush=True)
        next_report = started + report_every_s
        try:
            while not duration_s or time.monotonic() - started < duration_s:
                left = next_report - time.monotonic()
                if duration_s:
                    left = min(left, started + duration_s - time.monotonic())
                if stop.wait(max(0.0, left)):
                    break
                if time.monotonic() >= next_report:
                    next_report += report_every_s
                    print(_status(counts, lock, spans, time.monotonic() - started), file=out,
                          flush=True)
        except KeyboardInterrupt:
            print("interrupted", file=out, flush=True)
    finally:
        workload.close()
        watcher.close()
        provider.force_flush()
        print(_status(counts, lock, spans, time.monotonic() - started), file=out, flush=True)
        print(f"spans by name: {dict(spans.by_name)} (errors: {dict(spans.errors)})", file=out,
              flush=True)
        for kind in _WATCHED:
            signals.SIGNALS[kind].disconnect(count)
        server.stop()
        uninstall()
        provider.shutdown()
        client.close()
    return counts


def _status(counts: Counter[str], lock: threading.Lock, spans: SpanSummary,
            elapsed: float) -> str:
    with lock:
        c = dict(counts)
    return (f"[{elapsed:5.0f}s] seen in Redis: started {c.get('task-prerun', 0)}  "
            f"succeeded {c.get('task-succeeded', 0)}  retried {c.get('task-retry', 0)}  "
            f"failed {c.get('task-failed', 0)}  dead-lettered {c.get('task-dead-lettered', 0)}"
            f"  heartbeats {c.get('worker-heartbeat', 0)}  beat dispatches "
            f"{c.get('schedule-entry-dispatched', 0)} (failed "
            f"{c.get('schedule-entry-failed', 0)})  spans {spans.total()}")
