"""Alert states saved by one engine and restored by the next (a restart, or a second
instance sharing the store), with the in-process :class:`MemoryStore`.

Each "process" is an engine and a dispatcher on a fake clock; two of them share the store
and, like two ``serve`` instances on one Redis, the notification log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from stem_observe import events as ev
from stem_observe.notify import Dispatcher, FakeClock, RecordingReceiver
from stem_observe.notify.dispatch import MemoryNotificationLog
from stem_observe.rules import parse_rules
from stem_observe.rules.engine import AlertState, Engine
from stem_observe.rules.store import MemoryStore

TICK = 5.0
ROUTING = """
routing:
  receivers:
    - name: rec
      kind: console
  route:
    receiver: rec
    group_by: [alertname, queue]
    group_wait: {wait}
    group_interval: {interval}
    repeat_interval: 1h
    send_resolved: true
"""
BACKLOG = """
rules:
  - name: Backlog
    kind: gauge
    signal: queue-snapshot
    field: pending
    threshold: 10
    group_by: [queue]
    for: 20s
    keep_firing_for: 10s
    annotations:
      summary: "{value} waiting on {queue}"
"""
RETRIES = """
rules:
  - name: Retries
    kind: rate
    signals: [task-retry]
    group_by: [queue]
    window: 1m
    threshold: 4
