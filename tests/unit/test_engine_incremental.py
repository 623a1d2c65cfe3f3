"""Incremental evaluation: a tick reads only what changed, and must still see every change.

The property test replays random events and ticks through an engine and, beside it, through
the public window classes read from scratch on every tick (what the engine did before it
tracked changes); the firing alerts and their values must agree after every tick. The
examples pin down the changes no event announces: events leaving a window, a spike
baseline moving at a bucket boundary, silence, events stamped after the tick, time going
back, and a tick that failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from stem_observe import events as ev
from stem_observe.notify import FakeClock
from stem_observe.rules import parse_rules
from stem_observe.rules._sources import RateSource, SpikeSource, bucket_for
from stem_observe.rules.engine import AlertState, Engine
from stem_observe.rules.model import GaugeRule, RateRule, RatioRule, SpikeRule
from stem_observe.rules.windows import CountWindows, GaugeValues

RULES = """
rules:
  - name: Retries
    kind: rate
    signals: [task-retry]
    group_by: [queue]
    window: 20s
    threshold: 2
  - name: ManyRetries
    kind: rate
    signals: [task-retry]
    group_by: [queue]
    window: 20s
    threshold: 4
  - name: Failing
    kind: ratio
    numerator: [task-failed]
    denominator: [task-failed, task-succeeded]
    group_by: [queue]
    window: 30s
    threshold: 0.5
    min_denominator: 2
  - name: Burst
    kind: spike
    signals: [task-retry]
    group_by: [queue]
    window: 10s
    baseline: 40s
    factor: 1.5
    min_count: 2
  - name: Backlog
    kind: gauge
    signal: queue-snapshot
    field: pending
    op: ">"
    threshold: 3
    group_by: [queue]
