"""The engine on examples: what an alert carries, each rule kind, the signal receivers, the
store of silences."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from stem_observe import events as ev
from stem_observe import signals
from stem_observe.errors import ConfigError
from stem_observe.notify import Dispatcher, FakeClock, RecordingReceiver
from stem_observe.rules import parse_rules
from stem_observe.rules.engine import Engine
from stem_observe.rules.store import MemoryStore, SilenceError

TRACE = "0af7651916cd43dd8448eb211c80319c"
ROUTING = """
routing:
  receivers:
    - name: rec
      kind: console
  route:
    receiver: rec
    group_by: [alertname, queue]
    group_wait: 0s
    group_interval: 5s
    repeat_interval: 1h
"""
DEAD_LETTERS = """
rules:
  - name: DeadLetters
    kind: rate
    signals: [task-dead-lettered]
    group_by: [queue]
    window: 1m
    threshold: 2
    annotations:
      summary: "{value} dead letters on {queue} in {window} (threshold {threshold})"
      runbook_url: https://runbooks.example.com/{queue}
""" + ROUTING


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def receiver() -> RecordingReceiver:
    return RecordingReceiver("rec")


@pytest.fixture
def dispatcher(clock: FakeClock, receiver: RecordingReceiver) -> Iterator[Dispatcher]:
    with Dispatcher([receiver], clock=clock, registry=CollectorRegistry()) as dispatcher:
        yield dispatcher


def engine_for(text: str, dispatcher: Dispatcher | None, clock: FakeClock,
               **options: object) -> Engine:
    return Engine(parse_rules(text), dispatcher, clock=clock, registry=CollectorRegistry(),
                  **options)  # type: ignore[arg-type]


def dead_letter(task_id: str, queue: str = "emails") -> ev.TaskDeadLettered:
    return ev.TaskDeadLettered(task_id=task_id, task_name="emails.send", queue=queue,
                               headers={"traceparent": f"00-{TRACE}-b7ad6b7169203331-01"})


def test_a_firing_alert_carries_rendered_annotations_samples_and_a_cli_hint(
    clock: FakeClock, dispatcher: Dispatcher, receiver: RecordingReceiver,
) -> None:
    engine = engine_for(DEAD_LETTERS, dispatcher, clock)
    for i in range(7):
        engine.observe(dead_letter(f"t{i}"))
    engine.observe(dead_letter("other", queue="sms"))

    [changed] = engine.evaluate()
    [notification] = receiver.wait_for(1)

    assert changed.state == "firing"
    assert changed.labels["queue"] == "emails"
    [alert] = notification.alerts
    assert alert.annotations["summary"] == "7 dead letters on emails in 1m (threshold 2)"
    assert alert.runbook_url == "https://runbooks.example.com/emails"
    assert alert.cli_hint == "stem-observe dlq list --queue emails"
    assert [s.task_id for s in alert.samples] == ["t2", "t3", "t4", "t5", "t6"]
    assert {s.trace_id for s in alert.samples} == {TRACE}
    assert (alert.value, alert.threshold) == (7, 2)
    assert notification.group_labels == {"alertname": "DeadLetters", "queue": "emails"}


def test_alerts_lists_states_as_json_with_trace_links(clock: FakeClock) -> None:
    engine = engine_for(DEAD_LETTERS, None, clock,
                        trace_url_template="https://tempo.example.com/trace/{trace_id}")
    for i in range(3):
        engine.observe(dead_letter(f"t{i}"))
    engine.evaluate()

    [state] = engine.alerts()
    data = state.to_json(engine.trace_url_template)
    assert data["state"] == "firing"
    assert data["value"] == 3
    assert data["threshold"] == 2
    assert data["samples"][0]["trace_url"] == f"https://tempo.example.com/trace/{TRACE}"

    clock.advance(120)  # the window empties: resolved, and gone without a dispatcher
    assert [s.state for s in engine.evaluate()] == ["resolved"]
    assert engine.alerts() == []


def test_poison_pill_keys_by_fingerprint_and_keeps_sample_tasks(clock: FakeClock) -> None:
    text = """
rules:
  - name: Pill
    kind: poison_pill
    signals: [task-failed]
    group_by: [task, queue]
    window: 10m
    min_count: 3
    annotations:
      summary: "{task}: {fingerprint} ({value}x, e.g. {sample_task_ids})"
"""
    engine = engine_for(text, None, clock)
    for i in range(4):
        engine.observe(ev.TaskFailed(task_id=f"id{i}", task_name="pay", queue="billing",
                                     error_type="KeyError", error_message=f"order {i}0"))
    engine.observe(ev.TaskFailed(task_id="x", task_name="pay", queue="billing",
                                 error_type="ValueError", error_message="bad"))

    [state] = engine.evaluate()
    assert state.labels["fingerprint"] == "KeyError: order <n>"
    assert state.annotations["summary"] == "pay: KeyError: order <n> (4x, e.g. id0, id1, id2, id3)"
    assert state.cli_hint == "stem-observe dlq list --queue billing"


def test_absence_fires_for_a_silent_worker_and_forgets_one_that_shut_down(
    clock: FakeClock,
) -> None:
    text = """
