"""The task's span and log fields stay bound to the right context, whatever the worker does."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan

import stem_observe
from stem_observe import events as ev
from stem_observe.sinks.logs import current_log_context
from tests.conftest import Installed


def in_process(kind: type[ev.TaskEvent], task_id: str) -> ev.TaskEvent:
    return kind(task_id=task_id, task_name="a", in_process=True)


def by_task_id(installed: Installed) -> dict[str, ReadableSpan]:
    return {
        str(dict(s.attributes or {})["stem.task.id"]): s
        for s in installed.spans.get_finished_spans()
    }


def nothing_bound() -> bool:
    return not trace.get_current_span().get_span_context().is_valid and (
        current_log_context() is None)


def run_in_thread(target: Callable[[], None]) -> None:
    errors: list[BaseException] = []

    def wrapped() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=wrapped)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    if errors:
        raise errors[0]


def test_after_a_task_nothing_stays_bound(installed: Installed) -> None:
    with stem_observe.track_task("a"):
        assert not nothing_bound()
    assert nothing_bound()


def test_nested_tasks_unwind_in_order(installed: Installed) -> None:
    with stem_observe.track_task("outer", task_id="o"):
        outer = trace.get_current_span()
        with stem_observe.track_task("inner", task_id="i"):
            log_context = current_log_context()
            assert log_context is not None
            assert log_context.task_id == "i"
        assert trace.get_current_span() is outer
        log_context = current_log_context()
        assert log_context is not None
        assert log_context.task_id == "o"
    assert nothing_bound()
    spans = by_task_id(installed)
    inner_parent = spans["i"].parent
    assert inner_parent is not None
    assert spans["o"].context is not None
    assert inner_parent.span_id == spans["o"].context.span_id


def test_same_task_id_in_two_threads_keeps_each_threads_binding(installed: Installed) -> None:
    started, other_done = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def first() -> None:
        stem_observe.emit(in_process(ev.TaskPrerun, "dup"))
        seen["span"] = trace.get_current_span()
        started.set()
        assert other_done.wait(10)
        # The other thread's postrun for the same id must not have unbound this one.
        seen["still"] = trace.get_current_span()
        seen["log"] = current_log_context()
        stem_observe.emit(in_process(ev.TaskSucceeded, "dup"))
        stem_observe.emit(in_process(ev.TaskPostrun, "dup"))
        seen["after"] = nothing_bound()

    def second() -> None:
        assert started.wait(10)
        stem_observe.emit(in_process(ev.TaskPrerun, "dup"))
        stem_observe.emit(in_process(ev.TaskPostrun, "dup"))
        seen["second_after"] = nothing_bound()
        other_done.set()

    thread = threading.Thread(target=second)
    thread.start()
    run_in_thread(first)
    thread.join(timeout=10)
    assert seen["still"] is seen["span"]
    log_context = seen["log"]
    assert log_context is not None
    assert getattr(log_context, "task_id", None) == "dup"
    assert seen["after"] is True
    assert seen["second_after"] is True


def test_postrun_from_another_thread_is_unwound_by_the_owner(installed: Installed) -> None:
    owner_ready, postrun_sent = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def owner() -> None:
        stem_observe.emit(in_process(ev.TaskPrerun, "x1"))
        owner_ready.set()
        assert postrun_sent.wait(10)
        # The next task in this thread starts from a clean context.
        with stem_observe.track_task("b", task_id="x2"):
            seen["parent"] = trace.get_current_span()
        seen["after"] = nothing_bound()

    thread = threading.Thread(target=owner)
    thread.start()
    assert owner_ready.wait(10)
    stem_observe.emit(in_process(ev.TaskSucceeded, "x1"))
    stem_observe.emit(in_process(ev.TaskPostrun, "x1"))  # from the main thread
    postrun_sent.set()
    thread.join(timeout=10)
    assert seen["after"] is True
    spans = by_task_id(installed)
    assert spans["x2"].parent is None  # not a child of the ended x1


def test_a_task_whose_postrun_never_came_does_not_leak(installed: Installed) -> None:
    def worker() -> None:
        for index in range(100):
            stem_observe.emit(in_process(ev.TaskPrerun, f"lost-{index}"))
            stem_observe.emit(in_process(ev.TaskSucceeded, f"lost-{index}"))
        with stem_observe.track_task("b", task_id="next"):
            pass
        assert nothing_bound()

    run_in_thread(worker)
    spans = by_task_id(installed)
    assert spans["next"].parent is None
    assert installed.bridge.tracing is not None
    assert installed.bridge.tracing.open_spans() == 0


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    captured: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    handler = Capture()
    logger = logging.getLogger("tests.scopes")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield captured
    logger.removeHandler(handler)


def test_extra_with_the_same_field_names_wins_and_never_raises(
    installed: Installed, records: list[logging.LogRecord]
) -> None:
    log = logging.getLogger("tests.scopes")
    log.info("outside", extra={"task_id": "mine"})
    with stem_observe.track_task("a", task_id="bridge-id"):
        log.info("inside", extra={"task_id": "mine-too", "trace_id": "custom"})
        log.info("plain")
    assert [r.__dict__["task_id"] for r in records] == ["mine", "mine-too", "bridge-id"]
    assert records[1].__dict__["trace_id"] == "custom"
    formatter = logging.Formatter("%(task_id)s %(task_name)s %(message)s")
    assert formatter.format(records[2]) == "bridge-id a plain"
