"""``stem-observe serve`` against simulated Stem workers, run as a user runs it."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from stem_observe.sources.stem.simulator import StemSimulator
from tests.support.process import Running
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_for

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def fetch(url: str, accept: str = OPENMETRICS) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Served:
    def __init__(self, running: Running) -> None:
        self.running = running
        self.base = running.base_url()

    def metrics(self) -> str:
        return fetch(f"{self.base}/metrics")[1]

    def value(self, pattern: str) -> float | None:
        match = re.search(pattern, self.metrics(), re.M)
        return float(match.group(1)) if match else None


@pytest.fixture
def served(redis_url: str, tmp_path: Path) -> Iterator[Served]:
    running = Running(["serve", "--broker", redis_url, "--port", "0", "--poll-interval", "0.2s",
                       "--reconcile-interval", "2s", "--notifications", "enable"], tmp_path)
    try:
        yield Served(running)
    finally:
        returncode = running.stop()
    assert returncode == 0, running.stderr_path.read_text()
    assert any("stopping" in line for line in running.lines)


def test_serve_turns_stem_redis_into_exact_metrics_with_task_id_exemplars(
    served: Served, redis_url: str,
) -> None:
    wait_for(lambda: fetch(f"{served.base}/readyz")[0] == 200, message="ready")
    client = redis.Redis.from_url(redis_url)
    simulator = StemSimulator(client)
    succeeded = [simulator.run_task("emails.send", queue="emails", worker_id="w1")
                 for _ in range(5)]
    failed = simulator.run_task("payments.charge", queue="payments", worker_id="w2",
                                outcome="fail", error_type="CardDeclined", message="no funds")
    simulator.heartbeat("w1", queues={"emails": 0})
    simulator.enqueue("reports.build", queue="reports")  # waiting, never delivered
    labels = r'\{queue="emails",task="emails.send"\}'

    def counted() -> bool:
        body = served.metrics()
        return bool(re.search(rf"^stem_tasks_succeeded_total{labels} 5\.0", body, re.M)
                    and re.search(r'^stem_tasks_dead_lettered_total\{[^}]*queue="payments"',
                                  body, re.M)
                    and re.search(r'^stem_queue_depth\{namespace="stem",queue="reports"\} 1',
                                  body, re.M))

    wait_for(counted, timeout_s=30, interval_s=0.2, message="the simulated tasks on /metrics")
    body = served.metrics()
    assert re.search(rf"^stem_tasks_started_total{labels} 5\.0", body, re.M)
    failed_id = failed.delivery.envelope.id
    assert re.search(
        r'^stem_tasks_failed_total\{queue="payments",task="payments.charge"\} 1\.0 '
        rf'# \{{task_id="{failed_id}"', body, re.M)
    assert re.search(
        r'^stem_task_failures_by_error_total\{error_type="CardDeclined",'
        r'queue="payments",task="payments.charge"\} 1\.0', body, re.M)
    dead = re.search(r'^stem_tasks_dead_lettered_total\{([^}]*)\} 1\.0 # \{task_id="([^"]+)"',
                     body, re.M)
    assert dead is not None
    assert 'reason="max-retries-exhausted"' in dead.group(1)
    assert dead.group(2) == failed_id
    ids = {run.delivery.envelope.id for run in succeeded}
    exemplar_ids = set(re.findall(r'stem_task_duration_seconds_bucket\{[^}]*queue="emails"'
                                  r'[^}]*\} \S+ # \{task_id="([^"]+)"', body))
    assert exemplar_ids
    assert exemplar_ids <= ids
    assert re.search(r'^stem_worker_up\{namespace="stem",worker="w1"\} 1\.0', body, re.M)
    assert re.search(r'^stem_dlq_depth\{namespace="stem",queue="payments"\} 1\.0', body, re.M)
    assert re.search(r"^stem_observe_stem_redis_up 1\.0", body, re.M)
    client.close()


def test_readyz_follows_redis(served: Served, redis_server: RedisServer) -> None:
    wait_for(lambda: fetch(f"{served.base}/readyz")[0] == 200, message="ready")
    redis_server.stop()
    try:
        wait_for(lambda: fetch(f"{served.base}/readyz")[0] == 503, message="not ready")
        assert fetch(f"{served.base}/healthz")[0] == 200  # alive, just not ready
    finally:
        redis_server.start()
    wait_for(lambda: fetch(f"{served.base}/readyz")[0] == 200, timeout_s=20,
             message="ready again")


def test_demo_stem_runs_the_sidecar_pipeline_on_a_private_redis() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stem_observe", "demo", "--stem", "--duration", "4s",
         "--port", "0", "--rate", "40", "--seed", "3"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    last = [line for line in result.stdout.splitlines() if "seen in Redis" in line][-1]
    started = int(re.search(r"started (\d+)", last).group(1))  # type: ignore[union-attr]
    succeeded = int(re.search(r"succeeded (\d+)", last).group(1))  # type: ignore[union-attr]
    assert started > 20
    assert succeeded > 10
    assert "stem.consume" in result.stdout