"""
QUEUES = ("a", "b", "c")
KINDS = ("retry", "failed", "succeeded", "snapshot")


def event(kind: str, queue: str, n: int) -> ev.Event:
    if kind == "retry":
        return ev.TaskRetry(task_id=f"r{n}", task_name="t", queue=queue)
    if kind == "failed":
        return ev.TaskFailed(task_id=f"f{n}", task_name="t", queue=queue)
    if kind == "succeeded":
        return ev.TaskSucceeded(task_id=f"s{n}", task_name="t", queue=queue)
    return ev.QueueSnapshot(queue=queue, pending=n % 7)


@dataclass
class Reference:
    """Every rule read from scratch with the public window classes on every tick."""

    start: float
    windows: dict[str, CountWindows] = field(default_factory=dict)
    gauges: GaugeValues = field(default_factory=GaugeValues)

    def __post_init__(self) -> None:
        for rule in parse_rules(RULES).rules:
            if isinstance(rule, RateRule | RatioRule | SpikeRule):
                self.windows[rule.name] = CountWindows(
                    span_s=rule.window_s, bucket_s=bucket_for(rule.window_s),
                    series=2 if isinstance(rule, RatioRule) else 1,
                    baseline_horizon_s=rule.baseline_s if isinstance(rule, SpikeRule) else None,
                    max_label_sets=10_000, start=self.start if isinstance(rule, SpikeRule)
                    else None)

    def observe(self, kind: str, queue: str, n: int, t: float) -> None:
        key = (queue,)
        if kind == "retry":
            for name in ("Retries", "ManyRetries", "Burst"):
                self.windows[name].add(key, t)
        elif kind in ("failed", "succeeded"):
            if kind == "failed":
                self.windows["Failing"].add(key, t, series=0)
            self.windows["Failing"].add(key, t, series=1)
        else:
            self.gauges.set(key, t, float(n % 7))

    def breaching(self, now: float) -> dict[tuple[str, str], tuple[float, float | None]]:
        found: dict[tuple[str, str], tuple[float, float | None]] = {}
        for rule in parse_rules(RULES).rules:
            if isinstance(rule, GaugeRule):
                self.gauges.expire(now)
                for key, reading in self.gauges.items():
                    if rule.breached(reading.value):
                        found[(rule.name, key[0])] = (reading.value, rule.threshold)
                continue
            windows = self.windows[rule.name]
            windows.expire(now)
            for key in windows.label_sets():
                if isinstance(rule, RateRule):
                    count = windows.count(key, now, rule.window_s)
                    if rule.breached(count):
                        found[(rule.name, key[0])] = (count, rule.threshold)
                elif isinstance(rule, RatioRule):
                    num, den = windows.ratio(key, now, rule.window_s)
                    if rule.breached(num, den):
                        found[(rule.name, key[0])] = (num / den, rule.threshold)
                elif isinstance(rule, SpikeRule):
                    count = windows.count(key, now, rule.window_s)
                    base = windows.baseline(key, now, rule.window_s)
                    if rule.breached(count, base.expected, base.history_s):
                        found[(rule.name, key[0])] = (count, rule.factor * base.expected)
        return found


def firing(states: list[AlertState]) -> dict[tuple[str, str], tuple[float, float | None]]:
    return {(s.name, s.labels["queue"]): (s.value or 0.0, s.threshold)
            for s in states if s.state == "firing"}


step = st.tuples(
    st.floats(0.0, 25.0),  # seconds to the next tick
    st.sampled_from([0.0, 0.0, 0.0, 0.0, 4.0, 15.0]),  # how far that tick goes back in time
    st.lists(st.tuples(st.sampled_from(KINDS), st.sampled_from(QUEUES),
                       st.floats(-30.0, 12.0)),  # the event's time, relative to the tick
             max_size=12),
)


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(step, min_size=1, max_size=40))
def test_incremental_ticks_agree_with_reading_every_window_from_scratch(
    steps: list[tuple[float, float, list[tuple[str, str, float]]]],
) -> None:
    clock = FakeClock()
    engine = Engine(parse_rules(RULES), None, clock=clock, registry=CollectorRegistry())
    start = clock.time()
    reference = Reference(start)
    now, n = start, 0
    for advance, back, events in steps:
        now += advance
        for kind, queue, offset in events:
            n += 1
            at = max(start, now + offset)
            engine.observe(event(kind, queue, n), at=at)
            reference.observe(kind, queue, n, at)
        tick = max(start, now - back)
        engine.evaluate(tick)
        expected = reference.breaching(tick)
        found = firing(engine.alerts())
        assert found.keys() == expected.keys(), tick - start
        for name_key, (value, threshold) in expected.items():
            assert found[name_key][0] == pytest.approx(value), name_key
            assert found[name_key][1] == pytest.approx(threshold), name_key


# --------------------------------------------------------------------------- examples


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_000.0, wall_start=1_000.0)  # bucket edges on whole seconds


def engine_for(text: str, clock: FakeClock) -> Engine:
    return Engine(parse_rules(text), None, clock=clock, registry=CollectorRegistry())


def retries(engine: Engine, count: int, queue: str = "emails", *,
            at: float | None = None) -> None:
    for i in range(count):
        engine.observe(ev.TaskRetry(task_id=f"{queue}{i}", task_name="t", queue=queue), at=at)


RATE = """
rules:
  - name: Retries
    kind: rate
    signals: [task-retry]
    group_by: [queue]
    window: 30s
    threshold: 4