rules:
  - name: WorkerDown
    kind: absence
    signals: [worker-heartbeat]
    reset_on: [worker-shutdown]
    group_by: [worker, queue]
    absent_for: 1m
    forget_after: 1h
"""
    engine = engine_for(text, None, clock)
    for worker in ("w1", "w2"):
        engine.observe(ev.WorkerHeartbeat(worker_id=worker, queues=("emails", "sms")))
    engine.observe(ev.WorkerShutdown(worker_id="w2", queues=("emails", "sms")))
    clock.advance(61)

    fired = engine.evaluate()
    assert sorted((s.labels["worker"], s.labels["queue"], s.state) for s in fired) == [
        ("w1", "emails", "firing"), ("w1", "sms", "firing")]
    assert fired[0].value == pytest.approx(61)

    engine.observe(ev.WorkerHeartbeat(worker_id="w1", queues=("emails", "sms")))
    assert {s.state for s in engine.evaluate()} == {"resolved"}


def test_pending_clears_without_notification(
    clock: FakeClock, dispatcher: Dispatcher, receiver: RecordingReceiver,
) -> None:
    engine = engine_for(DEAD_LETTERS.replace("threshold: 2", "threshold: 2\n    for: 30s"),
                        dispatcher, clock)
    for i in range(3):
        engine.observe(dead_letter(f"t{i}"))
    assert [s.state for s in engine.evaluate()] == ["pending"]
    clock.advance(70)
    assert [s.state for s in engine.evaluate()] == ["inactive"]
    assert dispatcher.flush(5.0)
    assert receiver.notifications == []


def test_install_connects_one_receiver_per_needed_signal_and_uninstall_removes_it(
    clock: FakeClock,
) -> None:
    engine = engine_for(DEAD_LETTERS, None, clock)
    before = len(signals.task_dead_lettered.receivers)
    engine.install()
    engine.install()
    try:
        assert engine.signals == {"task-dead-lettered"}
        assert len(signals.task_dead_lettered.receivers) == before + 1
        for i in range(3):
            signals.emit(dead_letter(f"t{i}"))
        assert [s.state for s in engine.evaluate()] == ["firing"]
    finally:
        engine.uninstall()
    assert len(signals.task_dead_lettered.receivers) == before


def test_a_failing_evaluator_never_raises_into_the_sender(clock: FakeClock) -> None:
    registry = CollectorRegistry()
    engine = Engine(parse_rules(DEAD_LETTERS), None, clock=clock, registry=registry)

    class Broken:
        def time(self) -> float:
            raise RuntimeError("clock broke")

    engine.clock = Broken()  # type: ignore[assignment]
    engine.install()
    try:
        errors_before = signals.receiver_errors["task-dead-lettered"]
        signals.emit(dead_letter("t"))  # the engine's receiver swallows and counts it
        assert signals.receiver_errors["task-dead-lettered"] == errors_before
    finally:
        engine.uninstall()
    assert registry.get_sample_value("stem_observe_rule_errors_total",
                                     {"stage": "observe"}) == 1


def test_routing_that_names_an_unknown_receiver_is_a_config_error(clock: FakeClock) -> None:
    with Dispatcher([RecordingReceiver("other")], registry=CollectorRegistry()) as dispatcher, \
            pytest.raises(ConfigError, match=r"routing\.receivers\.rec"):
        engine_for(DEAD_LETTERS, dispatcher, clock)


def test_start_and_stop_run_the_tick_thread(clock: FakeClock) -> None:
    engine = engine_for(DEAD_LETTERS, None, clock, tick_s=0.01)
    engine.start()
    engine.start()
    engine.stop()
    assert engine._thread is None


# --------------------------------------------------------------------------- store


def test_memory_store_adds_lists_and_expires_silences(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    now = clock.time()
    silence = store.add(["alertname = Hot", 'queue =~ "emails|sms"'], ends_at=now + 60,
                        created_by="ana", comment="migration")
    assert store.list() == [silence]
    assert silence.matches({"alertname": "Hot", "queue": "sms"})
    assert not silence.matches({"alertname": "Hot", "queue": "push"})
    assert store.silences(now) == [silence]

    clock.advance(61)  # expiry by time
    assert store.silences(clock.time()) == []
    assert store.list() == []
    assert store.list(include_expired=True) == [silence]

    other = store.add(["queue = push"], ends_at=clock.time() + 60)
    assert store.expire(other.id)
    assert not store.expire(other.id)
    assert store.silences(clock.time()) == []


@pytest.mark.parametrize(("matchers", "ends_in", "message"), [
    ([], 60, "at least one matcher"),
    (["queue =~ .*"], 60, "must not match an empty label"),
    (["queue = emails"], -1, "ends_at"),
    (["queue emails"], 60, r"matchers\[0\]"),
])
def test_memory_store_rejects_invalid_silences(
    clock: FakeClock, matchers: list[str], ends_in: float, message: str,
) -> None:
    with pytest.raises(SilenceError, match=message):
        MemoryStore(clock=clock).add(matchers, ends_at=clock.time() + ends_in)
