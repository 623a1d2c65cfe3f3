"""``stem-observe demo``: a synthetic task workload through the whole pipeline.

An in-memory broker feeds several workers (threads, each a :class:`WorkerSession`) with
tasks of several types on several queues. Some tasks are flaky and retry with backoff,
some fail for good into a dead-letter queue; producers open ``stem.enqueue`` spans and
pass ``traceparent`` headers, so worker spans join their traces. Metrics are served over
HTTP; spans go to an in-process summary (and to OTLP when ``STEM_OBSERVE_OTLP_ENDPOINT``
is set). No external service is needed.
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import REGISTRY, CollectorRegistry

from stem_observe import events as ev
from stem_observe import signals
from stem_observe.bridge import install, uninstall
from stem_observe.config import Settings
from stem_observe.server import HttpServer
from stem_observe.signals import emit
from stem_observe.sources.worker import WorkerSession

__all__ = ["DEFAULT_TASK_TYPES", "Demo", "SpanSummary", "TaskType"]


class TransientError(Exception):
    """A failure worth retrying (a timeout, a 503)."""


class PermanentError(Exception):
    """A failure no retry fixes (bad input)."""


@dataclass(frozen=True, slots=True)
class TaskType:
    name: str
    queue: str
    weight: float
    mean_s: float
    transient_rate: float = 0.0
    permanent_rate: float = 0.0
    max_retries: int = 3
    errors: tuple[str, ...] = ("TimeoutError",)


DEFAULT_TASK_TYPES: tuple[TaskType, ...] = (
    TaskType("emails.send", "emails", 5, 0.02, transient_rate=0.15, max_retries=3,
             errors=("SMTPTimeout", "ConnectionResetError")),
    TaskType("images.resize", "media", 3, 0.05, transient_rate=0.02),
    TaskType("reports.generate", "reports", 1, 0.25, transient_rate=0.05, max_retries=2),
    TaskType("payments.charge", "payments", 2, 0.03, transient_rate=0.25,
             permanent_rate=0.08, max_retries=2, errors=("CardDeclined", "GatewayTimeout")),
)


@dataclass(order=True)
class _Message:
    ready_at: float
    seq: int
    task_id: str = field(compare=False)
    kind: TaskType = field(compare=False)
    attempt: int = field(compare=False, default=0)
    headers: dict[str, str] = field(compare=False, default_factory=dict)
    enqueued_at: float = field(compare=False, default=0.0)


class _Broker:
    """Per-queue priority queues ordered by ready time; consumers wait on a condition."""

    def __init__(self) -> None:
        self._queues: dict[str, list[_Message]] = {}
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self.dead: dict[str, list[_Message]] = {}

    def put(self, message: _Message) -> None:
        message.seq = next(self._seq)
        with self._cond:
            heapq.heappush(self._queues.setdefault(message.kind.queue, []), message)
            self._cond.notify()

    def get(self, queues: Sequence[str], stop: threading.Event) -> _Message | None:
        with self._cond:
            while not stop.is_set():
                now = time.time()
                best: list[_Message] | None = None
                for name in queues:
                    heap = self._queues.get(name)
                    if heap and heap[0].ready_at <= now and (best is None or heap[0] < best[0]):
                        best = heap
                if best is not None:
                    return heapq.heappop(best)
                self._cond.wait(timeout=0.05)
        return None

    def snapshot(self, queue: str) -> tuple[int, int, float | None]:
        """Ready count, delayed count and the oldest ready message's age."""
        now = time.time()
        with self._cond:
            heap = self._queues.get(queue, [])
            ready = [m for m in heap if m.ready_at <= now]
            oldest = min((now - m.ready_at for m in ready), default=None)
            return len(ready), len(heap) - len(ready), oldest


