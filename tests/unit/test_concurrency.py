"""Many worker threads at once: counts stay exact and nothing is left behind."""

from __future__ import annotations

import threading

import stem_observe
from stem_observe import signals
from tests.conftest import Installed

THREADS = 8
TASKS = 400


def test_eight_threads_count_exactly_and_leave_nothing_open(installed: Installed) -> None:
    errors_before = sum(signals.receiver_errors.values())
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            barrier.wait(timeout=10)
            for task in range(TASKS):
                name = f"task-{task % 5}"
                with stem_observe.track_task(name, task_id=f"{index}-{task}",
                                             queue=f"q{task % 3}", worker_id=f"w{index}") as run:
                    if task % 7 == 0:
                        run.retry("flaky")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    total = THREADS * TASKS
    retried = THREADS * len([t for t in range(TASKS) if t % 7 == 0])

    def total_of(sample: str) -> float:
        return sum(
            s.value for metric in installed.registry.collect() for s in metric.samples
            if s.name == sample
        )

    assert total_of("stem_tasks_started_total") == total
    assert total_of("stem_tasks_retried_total") == retried
    assert total_of("stem_tasks_succeeded_total") == total - retried
    assert total_of("stem_worker_inflight") == 0
    assert sum(signals.receiver_errors.values()) == errors_before
    assert installed.bridge.tracing is not None
    assert installed.bridge.tracing.open_spans() == 0
    assert len(installed.spans.get_finished_spans()) == total