"""


@dataclass
class Process:
    """One engine with its dispatcher and receiver."""

    engine: Engine
    dispatcher: Dispatcher
    receiver: RecordingReceiver
    registry: CollectorRegistry

    def sent(self) -> list[tuple[str, str, float]]:
        """(reason, status, starts_at) of every alert notified so far."""
        assert self.dispatcher.flush(5.0)
        return [(n.reason, a.status, a.starts_at)
                for n in self.receiver.notifications for a in n.alerts]


@dataclass
class World:
    clock: FakeClock
    store: MemoryStore
    log: MemoryNotificationLog

    @contextmanager
    def process(self, rules: str, *, wait: str = "0s", interval: str = "5s",
                ) -> Iterator[Process]:
        receiver = RecordingReceiver("rec")
        registry = CollectorRegistry()
        dispatcher = Dispatcher([receiver], clock=self.clock, registry=registry, log=self.log)
        dispatcher.start()
        try:
            text = rules + ROUTING.format(wait=wait, interval=interval)
            engine = Engine(parse_rules(text), dispatcher, clock=self.clock,
                            registry=registry, tick_s=TICK, store=self.store)
            yield Process(engine, dispatcher, receiver, registry)
        finally:
            dispatcher.close()

    def tick(self, engine: Engine, *, pending: int | None = None) -> list[AlertState]:
        self.clock.advance(TICK)
        if pending is not None:
            engine.observe(ev.QueueSnapshot(queue="emails", pending=pending))
        return engine.evaluate()


@pytest.fixture
def world() -> World:
    clock = FakeClock()
    return World(clock, MemoryStore(clock=clock), MemoryNotificationLog())


def states(changed: list[AlertState]) -> list[str]:
    return [s.state for s in changed]


def fire_backlog(world: World, engine: Engine) -> AlertState:
    """Breach from the next tick on until the alert fires (``for: 20s``)."""
    for _ in range(5):
        world.tick(engine, pending=50)
    [state] = engine.alerts()
    assert state.state == "firing"
    return state


def test_a_firing_alert_comes_back_with_its_times_and_is_not_notified_again(
    world: World,
) -> None:
    with world.process(BACKLOG) as first:
        before = fire_backlog(world, first.engine)
        assert first.sent() == [("first", "firing", before.fired_at)]

    with world.process(BACKLOG) as second:
        [restored] = second.engine.alerts()  # before any tick
        assert restored.state == "firing"
        assert (restored.active_at, restored.fired_at, restored.since) == (
            before.active_at, before.fired_at, before.since)
        assert restored.annotations == {"summary": "50 waiting on emails"}
        assert second.engine.restored == {"restored": 1}
        for _ in range(6):  # still breaching, across several group intervals
            assert world.tick(second.engine, pending=60) == []
        assert second.sent() == []  # not notified again as a new incident
        [still] = second.engine.alerts()
        assert (still.fired_at, still.value) == (before.fired_at, 60)

        assert world.tick(second.engine, pending=0) == []  # clear: keep_firing_for 10 s
        assert world.tick(second.engine, pending=0) == []
        assert states(world.tick(second.engine, pending=0)) == ["resolved"]
        assert second.sent() == [("resolved", "resolved", before.fired_at)]
        assert second.engine.alerts() == []


def test_a_for_timer_continues_across_a_restart(world: World) -> None:
    with world.process(BACKLOG) as first:
        assert states(world.tick(first.engine, pending=50)) == ["pending"]
        world.tick(first.engine, pending=50)
        [pending] = first.engine.alerts()
        assert world.clock.time() - pending.active_at == TICK

    with world.process(BACKLOG) as second:
        assert [s.state for s in second.engine.alerts()] == ["pending"]
        assert world.tick(second.engine, pending=50) == []
        assert world.tick(second.engine, pending=50) == []
        [fired] = world.tick(second.engine, pending=50)  # 20 s after the breach began
        assert fired.state == "firing"
        assert fired.active_at == pending.active_at
        assert fired.fired_at == pending.active_at + 20
        assert second.sent() == [("first", "firing", fired.fired_at)]


def test_a_restored_pending_alert_that_cleared_goes_inactive_and_sends_nothing(
    world: World,
) -> None:
    with world.process(BACKLOG) as first:
        world.tick(first.engine, pending=50)

    with world.process(BACKLOG) as second:
        assert states(world.tick(second.engine, pending=0)) == ["inactive"]
        assert second.engine.alerts() == []
        assert second.sent() == []


def test_a_restored_rate_alert_is_held_until_its_window_has_filled_again(
    world: World,
) -> None:
    """A rate rule's window starts empty: a reading of nothing proves nothing until a
    whole window has passed since the restart; then the alert resolves."""
    with world.process(RETRIES) as first:
        for i in range(6):
            first.engine.observe(ev.TaskRetry(task_id=f"r{i}", task_name="t", queue="emails"))
        assert states(world.tick(first.engine)) == ["firing"]
        assert len(first.sent()) == 1

    with world.process(RETRIES) as second:
        for _ in range(11):  # 55 s without a retry: the window is not full yet
            assert world.tick(second.engine) == []
        assert [s.state for s in second.engine.alerts()] == ["firing"]
        assert states(world.tick(second.engine)) == ["resolved"]  # 60 s: it can tell
        assert [r for r, _, _ in second.sent()] == ["resolved"]


def test_a_restored_rate_alert_that_still_breaches_carries_on(world: World) -> None:
    with world.process(RETRIES) as first:
        for i in range(6):
            first.engine.observe(ev.TaskRetry(task_id=f"a{i}", task_name="t", queue="emails"))
        [fired] = world.tick(first.engine)

    with world.process(RETRIES) as second:
        for i in range(6):
            second.engine.observe(ev.TaskRetry(task_id=f"b{i}", task_name="t",
                                               queue="emails"))
        assert world.tick(second.engine) == []
        [state] = second.engine.alerts()
        assert (state.state, state.fired_at, state.value) == ("firing", fired.fired_at, 6)
        for _ in range(20):  # the retries leave the window: resolves as usual
            world.tick(second.engine)
        assert second.engine.alerts() == []
        assert [r for r, _, _ in second.sent()] == ["resolved"]


def test_an_alert_that_fired_within_group_wait_is_notified_once_when_it_was_due(
    world: World,
) -> None:
    """The first instance stopped before the group's first flush: the next one flushes
    group_wait after the alert fired, not group_wait after it started."""
    with world.process(BACKLOG, wait="30s") as first:
        fired = fire_backlog(world, first.engine)
        assert fired.fired_at is not None
        assert first.sent() == []

    world.clock.advance(10)  # the restart takes a while
    with world.process(BACKLOG, wait="30s") as second:
        sent_at: list[float] = []
        for _ in range(10):
            world.tick(second.engine, pending=50)
            if second.sent() and not sent_at:
                sent_at.append(world.clock.time())
        assert sent_at == [fired.fired_at + 30]
        assert second.sent() == [("first", "firing", fired.fired_at)]


def test_a_resolved_alert_not_yet_notified_is_notified_after_the_restart(
    world: World,
) -> None:
    text = BACKLOG.replace("keep_firing_for: 10s", "keep_firing_for: 0s")
    with world.process(text, interval="60s") as first:
        fired = fire_backlog(world, first.engine)
        # resolved, and stopped before the group's next flush a minute later
        assert states(world.tick(first.engine, pending=0)) == ["resolved"]
        assert first.sent() == [("first", "firing", fired.fired_at)]
        assert [s.state for s in first.engine.alerts()] == ["resolved"]

    with world.process(text, interval="60s") as second:
        assert [s.state for s in second.engine.alerts()] == ["resolved"]
        world.tick(second.engine)
        assert second.sent() == [("resolved", "resolved", fired.fired_at)]
        assert second.engine.alerts() == []


def test_a_second_instance_joining_lists_the_first_ones_alerts_at_once(
    world: World,
) -> None:
    with world.process(BACKLOG) as first, world.process(BACKLOG) as early:
        assert early.engine.alerts() == []
        fired = fire_backlog(world, first.engine)
        assert len(first.sent()) == 1  # delivered, and in the shared log
        with world.process(BACKLOG) as joining:
            assert joining.engine.alerts() == [fired]
            for _ in range(3):  # both see the same snapshots
                world.clock.advance(TICK)
                for process in (first, joining):
                    process.engine.observe(ev.QueueSnapshot(queue="emails", pending=50))
                    assert process.engine.evaluate() == []
            assert joining.sent() == []
        assert len(first.sent()) == 1


ABSENCE = """
rules:
  - name: WorkerDown
    kind: absence
    signals: [worker-heartbeat]
    group_by: [worker]
    absent_for: 30s