class SpanSummary(SpanExporter):
    """A span exporter that keeps counts and a few failed tasks' trace ids, for printing."""

    def __init__(self) -> None:
        self.by_name: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.failed_samples: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            for span in spans:
                self.by_name[span.name] += 1
                if span.status.status_code is StatusCode.ERROR:
                    self.errors[span.name] += 1
                    task_id = str((span.attributes or {}).get("stem.task.id", "?"))
                    context = span.get_span_context()
                    if context is not None and len(self.failed_samples) < 5:
                        self.failed_samples.append((task_id, format(context.trace_id, "032x")))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def total(self) -> int:
        return sum(self.by_name.values())


class Demo:
    """The workload. ``run()`` blocks until ``duration_s`` passes (0: until interrupted)."""

    def __init__(
        self,
        *,
        duration_s: float = 60.0,
        rate: float = 20.0,
        workers: int = 3,
        host: str = "127.0.0.1",
        port: int = 9464,
        registry: CollectorRegistry = REGISTRY,
        task_types: Sequence[TaskType] = DEFAULT_TASK_TYPES,
        out: TextIO | None = None,
        seed: int | None = None,
        report_every_s: float = 5.0,
        alerts: bool = True,
    ) -> None:
        self.duration_s = duration_s
        self.rate = rate
        self.worker_count = workers
        self.host, self.port = host, port
        self.registry = registry
        self.task_types = tuple(task_types)
        self.out = out
        self.seed = seed
        self.report_every_s = report_every_s
        self.alerts = alerts
        # Past 40 % of a run of 45 s or more the flaky dependencies recover, so the alerts
        # that fired resolve before the end.
        self.recover_at = duration_s * 0.4 if duration_s >= 45 else None
        self.recovered = threading.Event()
        self.stop = threading.Event()
        self.broker = _Broker()
        self.spans = SpanSummary()
        self.counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self.server: HttpServer | None = None
        self.ready = threading.Event()

    # ----------------------------------------------------------------- output

    def _print(self, text: str) -> None:
        if self.out is not None:
            print(text, file=self.out, flush=True)

    def _count(self, sender: object, *, event: ev.Event) -> None:
        with self._counts_lock:
            self.counts[signals.signal_for(type(event)).name] += 1

    # ----------------------------------------------------------------- run

    def run(self) -> Counter[str]:
        settings = Settings.resolve()
        provider = TracerProvider(resource=Resource.create({"service.name": "stem-observe-demo"}))
        provider.add_span_processor(BatchSpanProcessor(self.spans, max_queue_size=32_768))
        if settings.otlp_endpoint:
            from stem_observe._otlp import build_span_processor

            provider.add_span_processor(build_span_processor(settings))
        tracer = provider.get_tracer("stem_observe.demo")
        install(registry=self.registry, tracer_provider=provider)
        alerting = self._start_alerting() if self.alerts else None
        watched = [signals.SIGNALS[t] for t in (
            ev.TaskPublished, ev.TaskSucceeded, ev.TaskRetry, ev.TaskFailed,
            ev.TaskDeadLettered, ev.WorkerHeartbeat)]
        for sig in watched:
            sig.connect(self._count, weak=False)
        self.server = self._start_server()
        self._print_banner()
        sessions = self._start_workers()
        threads = [
            threading.Thread(target=self._produce, args=(tracer,), name="demo-producer",
                             daemon=True),
            threading.Thread(target=self._snapshots, name="demo-queues", daemon=True),
        ] + [
            threading.Thread(target=self._work, args=(s, i), name=f"demo-{s.worker_id}",
                             daemon=True)
            for i, s in enumerate(sessions)
        ]
        for thread in threads:
            thread.start()
        self.ready.set()
        started = time.monotonic()
        try:
            self._report_loop(started)
        except KeyboardInterrupt:
            self._print("interrupted")
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=5.0)
            for session in sessions:
                session.stop()
            provider.force_flush()
            self._print_summary(time.monotonic() - started)
            for sig in watched:
                sig.disconnect(self._count)
            if alerting is not None:
                alerting.engine.evaluate()
                alerting.stop()
            self.server.stop()
            uninstall()
            provider.shutdown()
        return self.counts

    def _start_alerting(self) -> Any:
        """The rules engine on demo time scales, printing what Slack and PagerDuty would get."""
        from stem_observe.commands._alerting import Alerting
        from stem_observe.demo_rules import DEMO_RULES
        from stem_observe.notify.dispatch import Dispatcher
        from stem_observe.notify.recording import ConsoleReceiver
        from stem_observe.rules import parse_rules
        from stem_observe.rules.engine import Engine
        from stem_observe.rules.store import MemoryStore

        rules = parse_rules(DEMO_RULES, "demo rules")
        dispatcher = Dispatcher([ConsoleReceiver("console", stream=self.out,
                                                 formats=("slack",))], registry=self.registry)
        dispatcher.start()
        store = MemoryStore()
        engine = Engine(rules, dispatcher, registry=self.registry, tick_s=1.0, store=store)
        engine.install()
        engine.start()
        return Alerting(engine, dispatcher, store)

    def _start_server(self) -> HttpServer:
        server = HttpServer(registry=self.registry, host=self.host, port=self.port)
        try:
            return server.start()
        except OSError as exc:
            if self.port == Settings().http_port:  # the default is taken: use any free port
                self._print(f"port {self.port} is in use ({exc.strerror}); using a free port")
                return HttpServer(registry=self.registry, host=self.host, port=0).start()
            raise

    def _start_workers(self) -> list[WorkerSession]:
        queues = sorted({t.queue for t in self.task_types})
        sessions = []
        for index in range(self.worker_count):
            # The first worker serves every queue; others split them, as real fleets do.
            mine = queues if index == 0 else queues[index % len(queues)::2] or queues
            session = WorkerSession(f"demo-worker-{index + 1}", queues=mine, concurrency=1,
                                    heartbeat_interval_s=5.0)
            sessions.append(session.start())
        return sessions

    def _report_loop(self, started: float) -> None:
        next_report = started + self.report_every_s
        while True:
            now = time.monotonic()
            if self.duration_s and now - started >= self.duration_s:
                return
            timeout = next_report - now
            if self.recover_at is not None and not self.recovered.is_set():
                timeout = min(timeout, started + self.recover_at - now)
            if self.duration_s:
                timeout = min(timeout, started + self.duration_s - now)
            if self.stop.wait(max(0.0, timeout)):
                return
            elapsed = time.monotonic() - started
            if self.recover_at is not None and elapsed >= self.recover_at and (
                not self.recovered.is_set()
            ):
                self.recovered.set()
                self._print(f"[{elapsed:5.0f}s] the flaky dependencies recovered: "
                            "alerts resolve once their windows pass")
            if time.monotonic() >= next_report:
                next_report += self.report_every_s
                self._print(self._status_line(time.monotonic() - started))

    # ----------------------------------------------------------------- threads

    def _produce(self, tracer: trace.Tracer) -> None:
        propagator = TraceContextTextMapPropagator()
        weights = [t.weight for t in self.task_types]
        interval = 1.0 / self.rate if self.rate > 0 else 1.0
        rng = self._rng(0)
        while not self.stop.wait(rng.expovariate(1.0 / interval)):
            kind = rng.choices(self.task_types, weights)[0]
            task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            headers: dict[str, str] = {}
            with tracer.start_as_current_span(
                "stem.enqueue", kind=SpanKind.PRODUCER,
                attributes={"stem.task": kind.name, "stem.task.id": task_id,
                            "stem.queue": kind.queue},
            ):
                propagator.inject(headers)
            now = time.time()
            self.broker.put(_Message(now, 0, task_id, kind, 0, headers, now))
            emit(ev.TaskPublished(task_id=task_id, task_name=kind.name, queue=kind.queue,
                                  max_retries=kind.max_retries, headers=headers), "demo")

    def _rng(self, stream: int) -> random.Random:
        """One generator per thread, so ``--seed`` fixes each thread's choices."""
        return random.Random(None if self.seed is None else self.seed * 1000 + stream)

    def _work(self, session: WorkerSession, index: int) -> None:
        rng = self._rng(index + 1)
        while True:
            message = self.broker.get(session.queues, self.stop)
            if message is None:
                return
            self._execute(session, message, rng)

    def _execute(self, session: WorkerSession, message: _Message, rnd: random.Random) -> None:
        kind = message.kind
        run = session.track(
            kind.name, task_id=message.task_id, queue=kind.queue, attempt=message.attempt,
            max_retries=kind.max_retries, headers=message.headers,
            enqueued_at=message.enqueued_at, eta=message.ready_at,
        )
        try:
            with run:
                self.stop.wait(rnd.expovariate(1.0 / kind.mean_s))
                roll = 1.0 if self.recovered.is_set() else rnd.random()
                error: Exception | None = None
                if roll < kind.permanent_rate:
                    error = PermanentError(f"{rnd.choice(kind.errors)}: rejected")
                elif roll < kind.permanent_rate + kind.transient_rate:
                    error = TransientError(f"{rnd.choice(kind.errors)}: upstream timed out")
                if isinstance(error, TransientError) and message.attempt < kind.max_retries:
                    delay = min(30.0, 0.5 * 2 ** message.attempt) * (0.5 + rnd.random())
                    run.retry(str(error), countdown=delay, exc=error)
                    ready = time.time() + delay
                    self.broker.put(_Message(ready, 0, message.task_id, kind,
                                             message.attempt + 1, message.headers, ready))
                elif error is not None:
                    raise error
        except (TransientError, PermanentError) as exc:
            reason = (
                "max-retries-exhausted" if isinstance(exc, TransientError) else "permanent-error"
            )
            self.broker.dead.setdefault(kind.queue, []).append(message)
            run.dead_letter(reason, error=f"{type(exc).__name__}: {exc}")

    def _snapshots(self) -> None:
        queues = sorted({t.queue for t in self.task_types})
        while not self.stop.wait(1.0):
            for queue in queues:
                ready, delayed, oldest = self.broker.snapshot(queue)
                dead = self.broker.dead.get(queue, [])
                emit(ev.QueueSnapshot(
                    queue=queue, pending=ready, delayed=delayed, dead_letters=len(dead),
                    oldest_pending_age_s=oldest or 0.0,
                    oldest_dead_letter_age_s=(time.time() - dead[0].enqueued_at) if dead else 0.0,
                ), "demo")

    # ----------------------------------------------------------------- printing

    def _print_banner(self) -> None:
        assert self.server is not None
        url = self.server.url
        queues = sorted({t.queue for t in self.task_types})
        until = f"for {self.duration_s:g}s" if self.duration_s else "until Ctrl-C"
        self._print(
            f"stem-observe demo: {len(self.task_types)} task types on queues "
            f"{', '.join(queues)}, {self.worker_count} workers, ~{self.rate:g} tasks/s, {until}\n"
            f"  metrics : {url}/metrics\n"
            f"  exemplars (task and trace IDs): curl -H 'Accept: application/openmetrics-text' "
            f"{url}/metrics | grep '# {{'\n"
            f"  health  : {url}/healthz"
        )

    def _status_line(self, elapsed: float) -> str:
        with self._counts_lock:
            c = dict(self.counts)
        return (
            f"[{elapsed:5.0f}s] published {c.get('after-task-publish', 0)}  "
            f"succeeded {c.get('task-succeeded', 0)}  retried {c.get('task-retry', 0)}  "
            f"failed {c.get('task-failed', 0)}  dead-lettered {c.get('task-dead-lettered', 0)}  "
            f"spans exported {self.spans.total()}"
        )

    def _print_summary(self, elapsed: float) -> None:
        self._print(self._status_line(elapsed))
        lines = [f"spans by name: {dict(self.spans.by_name)} (errors: {dict(self.spans.errors)})"]
        for task_id, trace_id in self.spans.failed_samples:
            lines.append(f"  failed task {task_id} -> trace {trace_id}")
        self._print("\n".join(lines))


def run_demo(out: TextIO, **options: Any) -> Counter[str]:
    """Entry point for the CLI."""
    return Demo(out=out, **options).run()