"""


def value_of(engine: Engine, name: str) -> float | None:
    found = [s.value for s in engine.alerts() if s.name == name]
    return found[0] if found else None


def test_a_count_that_changes_only_as_its_events_leave_the_window(clock: FakeClock) -> None:
    engine = engine_for(RATE, clock)
    retries(engine, 3)
    clock.advance(10)
    retries(engine, 3)
    clock.advance(1)
    assert [s.state for s in engine.evaluate()] == ["firing"]
    assert value_of(engine, "Retries") == 6
    # no event from here on: each change is a bucket leaving the 30 s window
    clock.advance(18)  # t = +29: all six still in the window
    assert engine.evaluate() == []
    clock.advance(1)  # t = +30: the first three left; 3 is not above 4
    [resolved] = engine.evaluate()
    assert (resolved.state, resolved.value) == ("resolved", 6)  # the last breached reading


def test_the_value_shown_follows_events_leaving_the_window(clock: FakeClock) -> None:
    engine = engine_for(RATE, clock)
    retries(engine, 4)
    clock.advance(10)
    retries(engine, 4)
    clock.advance(1)
    engine.evaluate()
    assert value_of(engine, "Retries") == 8
    clock.advance(19)  # the first four left; four remain, so it resolves
    assert [s.state for s in engine.evaluate()] == ["resolved"]
    retries(engine, 3)  # four + three, read on the next tick
    assert [s.state for s in engine.evaluate()] == ["firing"]
    assert value_of(engine, "Retries") == 7


SPIKE = """
rules:
  - name: Burst
    kind: spike
    signals: [task-retry]
    group_by: [queue]
    window: 10s
    baseline: 60s
    factor: 2
    min_count: 3
"""


def test_a_spike_begins_when_its_baseline_decays_at_a_bucket_boundary(
    clock: FakeClock,
) -> None:
    """Five retries after a quiet spell are no spike at first; as each bucket boundary
    folds another quiet second into the baseline it falls, and eight seconds later they
    are one — while no event arrives and no bucket with events leaves the window."""
    engine = engine_for(SPIKE, clock)
    start = clock.time()
    for second in range(60):  # one retry a second for a minute: the baseline
        retries(engine, 1, at=start + second)
    retries(engine, 5, at=start + 98)
    [source] = list(engine._sources)
    assert isinstance(source, SpikeSource)
    fired: list[int] = []
    for second in range(98, 108):
        changed = engine.evaluate(start + second + 0.5)
        if second > 98:
            assert source.changed == set()  # the window's counts did not change
        fired += [second for s in changed if s.state == "firing"]
    assert fired == [106]
    [state] = engine.alerts()
    assert state.value == 5
    assert state.baseline is not None
    assert 2 * state.baseline < 5


ABSENCE = """
rules:
  - name: WorkerDown
    kind: absence
    signals: [worker-heartbeat]
    group_by: [worker]
    absent_for: 30s
"""


def test_an_absence_fires_on_ticks_with_no_events_at_all(clock: FakeClock) -> None:
    engine = engine_for(ABSENCE, clock)
    engine.observe(ev.WorkerHeartbeat(worker_id="w1"))
    for _ in range(6):  # 5 s ticks, nothing arrives
        clock.advance(5)
        assert engine.evaluate() == []
    clock.advance(1)  # 31 s of silence
    [fired] = engine.evaluate()
    assert (fired.state, fired.labels["worker"], fired.value) == ("firing", "w1", 31)
    clock.advance(5)
    assert engine.evaluate() == []
    assert value_of(engine, "WorkerDown") == 36  # the silence keeps growing on its own


GAUGE = """
rules:
  - name: Backlog
    kind: gauge
    signal: queue-snapshot
    field: pending
    threshold: 10
    group_by: [queue]
  - name: HugeBacklog
    kind: gauge
    signal: queue-snapshot
    field: pending
    threshold: 100
    group_by: [queue]
