"""Property tests of the alert state machine, grouping, inhibition and silences.

Each example runs a real :class:`Engine` and :class:`Dispatcher` on a fake clock. Breaches
are driven through a gauge rule (``pending > 0``): a ``queue-snapshot`` with ``pending=1``
before a tick breaches, ``pending=0`` clears. Ticks are ``TICK`` seconds apart.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from stem_observe import events as ev
from stem_observe.notify import Dispatcher, FakeClock, RecordingReceiver
from stem_observe.rules import parse_rules
from stem_observe.rules.engine import AlertState, Engine
from stem_observe.rules.store import MemoryStore

TICK = 5.0
PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def gauge_rule(name: str, field_name: str, *, for_ticks: int = 0, keep_ticks: int = 0) -> str:
    return f"""
  - name: {name}
    kind: gauge
    signal: queue-snapshot
    field: {field_name}
    op: ">"
    threshold: 0
    group_by: [queue]
    for: {int(for_ticks * TICK)}s
    keep_firing_for: {int(keep_ticks * TICK)}s
"""


def rules_text(rules: str, *, group_wait_ticks: int = 0, inhibit: str = "") -> str:
    return f"""
rules:{rules}
routing:
  receivers:
    - name: rec
      kind: console
  route:
    receiver: rec
    group_by: [alertname, queue]
    group_wait: {int(group_wait_ticks * TICK)}s
    group_interval: {int(TICK)}s
    repeat_interval: 24h
    send_resolved: true
{inhibit}
"""


@dataclass
class Run:
    engine: Engine
    clock: FakeClock
    dispatcher: Dispatcher
    receiver: RecordingReceiver
    store: MemoryStore
    transitions: list[list[AlertState]] = field(default_factory=list)
    sent: list[list[tuple[str, str]]] = field(default_factory=list)
    """Per tick: (alertname, status) of every alert in the notifications of that tick."""
    firing: list[set[str]] = field(default_factory=list)
    """Per tick: the alert names firing after the tick."""

    def tick(self, *, pending: bool, inflight: bool = False) -> None:
        self.clock.advance(TICK)
        self.engine.observe(ev.QueueSnapshot(queue="q", pending=int(pending),
                                             inflight=int(inflight)))
        self.transitions.append(self.engine.evaluate())
        assert self.dispatcher.flush(5.0)
        before = sum(len(s) for s in self.sent)
        alerts: list[tuple[str, str]] = [
            (a.name, a.status) for n in self.receiver.notifications for a in n.alerts]
        self.sent.append(alerts[before:])
        self.firing.append({s.name for s in self.engine.alerts() if s.state == "firing"})


@contextmanager
def running(text: str) -> Iterator[Run]:
    clock = FakeClock()
    receiver = RecordingReceiver("rec")
    store = MemoryStore(clock=clock)
    dispatcher = Dispatcher([receiver], clock=clock, registry=CollectorRegistry())
    dispatcher.start()
    engine = Engine(parse_rules(text), dispatcher, clock=clock, registry=CollectorRegistry(),
                    tick_s=TICK, store=store)
    try:
        yield Run(engine, clock, dispatcher, receiver, store)
    finally:
        dispatcher.close()


def states(transitions: Sequence[AlertState], name: str) -> list[str]:
    return [s.state for s in transitions if s.name == name]


breach_runs = st.lists(st.booleans(), min_size=1, max_size=40)


@PROPERTY
@given(breaches=breach_runs, for_ticks=st.integers(0, 4), keep_ticks=st.integers(0, 4))
def test_state_machine_debounces_and_notifies_once_per_transition(
    breaches: list[bool], for_ticks: int, keep_ticks: int,
) -> None:
    text = rules_text(gauge_rule("Hot", "pending", for_ticks=for_ticks, keep_ticks=keep_ticks))
    with running(text) as run:
        for breached in breaches:
            run.tick(pending=breached)

    for i, changed in enumerate(run.transitions):
        seen = states(changed, "Hot")
        if "firing" in seen:  # no firing without a breach lasting `for`
            assert i >= for_ticks
            assert all(breaches[i - for_ticks:i + 1])
        if "resolved" in seen:  # no resolve without recovery lasting `keep_firing_for`
            assert i >= keep_ticks
            assert not any(breaches[i - keep_ticks:i + 1])
        # and the converse: a long enough breach fires, a long enough recovery resolves
        if i >= for_ticks and all(breaches[i - for_ticks:i + 1]):
            assert "Hot" in run.firing[i]
        if i >= keep_ticks and not any(breaches[i - keep_ticks:i + 1]):
            assert "Hot" not in run.firing[i]
        # exactly one notification per transition, in the tick of the transition
        expected = [("Hot", s) for s in seen if s in ("firing", "resolved")]
        assert run.sent[i] == expected


@PROPERTY
@given(breaches=breach_runs, wait_ticks=st.integers(1, 4))
def test_nothing_is_sent_for_a_group_resolved_within_group_wait(
    breaches: list[bool], wait_ticks: int,
) -> None:
    with running(rules_text(gauge_rule("Hot", "pending"), group_wait_ticks=wait_ticks)) as run:
        for breached in breaches:
            run.tick(pending=breached)

    # The model: a group opens when the alert fires and none is open, first flushes
    # group_wait later, then every tick (group_interval) until a flush leaves it empty.
    expected: list[list[tuple[str, str]]] = [[] for _ in breaches]
    due: int | None = None
    told_firing = False
    for i, firing in enumerate(breaches):
        if firing and due is None:
            due = i + wait_ticks
        if due is None or i < due:
            continue
        if firing and not told_firing:
            expected[i].append(("Hot", "firing"))
        elif not firing and told_firing:
            expected[i].append(("Hot", "resolved"))
        told_firing = firing
        due = i + 1 if firing else None
    assert run.sent == expected
    first = breaches.index(True) if True in breaches else None
    flush = None if first is None else first + wait_ticks
    if flush is not None and flush < len(breaches) and not breaches[flush]:
        # the first group resolved within group_wait: nothing at all was sent for it
        assert all(tick == [] for tick in run.sent[:flush + 1])


INHIBIT = """  inhibit:
    - source_matchers: ['alertname = Down']
      target_matchers: ['alertname = Hot']
      equal: [queue]
