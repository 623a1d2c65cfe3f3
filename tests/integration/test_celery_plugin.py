"""A real Celery worker (prefork, concurrency 2, children recycled every 2 tasks) on a real
Redis, with the plugin installed by its bootstep, exporting spans over OTLP/HTTP to a local
receiver. The worker's batch processor is told to wait a minute between exports, so every
span that arrives was flushed by a recycled child or by the warm shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from celery import Celery
from celery.result import AsyncResult
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import stem_observe.celery
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_for

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
COUNTDOWN_S = 1.5
ADDS = 6


@dataclass
class Run:
    spans: list[ReceivedSpan]
    ids: dict[str, str]
    trace_id: str
    producer_span_id: str
    countdown_published_at: float
    registry: CollectorRegistry
    exit_code: int
    log: str

    def attempts(self, label: str) -> list[ReceivedSpan]:
        task_id = self.ids[label]
        found = [s for s in self.spans if s.attributes.get("stem.task.id") == task_id]
        return sorted(found, key=lambda s: int(s.attributes["stem.task.attempt"]))


def _start_worker(redis_url: str, endpoint: str, log_path: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "STEM_OBSERVE_TEST_BROKER_URL": redis_url,
        "STEM_OBSERVE_TEST_BACKEND_URL": redis_url,
        "STEM_OBSERVE_OTLP_ENDPOINT": endpoint,
        "STEM_OBSERVE_SERVICE_NAME": "celery-plugin-test",
        "OTEL_BSP_SCHEDULE_DELAY": "60000",  # only flushes deliver spans
        "PYTHONUNBUFFERED": "1",
    }
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.support.celery_app", "worker",
             "--pool", "prefork", "--concurrency", "2", "--max-tasks-per-child", "2",
             "-Q", "tests", "-n", "stemtest@%h", "--without-gossip", "--without-mingle",
             "--loglevel", "INFO"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )


def _stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # warm shutdown
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    workdir = tmp_path_factory.mktemp("celery")
    redis = RedisServer(workdir)
    redis.start()
    receiver = OtlpReceiver().start()
    log_path = workdir / "worker.log"
    worker = _start_worker(redis.url, receiver.endpoint, log_path)
    producer = Celery("producer", broker=redis.url, backend=redis.url)
    producer.conf.update(task_default_queue="tests", broker_connection_retry_on_startup=True)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    registry = CollectorRegistry()
    try:
        wait_for(lambda: b" ready." in log_path.read_bytes(), timeout_s=60,
                 message="the worker to be ready")
        stem_observe.celery.install(producer, registry=registry, tracer_provider=provider)
        ids = {"revoked": str(uuid.uuid4())}
        producer.control.revoke(ids["revoked"])
        wait_for(lambda: any(ids["revoked"] in (v or []) for v in (
            producer.control.inspect(timeout=1.0).revoked() or {}).values()),
            timeout_s=30, message="the worker to know the revoked id")
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("producer") as span:
            context = span.get_span_context()
            for i in range(ADDS):
                ids[f"add{i}"] = producer.send_task("tests.add", (i, i)).id
            ids["flaky"] = producer.send_task("tests.flaky", (2,)).id
            ids["doomed"] = producer.send_task("tests.doomed").id
            producer.send_task("tests.add", (0, 0), task_id=ids["revoked"])
            ids["expired"] = producer.send_task(
                "tests.add", (0, 0), expires=datetime.now(UTC) - timedelta(minutes=1)).id
            countdown_published_at = time.time()
            ids["countdown"] = producer.send_task("tests.add", (1, 1), countdown=COUNTDOWN_S).id
        for label, task_id in ids.items():
            result = AsyncResult(task_id, app=producer)
            if label in ("revoked", "expired"):
                wait_for(lambda r=result: r.state == "REVOKED", timeout_s=30,  # type: ignore[misc]
                         message=f"{label} to be revoked")
            else:
                result.get(timeout=60, propagate=False)
        exit_code = _stop(worker)
        expected = ADDS + 3 + 3 + 1 + 1 + 1
        wait_for(lambda: len(receiver.snapshot()) >= expected, timeout_s=30,
                 message=f"{expected} spans")
        yield Run(
            spans=receiver.snapshot(), ids=ids, trace_id=format(context.trace_id, "032x"),
            producer_span_id=format(context.span_id, "016x"),
            countdown_published_at=countdown_published_at, registry=registry,
            exit_code=exit_code, log=log_path.read_text(errors="replace"),
        )
    finally:
        stem_observe.celery.uninstall()
        provider.shutdown()
        if worker.poll() is None:
            _stop(worker)
        receiver.stop()
        redis.stop()


def test_every_attempt_has_exactly_one_complete_span(run: Run) -> None:
    keys = [(s.attributes["stem.task.id"], s.attributes["stem.task.attempt"]) for s in run.spans]
    assert len(keys) == len(set(keys)), "a duplicate span"
    assert len(run.spans) == ADDS + 3 + 3 + 1 + 1 + 1
    assert not [s for s in run.spans if s.attributes.get("stem.span.incomplete")]
    assert {s.name for s in run.spans} == {"stem.consume"}
    assert run.exit_code == 0
    assert "the task was not affected" not in run.log  # no receiver error was logged


def test_spans_carry_the_task_and_join_the_producer_trace(run: Run) -> None:
    assert {s.trace_id for s in run.spans} == {run.trace_id}
    for i in range(ADDS):
        (span,) = run.attempts(f"add{i}")
        assert span.parent_span_id == run.producer_span_id
        assert span.attributes["stem.task"] == "tests.add"
        assert span.attributes["stem.queue"] == "tests"
        assert span.attributes["messaging.destination.name"] == "tests"
        assert span.attributes["messaging.system"] == "celery"
        assert span.attributes["stem.task.outcome"] == "succeeded"
        assert str(span.attributes["stem.worker.id"]).startswith("stemtest@")
        assert span.resource["service.name"] == "celery-plugin-test"


def test_retry_then_success(run: Run) -> None:
    attempts = run.attempts("flaky")
    assert [s.attributes["stem.task.attempt"] for s in attempts] == [0, 1, 2]
    assert [s.attributes["stem.task.outcome"] for s in attempts] == [
        "retried", "retried", "succeeded"]
    assert attempts[0].parent_span_id == run.producer_span_id
    # A retry is published from inside the failed attempt: the next one is its child.
    assert attempts[1].parent_span_id == attempts[0].span_id
    assert attempts[2].parent_span_id == attempts[1].span_id
    retry_event = dict(attempts[0].events)["retry"]
    assert retry_event["exception.type"] == "TransientError"
    assert attempts[0].attributes["stem.task.max_retries"] == 3


def test_retries_then_failure_for_good(run: Run) -> None:
    attempts = run.attempts("doomed")
    assert [s.attributes["stem.task.outcome"] for s in attempts] == [
        "retried", "retried", "failed"]
    final = attempts[-1]
    assert final.status_code == 2  # STATUS_CODE_ERROR
    assert str(dict(final.events)["exception"]["exception.type"]).endswith("TransientError")
    assert final.attributes["stem.task.max_retries"] == 2


def test_revoked_and_expired_tasks(run: Run) -> None:
    (revoked,) = run.attempts("revoked")
    assert revoked.attributes["stem.task.outcome"] == "revoked"
    assert revoked.attributes["stem.revoke.reason"] == "revoked"
    assert revoked.trace_id == run.trace_id
    (expired,) = run.attempts("expired")
    assert expired.attributes["stem.revoke.reason"] == "expired"


def test_queue_wait_is_measured_from_publish_without_the_countdown(run: Run) -> None:
    executed = [s for s in run.spans if s.attributes["stem.task.outcome"] != "revoked"]
    assert all(float(s.attributes["stem.task.queue_wait_s"]) >= 0 for s in executed)
    (delayed,) = run.attempts("countdown")
    assert delayed.end_ns / 1e9 - run.countdown_published_at >= COUNTDOWN_S
    assert float(delayed.attributes["stem.task.queue_wait_s"]) < COUNTDOWN_S


def test_the_producer_counts_what_it_published(run: Run) -> None:
    published = run.registry.get_sample_value(
        "stem_tasks_published_total", {"task": "tests.add", "queue": "tests"})
    assert published == ADDS + 3  # the adds, the revoked, the expired, the delayed one
