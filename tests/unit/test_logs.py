"""Log records emitted while a task runs carry its IDs."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

import stem_observe
from stem_observe.sinks.logs import TaskContextFilter
from tests.conftest import Installed


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    handler = Recorder()
    logger = logging.getLogger("tests.app")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)


def test_records_inside_a_task_carry_its_ids(installed: Installed, recorder: Recorder) -> None:
    log = logging.getLogger("tests.app")
    log.info("before")
    with stem_observe.track_task("emails.send", task_id="t-5"):
        log.info("inside")
    log.info("after")
    before, inside, after = recorder.records
    (span,) = installed.spans.get_finished_spans()
    assert span.context is not None
    assert inside.__dict__["task_id"] == "t-5"
    assert inside.__dict__["task_name"] == "emails.send"
    assert inside.__dict__["trace_id"] == format(span.context.trace_id, "032x")
    assert inside.__dict__["span_id"] == format(span.context.span_id, "016x")
    for outside in (before, after):
        assert outside.__dict__["task_id"] == ""
        assert outside.__dict__["trace_id"] == ""
    formatted = logging.Formatter("%(task_id)s %(trace_id)s %(message)s").format(inside)
    assert formatted.startswith("t-5 ")


def test_uninstall_restores_the_record_factory() -> None:
    original = logging.getLogRecordFactory()
    stem_observe.install(metrics=False, tracing=False)
    assert logging.getLogRecordFactory() is not original
    stem_observe.uninstall()
    assert logging.getLogRecordFactory() is original


def test_filter_adds_fields_without_the_factory(recorder: Recorder) -> None:
    original = logging.getLogRecordFactory()
    stem_observe.install(metrics=False, tracing=False, log_record_factory=False)
    recorder.addFilter(TaskContextFilter())
    try:
        assert logging.getLogRecordFactory() is original
        log = logging.getLogger("tests.app")
        log.info("outside")
        with stem_observe.track_task("emails.send", task_id="t-9"):
            log.info("inside")
            log.info("mine", extra={"task_id": "own"})
    finally:
        stem_observe.uninstall()
    outside, inside, mine = recorder.records
    assert outside.__dict__["task_id"] == ""
    assert inside.__dict__["task_id"] == "t-9"
    assert inside.__dict__["task_name"] == "emails.send"
    assert mine.__dict__["task_id"] == "own"