"""


def last_word(sent: list[list[tuple[str, str]]], name: str, upto: int) -> str | None:
    words = [status for tick in sent[:upto + 1] for n, status in tick if n == name]
    return words[-1] if words else None


@PROPERTY
@given(breaches=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=40))
def test_an_inhibited_alert_is_not_sent_while_its_source_fires(
    breaches: list[tuple[bool, bool]],
) -> None:
    text = rules_text(gauge_rule("Hot", "pending") + gauge_rule("Down", "inflight"),
                      inhibit=INHIBIT)
    with running(text) as run:
        for target, source in breaches:
            run.tick(pending=target, inflight=source)

    for i, firing in enumerate(run.firing):
        if "Down" in firing:
            assert ("Hot", "firing") not in run.sent[i]
        elif "Hot" in firing:  # not inhibited: the receiver's last word is "firing"
            assert last_word(run.sent, "Hot", i) == "firing"


@PROPERTY
@given(breaches=breach_runs, ends_after=st.integers(1, 30))
def test_a_silenced_alert_is_not_sent_until_the_silence_expires(
    breaches: list[bool], ends_after: int,
) -> None:
    with running(rules_text(gauge_rule("Hot", "pending"))) as run:
        start = run.clock.time()
        run.store.add(["alertname = Hot"], ends_at=start + ends_after * TICK, created_by="test")
        for breached in breaches:
            run.tick(pending=breached)

    for i, firing in enumerate(run.firing):
        now_tick = i + 1  # tick i runs at start + (i + 1) * TICK
        if now_tick < ends_after:
            assert run.sent[i] == []
        elif "Hot" in firing:
            assert last_word(run.sent, "Hot", i) == "firing"
