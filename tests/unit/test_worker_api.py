"""The plain-Python worker API sends the lifecycle signals; nothing it does raises into a task."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

import stem_observe
from stem_observe import events as ev
from stem_observe import signals
from stem_observe.errors import StemObserveError
from tests.conftest import Installed
from tests.support.wait import wait_for


class Collected:
    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def __call__(self, sender: object, *, event: ev.Event) -> None:
        self.events.append(event)

    def names(self) -> list[str]:
        return [signals.signal_for(type(e)).name for e in self.events]


@pytest.fixture
def collected() -> Iterator[Collected]:
    collector = Collected()
    for sig in signals.SIGNALS.values():
        sig.connect(collector)
    yield collector
    for sig in signals.SIGNALS.values():
        sig.disconnect(collector)


def test_success_sends_received_prerun_succeeded_postrun(collected: Collected) -> None:
    with stem_observe.track_task("a", task_id="t-1", queue="q", attempt=1, max_retries=2) as run:
        assert stem_observe.current_task() is run
    assert stem_observe.current_task() is None
    assert collected.names() == ["task-received", "task-prerun", "task-succeeded", "task-postrun"]
    succeeded = collected.events[2]
    assert isinstance(succeeded, ev.TaskSucceeded)
    assert (succeeded.task_id, succeeded.queue, succeeded.attempt) == ("t-1", "q", 1)
    assert succeeded.in_process
    assert succeeded.runtime_s is not None
    assert succeeded.runtime_s >= 0
    postrun = collected.events[3]
    assert isinstance(postrun, ev.TaskPostrun)
    assert postrun.state == "succeeded"


def test_exception_sends_failed_and_is_reraised_unchanged(collected: Collected) -> None:
    error = ValueError("bad input")
    with pytest.raises(ValueError, match="bad input") as raised, stem_observe.track_task("a"):
        raise error
    assert raised.value is error
    assert collected.names()[-2:] == ["task-failed", "task-postrun"]
    failed = collected.events[-2]
    assert isinstance(failed, ev.TaskFailed)
    assert failed.error_type == "ValueError"
    assert failed.error_message == "bad input"
    assert failed.exception is error


def test_retry_replaces_the_outcome(collected: Collected) -> None:
    with stem_observe.track_task("a") as run:
        run.retry("flaky", countdown=5)
    assert collected.names()[-2:] == ["task-retry", "task-postrun"]
    retry = collected.events[-2]
    assert isinstance(retry, ev.TaskRetry)
    assert retry.reason == "flaky"
    assert retry.retry_delay_s == pytest.approx(5, abs=0.1)
    assert retry.next_retry_at == pytest.approx(retry.occurred_at + 5)
    postrun = collected.events[-1]
    assert isinstance(postrun, ev.TaskPostrun)
    assert postrun.state == "retried"


def test_decorator_tracks_each_call_with_a_new_task_id(collected: Collected) -> None:
    @stem_observe.observe(queue="math")
    def add(x: int, y: int) -> int:
        return x + y

    assert add(1, 2) == 3
    assert add(2, 2) == 4
    prerun = [e for e in collected.events if isinstance(e, ev.TaskPrerun)]
    assert [e.task_name for e in prerun] == [f"{__name__}.{add.__qualname__}"] * 2
    assert prerun[0].task_id != prerun[1].task_id
    assert {e.queue for e in prerun} == {"math"}


def test_async_functions_are_tracked_with_their_outcome(collected: Collected) -> None:
    @stem_observe.observe(queue="io")
    async def fetch(fail: bool) -> str:
        await asyncio.sleep(0)
        if fail:
            raise ConnectionError("down")
        return "ok"

    assert asyncio.run(fetch(False)) == "ok"
    with pytest.raises(ConnectionError, match="down"):
        asyncio.run(fetch(True))
    outcomes = [e for e in collected.events if isinstance(e, ev.TaskSucceeded | ev.TaskFailed)]
    assert [type(e).__name__ for e in outcomes] == ["TaskSucceeded", "TaskFailed"]
    failed = outcomes[1]
    assert isinstance(failed, ev.TaskFailed)
    assert failed.error_type == "ConnectionError"


def test_async_context_manager(collected: Collected) -> None:
    async def handler() -> None:
        async with stem_observe.track_task("a", task_id="async-1") as run:
            run.heartbeat(0.5)

    asyncio.run(handler())
    assert collected.names() == [
        "task-received", "task-prerun", "task-heartbeat", "task-succeeded", "task-postrun"]


def test_worker_session_sends_lifecycle_and_heartbeats(
    installed: Installed, collected: Collected
) -> None:
    with stem_observe.WorkerSession("w-7", queues=["q"], concurrency=2,
                                    heartbeat_interval_s=0.05) as worker:
        with worker.track("a"):
            pass
        wait_for(lambda: collected.names().count("worker-heartbeat") >= 3,
                 message="three heartbeats")
        assert installed.value("stem_worker_up", worker="w-7", namespace="stem") == 1
    assert collected.names()[0] == "worker-ready"
    assert collected.names()[-2:] == ["worker-stopping", "worker-shutdown"]
    beats = [e for e in collected.events if isinstance(e, ev.WorkerHeartbeat)]
    assert beats[-1].completed == 1
    assert beats[-1].inflight == 0
    assert installed.value("stem_worker_up", worker="w-7", namespace="stem") == 0


def test_a_receiver_that_raises_never_reaches_the_task(
    installed: Installed, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(sender: object, *, event: ev.Event) -> None:
        raise RuntimeError("receiver bug")

    before = signals.receiver_errors["task-succeeded"]
    signals.task_succeeded.connect(broken)
    try:
        with stem_observe.track_task("a", task_id="t-1"):
            pass
    finally:
        signals.task_succeeded.disconnect(broken)
    assert signals.receiver_errors["task-succeeded"] == before + 1
    # The bridge's own receiver still ran: the success was counted.
    assert installed.value("stem_tasks_succeeded_total", task="a", queue="default") == 1
    assert installed.value("stem_observe_receiver_errors_total", signal="task-succeeded") >= 1


def test_a_failing_sink_is_isolated_from_the_other_sinks(installed: Installed) -> None:
    assert installed.bridge.metrics is not None
    # Break the metrics sink: building a new task's series now raises inside it.
    installed.bridge.metrics._metrics["succeeded"] = None  # type: ignore[assignment]
    before = signals.receiver_errors["task-prerun"]
    with stem_observe.track_task("other", task_id="t-2"):
        pass
    assert signals.receiver_errors["task-prerun"] == before + 1
    (span,) = installed.spans.get_finished_spans()
    assert dict(span.attributes or {})["stem.task.id"] == "t-2"


def test_install_is_idempotent_and_uninstall_restores() -> None:
    registry = CollectorRegistry()
    bridge = stem_observe.install(registry=registry, tracing=False)
    try:
        assert stem_observe.install(registry=registry, tracing=False) is bridge
        with pytest.raises(StemObserveError, match="already installed"):
            stem_observe.install(registry=registry, tracing=True)
        assert signals.task_prerun.receivers
    finally:
        stem_observe.uninstall()
    assert stem_observe.installed() is None
    assert not any(sig.receivers for sig in signals.SIGNALS.values())
    assert not list(registry.collect())
    stem_observe.uninstall()  # a second uninstall is harmless


def test_emit_without_receivers_is_a_no_op() -> None:
    assert not signals.task_prerun.receivers
    stem_observe.emit(ev.TaskPrerun(task_id="t", task_name="a"))
