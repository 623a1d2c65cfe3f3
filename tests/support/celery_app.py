"""A Celery app for the plugin's tests and benchmark; broker and backend from the environment.

``STEM_OBSERVE_TEST_BROKER_URL`` / ``STEM_OBSERVE_TEST_BACKEND_URL`` (default: in-memory, for
eager use). Workers get the plugin through its bootstep; importing this module installs
nothing in the importing process. ``STEM_OBSERVE_TEST_PLUGIN=0`` leaves the bootstep out
(the benchmark's other variants).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject

import stem_observe.celery

QUEUE = "tests"

app = Celery(
    "stem_observe_tests",
    broker=os.environ.get("STEM_OBSERVE_TEST_BROKER_URL", "memory://"),
    backend=os.environ.get("STEM_OBSERVE_TEST_BACKEND_URL", "cache+memory://"),
)
app.conf.update(
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
    result_expires=600,
    task_acks_late=False,
)
if os.environ.get("STEM_OBSERVE_TEST_PLUGIN", "1") != "0":
    app.steps["worker"].add(stem_observe.celery.StemObserveStep)

_bench = os.environ.get("STEM_OBSERVE_TEST_WORKER_SETUP")
if _bench:  # the benchmark's worker-side setup, e.g. "bench.bench_celery:worker_setup"
    import importlib

    _module, _, _func = _bench.partition(":")
    getattr(importlib.import_module(_module), _func)(app)


class TransientError(Exception):
    """A failure worth retrying."""


@app.task(name="tests.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="tests.noop")
def noop() -> None:
    return None


@app.task(bind=True, name="tests.flaky", max_retries=3)
def flaky(self: Task, succeed_on_attempt: int) -> int:
    """Fails with :class:`TransientError` until attempt ``succeed_on_attempt``."""
    attempt: int = self.request.retries
    if attempt < succeed_on_attempt:
        raise self.retry(exc=TransientError(f"attempt {attempt}"), countdown=0)
    return attempt


@app.task(bind=True, name="tests.doomed", max_retries=2)
def doomed(self: Task) -> None:
    """Retries until ``max_retries`` is exhausted, then fails for good."""
    raise self.retry(exc=TransientError(f"attempt {self.request.retries}"), countdown=0)


@app.task(name="tests.broken")
def broken() -> None:
    raise ValueError("broken for good")


@app.task(name="tests.rejected")
def rejected(requeue: bool = False) -> None:
    raise Reject("not for us", requeue=requeue)


def tasks() -> dict[str, Any]:
    return {"add": add, "flaky": flaky, "doomed": doomed, "broken": broken}


@app.task(name="tests.now")
def now() -> float:
    """When it ran (the benchmark's clock)."""
    return time.time()


@app.task(name="tests.clocks")
def clocks() -> tuple[float, float]:
    """When it ran, and the CPU time the worker process (all its threads) had used so far."""
    return time.time(), time.process_time()