"""


def test_gauge_rules_follow_each_reading_and_forget_a_silent_queue(clock: FakeClock) -> None:
    engine = engine_for(GAUGE, clock)
    engine.observe(ev.QueueSnapshot(queue="emails", pending=50))
    assert [(s.name, s.state) for s in engine.evaluate()] == [("Backlog", "firing")]
    engine.observe(ev.QueueSnapshot(queue="emails", pending=50))  # the same reading again
    assert engine.evaluate() == []
    engine.observe(ev.QueueSnapshot(queue="emails", pending=500))
    assert [(s.name, s.state) for s in engine.evaluate()] == [("HugeBacklog", "firing")]
    assert value_of(engine, "Backlog") == 500  # a new reading of a firing alert is shown
    engine.observe(ev.QueueSnapshot(queue="emails", pending=20))
    assert [(s.name, s.state) for s in engine.evaluate()] == [("HugeBacklog", "resolved")]
    clock.advance(899)
    assert engine.evaluate() == []
    clock.advance(1)  # no reading for 15 minutes: the queue is forgotten, the alert resolves
    assert [(s.name, s.state) for s in engine.evaluate()] == [("Backlog", "resolved")]


def test_events_stamped_after_a_tick_count_on_a_later_tick_without_new_events(
    clock: FakeClock,
) -> None:
    engine = engine_for(RATE, clock)
    now = clock.time()
    retries(engine, 5, at=now + 3)  # received "after" the tick about to run
    assert engine.evaluate(now) == []
    assert [s.state for s in engine.evaluate(now + 3)] == ["firing"]


def test_a_tick_back_in_time_reads_every_window_again(clock: FakeClock) -> None:
    engine = engine_for(RATE, clock)
    now = clock.time()
    retries(engine, 5, at=now)
    retries(engine, 1, at=now + 20)
    assert [s.state for s in engine.evaluate(now + 35)] == []  # the five left the window
    assert [s.state for s in engine.evaluate(now + 1)] == ["firing"]
    assert [s.state for s in engine.evaluate(now + 35)] == ["resolved"]


def test_a_tick_that_failed_to_read_a_window_misses_no_change(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = CollectorRegistry()
    engine = Engine(parse_rules(RATE), None, clock=clock, registry=registry)
    retries(engine, 5, queue="emails")
    [source] = list(engine._sources)
    assert isinstance(source, RateSource)

    def broken(counts: object) -> bool:
        raise RuntimeError("reading failed")

    monkeypatch.setattr(source, "_could_breach", broken)
    assert engine.evaluate() == []
    assert registry.get_sample_value("stem_observe_rule_errors_total",
                                     {"stage": "evaluate"}) == 1
    monkeypatch.undo()
    retries(engine, 5, queue="sms")
    clock.advance(1)
    assert sorted(s.labels["queue"] for s in engine.evaluate()) == ["emails", "sms"]


def test_a_rule_that_failed_a_tick_reads_its_whole_window_on_the_next(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = engine_for(RATE, clock)
    evaluator = engine._rules["Retries"].evaluator
    retries(engine, 5, queue="emails")

    def broken(counts: object) -> bool:
        raise RuntimeError("rule failed")

    monkeypatch.setattr(evaluator, "_breached", broken)
    assert engine.evaluate() == []  # the window's change for emails was read, the rule failed
    monkeypatch.undo()
    retries(engine, 5, queue="sms")
    clock.advance(1)
    assert sorted(s.labels["queue"] for s in engine.evaluate()) == ["emails", "sms"]


def test_rules_over_the_same_signal_grouping_and_window_share_one_window(
    clock: FakeClock,
) -> None:
    text = RATE + """
  - name: ManyRetries
    kind: rate
    signals: [task-retry]
    group_by: [queue]
    window: 30s
    threshold: 9
  - name: RetriesByTask
    kind: rate
    signals: [task-retry]
    group_by: [task, queue]
    window: 30s
    threshold: 4
"""
    engine = engine_for(text, clock)
    assert len(engine._sources) == 2  # by queue (two rules), by task and queue
    retries(engine, 6)
    assert sorted(s.name for s in engine.evaluate()) == ["Retries", "RetriesByTask"]
    retries(engine, 4)
    assert [s.name for s in engine.evaluate()] == ["ManyRetries"]
    assert value_of(engine, "Retries") == value_of(engine, "ManyRetries") == 10


def test_a_tick_reads_only_the_label_sets_that_changed(clock: FakeClock) -> None:
    engine = engine_for(RATE, clock)
    for q in range(50):
        retries(engine, 1, queue=f"q{q}")
    [source] = list(engine._sources)
    assert isinstance(source, RateSource)
    engine.evaluate()
    assert len(source.changed) == 50
    clock.advance(5)
    retries(engine, 5, queue="q7")
    assert [s.labels["queue"] for s in engine.evaluate()] == ["q7"]
    assert source.changed == {("q7",)}
    clock.advance(5)
    assert engine.evaluate() == []
    assert source.changed == set()
