"""A forked worker child (prefork pools) starts clean and keeps reporting."""

from __future__ import annotations

import json
import os

import pytest

import stem_observe
from stem_observe import events as ev
from tests.conftest import Installed


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_child_forgets_the_parents_open_spans_and_records_its_own(installed: Installed) -> None:
    stem_observe.emit(ev.TaskPrerun(task_id="in-parent", task_name="a"))
    tracing = installed.bridge.tracing
    assert tracing is not None
    assert tracing.open_spans() == 1
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running pytest's teardown
        status = 1
        try:
            os.close(read_end)
            inherited = tracing.open_spans()
            with stem_observe.track_task("child.task", task_id="in-child"):
                pass
            report = {
                "inherited": inherited,
                "succeeded": installed.value("stem_tasks_succeeded_total",
                                             task="child.task", queue="default"),
                "spans": [dict(s.attributes or {}).get("stem.task.id")
                          for s in installed.spans.get_finished_spans()],
            }
            os.write(write_end, json.dumps(report).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = json.loads(pipe.read())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == {"inherited": 0, "succeeded": 1.0, "spans": ["in-child"]}
    assert tracing.open_spans() == 1  # the parent's own state is untouched
