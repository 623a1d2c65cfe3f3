"""A real prefork Celery worker keeps its pace while the fleet's Redis is down for ten
seconds: the broker is another Redis, forwarding never blocks a task, and once the fleet
Redis is back the events queued meanwhile arrive in ``serve``, the batch in flight when it
went away included; the drop counters say nothing was lost."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from celery import Celery

from tests.support.process import Running
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_for

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
RATE_PER_S = 20.0
DURABLE = ("--appendonly", "yes", "--appendfsync", "always")


def total(base: str, pattern: str) -> float:
    body = urllib.request.urlopen(f"{base}/metrics").read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{pattern} (\S+)$", body, re.M))


def test_a_fleet_redis_outage_neither_slows_the_worker_nor_loses_events(
    tmp_path: Path,
) -> None:
    broker = RedisServer(tmp_path / "broker")
    fleet = RedisServer(tmp_path / "fleet")
    for server in (broker, fleet):
        server.workdir.mkdir()
    broker.start()
    fleet.start(*DURABLE)
    serve = Running(["serve", "--fleet", fleet.url, "--port", "0"], tmp_path)
    log_path = tmp_path / "worker.log"
    env = {**os.environ, "STEM_OBSERVE_TEST_BROKER_URL": broker.url,
           "STEM_OBSERVE_TEST_BACKEND_URL": broker.url, "STEM_OBSERVE_FLEET_REDIS": fleet.url,
           "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.support.celery_app", "worker",
             "--pool", "prefork", "--concurrency", "2", "-Q", "tests", "-n", "outage@%h",
             "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    producer = Celery("producer", broker=broker.url, backend=broker.url)
    producer.conf.update(task_default_queue="tests", broker_connection_retry_on_startup=True)
    published: list[tuple[float, str]] = []  # (epoch published, task id)
    stop = threading.Event()

    def publish() -> None:
        next_at = time.monotonic()
        while not stop.is_set():
            published.append((time.time(), producer.send_task("tests.now").id))
            next_at += 1 / RATE_PER_S
            stop.wait(max(0.0, next_at - time.monotonic()))

    thread = threading.Thread(target=publish, name="publisher")
    try:
        base = serve.base_url()
        wait_for(lambda: b" ready." in log_path.read_bytes(), timeout_s=60,
                 message="the worker to be ready")
        thread.start()
        wait_for(lambda: len(published) >= 3 * RATE_PER_S, timeout_s=20,
                 message="a steady rate before the outage")
        down_at = time.time()
        fleet.stop()
        wait_for(lambda: time.time() - down_at >= 10, timeout_s=15, interval_s=0.1,
                 message="ten seconds of outage")
        up_at = time.time()
        fleet.start(*DURABLE)
        wait_for(lambda: time.time() - up_at >= 2, timeout_s=10, message="a little after")
        stop.set()
        thread.join(10)
        ran = {task_id: producer.AsyncResult(task_id).get(timeout=30)
               for _, task_id in published}
        # The worker kept its pace: tasks published during the outage ran promptly.
        during = [ran[task_id] - at for at, task_id in published if down_at <= at < up_at]
        assert len(during) >= 8 * RATE_PER_S
        assert max(during) < 2.0, sorted(during)[-5:]
        tasks = len(published)
        # Every task's four events (received, started, succeeded, postrun) reach serve or
        # are counted as dropped by the worker that could not forward them (the batch in
        # flight when Redis went away); the only other events are a few heartbeats.
        kinds = "task-received|task-prerun|task-succeeded|task-postrun"

        def arrived() -> float:
            return total(base, rf'stem_observe_fleet_events_total\{{kind="(?:{kinds})"\}}')

        def dropped() -> float:
            return total(base, r'stem_observe_fleet_dropped_events_total\{[^}]*\}')

        wait_for(lambda: arrived() + dropped() >= 4 * tasks, timeout_s=60,
                 message="every task event received or reported dropped")
        missing = 4 * tasks - arrived()
        assert missing <= dropped() <= missing + 3
        # The queues held the outage's events and the batch in flight when Redis went away
        # was sent again once it was back: nothing was lost.
        assert (missing, dropped()) == (0, 0)
        assert total(base, r'stem_tasks_succeeded_total\{[^}]*\}') == total(
            base, r'stem_observe_fleet_events_total\{kind="task-succeeded"\}')
    finally:
        stop.set()
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
        try:
            assert worker.wait(timeout=60) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
            serve.stop()
            broker.stop()
            fleet.stop()
