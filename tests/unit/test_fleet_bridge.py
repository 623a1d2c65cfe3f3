"""Events re-emitted from the fleet stream: counted with the worker's trace, never traced again."""

from __future__ import annotations

from stem_observe import events as ev
from stem_observe.signals import emit
from stem_observe.sinks.fleet import FLEET_SENDER
from stem_observe.sources._fleet_wire import decode, encode, pack
from tests.conftest import Installed

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


def test_forwarded_events_make_metrics_with_the_workers_trace_and_no_span(
    installed: Installed,
) -> None:
    for event in (
        ev.TaskReceived(task_id="t1", task_name="a.b", queue="q", in_process=True),
        ev.TaskPrerun(task_id="t1", task_name="a.b", queue="q", in_process=True),
        ev.TaskFailed(task_id="t1", task_name="a.b", queue="q", error_type="KeyError",
                      in_process=True, headers={"traceparent": TRACEPARENT}),
        ev.TaskPostrun(task_id="t1", task_name="a.b", queue="q", state="failed",
                       in_process=True),
    ):
        entry = pack([encode(event, TRACEPARENT)])
        (decoded,) = decode({b"v": entry["v"], b"e": entry["e"]})
        assert isinstance(decoded, ev.Event)
        emit(decoded, FLEET_SENDER)
    assert installed.spans.get_finished_spans() == ()
    tracing = installed.bridge.tracing
    assert tracing is not None
    assert tracing.open_spans() == 0
    assert installed.value("stem_tasks_failed_total", task="a.b", queue="q") == 1
    samples = [s for metric in installed.registry.collect() for s in metric.samples
               if s.name == "stem_tasks_failed_total" and s.exemplar is not None]
    assert [s.exemplar.labels for s in samples if s.exemplar] == [
        {"task_id": "t1", "trace_id": TRACE_ID}]


def test_local_events_are_still_traced(installed: Installed) -> None:
    emit(ev.TaskSucceeded(task_id="t2", task_name="a.b"))
    assert len(installed.spans.get_finished_spans()) == 1
