"""The engine through the real signal bus: events sent with ``stem_observe.emit`` fire and
resolve the shipped ``RetrySpike`` rule into a receiver, and the tick thread delivers to a
real local HTTP webhook."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import stem_observe
from stem_observe import events as ev
from stem_observe.notify import (
    Dispatcher,
    FakeClock,
    Notification,
    RecordingReceiver,
    WebhookReceiver,
)
from stem_observe.rules import load_rules, parse_rules
from stem_observe.rules.engine import Engine
from tests.support.recording_server import RecordingServer
from tests.support.wait import wait_for

DEFAULT_RULES = Path(__file__).resolve().parents[2] / "alerts" / "rules" / "default.yml"
TICK = 5.0


def retry(i: int, queue: str = "emails") -> ev.TaskRetry:
    return ev.TaskRetry(task_id=f"task-{i}", task_name="emails.send", queue=queue,
                        error_type="TimeoutError", error_message="smtp timeout")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def console() -> RecordingReceiver:
    return RecordingReceiver("console")  # the receiver default.yml routes to


@pytest.fixture
def engine(clock: FakeClock, console: RecordingReceiver) -> Iterator[Engine]:
    dispatcher = Dispatcher([console], clock=clock, registry=CollectorRegistry())
    dispatcher.start()
    engine = Engine(load_rules(DEFAULT_RULES), dispatcher, clock=clock,
                    registry=CollectorRegistry(), tick_s=TICK)
    engine.install()
    try:
        yield engine
    finally:
        engine.uninstall()
        dispatcher.close()


def test_a_retry_spike_from_the_default_rules_fires_once_then_resolves(
    engine: Engine, clock: FakeClock, console: RecordingReceiver,
) -> None:
    sent = 0
    states: list[tuple[float, str]] = []
    start = clock.time()

    def run(seconds: float, retries_per_tick: float) -> None:
        nonlocal sent
        owed = 0.0
        for _ in range(int(seconds / TICK)):
            clock.advance(TICK)
            owed += retries_per_tick
            while owed >= 1:
                stem_observe.emit(retry(sent))  # through the real bus
                sent += 1
                owed -= 1
            for state in engine.evaluate():
                if state.name == "RetrySpike":
                    states.append((clock.time() - start, state.state))
            assert engine.dispatcher is not None
            assert engine.dispatcher.flush(5.0)

    def spikes() -> list[Notification]:  # the same error also trips PoisonPill: not ours
        return [n for n in console.notifications if n.alerts[0].name == "RetrySpike"]

    run(20 * 60, 1 / 6)  # 20 minutes of baseline: one retry every 30 s
    assert states == []
    assert spikes() == []

    run(4 * 60, 20)  # a spike: 240 retries a minute
    [notification] = spikes()
    [alert] = notification.alerts
    assert alert.name == "RetrySpike"
    assert alert.firing
    assert alert.labels["queue"] == "emails"
    assert alert.baseline is not None
    assert alert.value is not None
    assert alert.value > 3 * alert.baseline
    assert "Retries spiking on queue emails" in alert.annotations["summary"]
    assert len(alert.samples) == 5
    pending_at, fired_at = states[0][0], states[1][0]
    assert [s for _, s in states] == ["pending", "firing"]
    assert fired_at - pending_at >= 120  # for: 2m

    run(20 * 60, 0)  # quiet again: the window empties, keep_firing_for passes
    assert [n.status for n in spikes()] == ["firing", "resolved"]
    assert [s for _, s in states] == ["pending", "firing", "resolved"]
    assert states[2][0] - 24 * 60 >= 5 * 60  # keep_firing_for past the last retry
    assert [s.name for s in engine.alerts()] == ["PoisonPill"]


def test_the_tick_thread_delivers_a_crossing_to_a_real_webhook() -> None:
    text = """
rules:
  - name: Retries
    kind: rate
    signals: [task-retry]
    group_by: [queue]
    window: 3s
    threshold: 2
routing:
  receivers:
    - name: hook
      kind: webhook
      url_env: HOOK_URL
  route:
    receiver: hook
    group_by: [alertname, queue]
    group_wait: 0s
    group_interval: 100ms
    repeat_interval: 1h
"""
    with RecordingServer() as server:
        hook = WebhookReceiver("hook", url=server.url + "/alerts", timeout_s=5.0)
        registry = CollectorRegistry()
        with Dispatcher([hook], registry=CollectorRegistry()) as dispatcher, \
                Engine(parse_rules(text), dispatcher, registry=registry,
                       tick_s=0.05) as engine:
            for i in range(3):
                stem_observe.emit(retry(i, queue="sms"))
            wait_for(lambda: len(server.received()) >= 2, timeout_s=10.0,
                     message="firing and resolved webhooks")
            assert engine.alerts() == []
    for stage in ("observe", "evaluate", "store", "dispatch"):
        assert registry.get_sample_value("stem_observe_rule_errors_total",
                                         {"stage": stage}) == 0
    bodies = [json.loads(r.body) for r in server.received()]
    assert [b["status"] for b in bodies] == ["firing", "resolved"]
    assert bodies[0]["alerts"][0]["labels"] == {"alertname": "Retries", "queue": "sms",
                                                "severity": "warning"}