"""


def test_a_restored_absence_alert_keeps_firing_while_the_silence_goes_on(
    world: World,
) -> None:
    with world.process(ABSENCE) as first:
        first.engine.observe(ev.WorkerHeartbeat(worker_id="w1"))
        fired = [s for _ in range(8) for s in world.tick(first.engine)]
        assert states(fired) == ["firing"]

    with world.process(ABSENCE) as second:
        for _ in range(3):
            assert world.tick(second.engine) == []
        [state] = second.engine.alerts()
        assert (state.state, state.fired_at) == ("firing", fired[0].fired_at)
        assert state.value is not None
        assert state.value > 30
        assert second.sent() == []
        second.engine.observe(ev.WorkerHeartbeat(worker_id="w1"))
        assert states(world.tick(second.engine)) == ["resolved"]


def test_states_of_rules_that_are_gone_or_with_bad_labels_are_skipped_and_counted(
    world: World, caplog: pytest.LogCaptureFixture,
) -> None:
    good = AlertState(name="Backlog", labels={"alertname": "Backlog", "queue": "emails",
                                              "severity": "warning"},
                      state="firing", since=1.0, active_at=0.5, fired_at=1.0, value=50.0)
    bad: list[AlertState] = [
        AlertState(name="Removed", labels={"queue": "emails"}, state="firing", since=1.0,
                   active_at=0.5, fired_at=1.0),
        AlertState(name="Backlog", labels={"alertname": "Backlog"}, state="firing",
                   since=1.0, active_at=0.5, fired_at=1.0),  # no queue label
        AlertState(name="Backlog", labels=["queue", "sms"], state="firing",  # type: ignore[arg-type]
                   since=1.0, active_at=0.5, fired_at=1.0),
        AlertState(name="Backlog", labels={"queue": 7}, state="firing",  # type: ignore[dict-item]
                   since=1.0, active_at=0.5, fired_at=1.0),
        AlertState(name="Backlog", labels={"alertname": "Other", "queue": "push"},
                   state="firing", since=1.0, active_at=0.5, fired_at=1.0),
        AlertState(name="Backlog", labels={"queue": "sms"}, state="exploded",  # type: ignore[arg-type]
                   since=1.0, active_at=0.5),
        AlertState(name="Backlog", labels={"queue": "sms"}, state="firing", since=1.0,
                   active_at=float("nan"), fired_at=1.0),
        AlertState(name="Backlog", labels={"queue": "sms"}, state="firing", since=1.0,
                   active_at=0.5),  # firing without fired_at
        AlertState(name="Backlog", labels={"queue": "sms"}, state="firing", since=1.0,
                   active_at=0.5, fired_at=1.0, samples=5),  # type: ignore[arg-type]
        AlertState(name="Backlog", labels={"queue": "emails"}, state="pending", since=2.0,
                   active_at=2.0),  # a second state for the same alert
    ]
    world.store.save_states([good, *bad])
    with caplog.at_level(logging.WARNING, logger="stem_observe.rules.engine"), \
            world.process(BACKLOG) as process:
        assert process.engine.restored == {"restored": 1, "unknown_rule": 1, "malformed": 8,
                                           "duplicate": 1}
        [restored] = process.engine.alerts()
        assert (restored.labels["queue"], restored.fired_at) == ("emails", 1.0)
        metric = "stem_observe_alert_states_restored_total"
        assert process.registry.get_sample_value(metric, {"outcome": "malformed"}) == 8
        assert process.registry.get_sample_value(metric, {"outcome": "unknown_rule"}) == 1
    [message] = [r.getMessage() for r in caplog.records]
    assert message == ("restored 1 saved alert states; skipped 1 duplicate, 8 malformed, "
                       "1 unknown rule")


def test_a_store_that_fails_to_load_leaves_the_engine_starting_empty(
    world: World, caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(MemoryStore):
        def load_states(self) -> list[AlertState]:
            raise OSError("disk gone")

    registry = CollectorRegistry()
    with caplog.at_level(logging.ERROR, logger="stem_observe.rules.engine"):
        engine = Engine(parse_rules(BACKLOG), None, clock=world.clock, registry=registry,
                        store=Broken(clock=world.clock))
    assert engine.alerts() == []
    assert engine.restored == {}
    assert registry.get_sample_value("stem_observe_rule_errors_total", {"stage": "store"}) == 1
    assert "loading saved alert states failed" in caplog.text


def test_without_a_dispatcher_restored_states_are_listed_and_resolved_ones_dropped(
    world: World,
) -> None:
    world.store.save_states([
        AlertState(name="Backlog", labels={"queue": "emails"}, state="firing", since=1.0,
                   active_at=0.5, fired_at=1.0),
        AlertState(name="Backlog", labels={"queue": "sms"}, state="resolved", since=3.0,
                   active_at=0.5, fired_at=1.0, resolved_at=3.0),
    ])
    engine = Engine(parse_rules(BACKLOG), None, clock=world.clock,
                    registry=CollectorRegistry(), store=world.store)
    assert [(s.labels["queue"], s.state) for s in engine.alerts()] == [("emails", "firing")]
