"""The whole Celery path, end to end: a real prefork worker (concurrency 2, children
recycled every 2 tasks) on a real Redis with the plugin and fleet forwarding, a real
``stem-observe serve --fleet`` aggregating the fleet, spans over OTLP/HTTP, and a
retry-spike rule firing into a local webhook."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from celery import Celery
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import stem_observe.celery
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support.process import Running
from tests.support.recording_server import RecordingServer
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_for

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
ADDS = 5
SPIKE_WINDOW_S = 5.0
RULES = f"""
rules:
  - name: RetrySpike
    kind: spike
    signals: [task-retry]
    group_by: [queue]
    window: {SPIKE_WINDOW_S:g}s
    baseline: 1m
    factor: 2
    min_count: 3
    for: 0s
    keep_firing_for: 1m
    severity: warning
    annotations:
      summary: "Retries spiking on queue {{queue}}: {{value}} in {{window}}"
routing:
  receivers:
    - name: hook
      kind: webhook
      url_env: TEST_WEBHOOK_URL
  route:
    receiver: hook
    group_by: [alertname, queue]
    group_wait: 0s
    group_interval: 1s
    repeat_interval: 4h
"""


@dataclass
class Fleet:
    metrics: str
    spans: list[ReceivedSpan]
    hook: RecordingServer
    ids: dict[str, str]
    trace_id: str


def scrape(base: str) -> str:
    request = urllib.request.Request(f"{base}/metrics",
                                     headers={"Accept": "application/openmetrics-text"})
    return str(urllib.request.urlopen(request).read().decode())


def value(metrics: str, name: str, **labels: str) -> float:
    """The sample ``name`` whose labels include ``labels`` (0 when absent)."""
    total = 0.0
    for line in metrics.splitlines():
        match = re.match(rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("fleet")
    redis = RedisServer(workdir)
    redis.start()
    receiver = OtlpReceiver().start()
    rules = workdir / "rules.yml"
    rules.write_text(RULES)
    hook = RecordingServer().__enter__()
    serve = Running(["serve", "--fleet", redis.url, "--port", "0", "--rules", str(rules),
                     "--tick", "0.2s"], workdir, env={"TEST_WEBHOOK_URL": hook.url + "/hook"})
    serve_started = time.monotonic()
    log_path = workdir / "worker.log"
    env = {**os.environ, "STEM_OBSERVE_TEST_BROKER_URL": redis.url,
           "STEM_OBSERVE_TEST_BACKEND_URL": redis.url,
           "STEM_OBSERVE_FLEET_REDIS": redis.url,
           "STEM_OBSERVE_OTLP_ENDPOINT": receiver.endpoint,
           "STEM_OBSERVE_SERVICE_NAME": "celery-fleet-test", "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.support.celery_app", "worker",
             "--pool", "prefork", "--concurrency", "2", "--max-tasks-per-child", "2",
             "-Q", "tests", "-n", "fleet@%h", "--without-gossip", "--without-mingle",
             "--loglevel", "INFO"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    producer = Celery("producer", broker=redis.url, backend=redis.url)
    producer.conf.update(task_default_queue="tests", broker_connection_retry_on_startup=True)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    try:
        base = serve.base_url()
        wait_for(lambda: b" ready." in log_path.read_bytes(), timeout_s=60,
                 message="the worker to be ready")
        # a spike needs a window of history behind the engine's baseline
        wait_for(lambda: time.monotonic() - serve_started > SPIKE_WINDOW_S + 1,
                 timeout_s=30, message="the spike rule's first window of history")
        stem_observe.celery.install(producer, registry=CollectorRegistry(),
                                    tracer_provider=provider)
        ids: dict[str, str] = {}
        with provider.get_tracer("test").start_as_current_span("producer") as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            for i in range(ADDS):
                ids[f"add{i}"] = producer.send_task("tests.add", (i, i)).id
            ids["flaky"] = producer.send_task("tests.flaky", (2,)).id
            ids["doomed"] = producer.send_task("tests.doomed").id
            ids["broken"] = producer.send_task("tests.broken").id

        def settled() -> bool:
            metrics = scrape(base)
            return (value(metrics, "stem_tasks_succeeded_total") >= ADDS + 1
                    and value(metrics, "stem_tasks_failed_total") >= 2)

        wait_for(settled, timeout_s=90, message="every task settled in serve's metrics")
        wait_for(lambda: bool(hook.received()), timeout_s=30, message="the retry spike")
        metrics = scrape(base)
    finally:
        stem_observe.celery.uninstall()  # the producer's; harmless when never installed
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)  # warm shutdown flushes spans and events
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    spans = receiver.snapshot()  # the warm shutdown flushed every child's spans
    try:
        yield Fleet(metrics, spans, hook, ids, trace_id)
    finally:
        serve.stop()
        hook.__exit__(None, None, None)
        provider.shutdown()
        receiver.stop()
        redis.stop()


def test_serve_counts_the_whole_fleet_exactly(fleet: Fleet) -> None:
    m = fleet.metrics
    assert value(m, "stem_tasks_succeeded_total", task="tests.add", queue="tests") == ADDS
    assert value(m, "stem_tasks_succeeded_total", task="tests.flaky") == 1
    assert value(m, "stem_tasks_retried_total", task="tests.flaky") == 2
    assert value(m, "stem_tasks_retried_total", task="tests.doomed") == 2
    assert value(m, "stem_tasks_failed_total", task="tests.doomed") == 1
    assert value(m, "stem_tasks_failed_total", task="tests.broken") == 1
    # every attempt was received and started exactly once, whatever child ran it
    attempts = ADDS + 3 + 3 + 1
    assert value(m, "stem_tasks_started_total") == attempts


def test_exemplars_carry_the_real_task_ids_and_the_producers_trace(fleet: Fleet) -> None:
    exemplars = re.findall(r'^stem_tasks_(?:failed|retried)_total\{[^}]*\} \S+ # \{([^}]*)\}',
                           fleet.metrics, re.M)
    assert exemplars, "no exemplar on the failure counters"
    task_ids = {re.search(r'task_id="([^"]+)"', e).group(1)  # type: ignore[union-attr]
                for e in exemplars}
    assert task_ids <= {fleet.ids["flaky"], fleet.ids["doomed"], fleet.ids["broken"]}
    assert fleet.ids["doomed"] in task_ids
    assert all(f'trace_id="{fleet.trace_id}"' in e for e in exemplars)


def test_a_retry_spike_rule_fires_into_the_webhook(fleet: Fleet) -> None:
    firing = [json.loads(r.body) for r in fleet.hook.received()]
    assert firing[0]["status"] == "firing"
    alert = firing[0]["alerts"][0]
    assert alert["labels"]["alertname"] == "RetrySpike"
    assert alert["labels"]["queue"] == "tests"


def test_worker_spans_arrive_over_otlp_in_the_producers_trace(fleet: Fleet) -> None:
    by_task: dict[str, list[ReceivedSpan]] = {}
    for span in fleet.spans:
        task_id = span.attributes.get("stem.task.id")
        if isinstance(task_id, str):
            by_task.setdefault(task_id, []).append(span)
    for label, task_id in fleet.ids.items():
        assert task_id in by_task, f"no span for {label}"
        assert {s.trace_id for s in by_task[task_id]} == {fleet.trace_id}, label
    assert len(by_task[fleet.ids["doomed"]]) >= 3  # one span per attempt
