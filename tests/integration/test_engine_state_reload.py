"""Alert states restored from a real ``redis-server`` (:class:`RedisStore`): after a
restart, and by a second instance joining one that runs; and, end to end, a ``serve
--state-redis`` restarted while its alert fires."""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry

from stem_observe import events as ev
from stem_observe.notify import Dispatcher, FakeClock, RecordingReceiver
from stem_observe.notify.dispatch import MemoryNotificationLog
from stem_observe.rules import parse_rules
from stem_observe.rules.engine import AlertState, Engine
from stem_observe.rules.redis_store import RedisStore, state_to_json
from stem_observe.sources.stem.simulator import StemSimulator
from tests.support.process import Running, ready
from tests.support.recording_server import RecordingServer
from tests.support.wait import wait_for

TICK = 5.0
RULES = """
rules:
  - name: Backlog
    kind: gauge
    signal: queue-snapshot
    field: pending
    threshold: 10
    group_by: [queue]
    for: 10s
    keep_firing_for: 10s
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
    send_resolved: true
"""


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)


@dataclass
class Process:
    engine: Engine
    dispatcher: Dispatcher
    receiver: RecordingReceiver
    store: RedisStore
    registry: CollectorRegistry

    def sent(self) -> list[tuple[str, str, float]]:
        assert self.dispatcher.flush(5.0)
        return [(n.reason, a.status, a.starts_at)
                for n in self.receiver.notifications for a in n.alerts]

    def tick(self, clock: FakeClock, pending: int | None) -> list[AlertState]:
        if pending is not None:
            self.engine.observe(ev.QueueSnapshot(queue="emails", pending=pending))
        return self.engine.evaluate()


@dataclass
class Deployment:
    """Engines on one Redis, sharing a notification log as ``serve`` instances do."""

    url: str
    clock: FakeClock
    log: MemoryNotificationLog

    @contextmanager
    def process(self) -> Iterator[Process]:
        receiver = RecordingReceiver("rec")
        registry = CollectorRegistry()
        store = RedisStore(client(self.url), clock=self.clock)
        dispatcher = Dispatcher([receiver], clock=self.clock, registry=registry, log=self.log)
        dispatcher.start()
        try:
            engine = Engine(parse_rules(RULES), dispatcher, clock=self.clock,
                            registry=registry, tick_s=TICK, store=store)
            yield Process(engine, dispatcher, receiver, store, registry)
        finally:
            dispatcher.close()
            store.client.close()


@pytest.fixture
def deployment(redis_url: str) -> Deployment:
    return Deployment(redis_url, FakeClock(), MemoryNotificationLog())


def test_a_firing_alert_survives_a_restart_through_redis(deployment: Deployment) -> None:
    clock = deployment.clock
    with deployment.process() as first:
        fired: list[AlertState] = []
        for _ in range(3):
            clock.advance(TICK)
            fired += [s for s in first.tick(clock, 50) if s.state == "firing"]
        [before] = fired
        assert first.sent() == [("first", "firing", before.fired_at)]

    clock.advance(30)  # down for half a minute
    with deployment.process() as second:
        [restored] = second.engine.alerts()
        assert (restored.state, restored.active_at, restored.fired_at) == (
            "firing", before.active_at, before.fired_at)
        for _ in range(4):
            clock.advance(TICK)
            assert second.tick(clock, 50) == []
        assert second.sent() == []
        changes = []
        for _ in range(3):
            clock.advance(TICK)
            changes += second.tick(clock, 0)
        assert [(s.state, s.fired_at) for s in changes] == [("resolved", before.fired_at)]
        assert second.sent() == [("resolved", "resolved", before.fired_at)]
        assert second.store.load_states() == []  # the snapshot in Redis says so too


def test_a_second_instance_joining_lists_the_alerts_at_once_and_carries_on(
    deployment: Deployment,
) -> None:
    clock = deployment.clock
    with deployment.process() as first:
        clock.advance(TICK)
        assert [s.state for s in first.tick(clock, 50)] == ["pending"]
        with deployment.process() as second:
            assert [(s.state, s.active_at) for s in second.engine.alerts()] == [
                ("pending", clock.time())]
            clock.advance(TICK)
            for process in (first, second):  # both read the same snapshot
                assert process.tick(clock, 50) == []
            clock.advance(TICK)  # 10 s after the breach began, in both
            [fired] = first.tick(clock, 50)
            assert len(first.sent()) == 1  # delivered, and in the shared log
            assert second.tick(clock, 50) == [fired]  # the same alert, fired at the same time
            assert second.sent() == []
        clock.advance(TICK)
        assert first.tick(clock, 50) == []


def test_saved_states_that_cannot_be_used_are_skipped_and_counted(
    deployment: Deployment, redis_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    good = AlertState(name="Backlog", labels={"alertname": "Backlog", "queue": "emails"},
                      state="firing", since=1.0, active_at=0.5, fired_at=1.0, value=50.0)
    gone = AlertState(name="Removed", labels={"queue": "emails"}, state="firing", since=1.0,
                      active_at=0.5, fired_at=1.0)
    no_queue = AlertState(name="Backlog", labels={"alertname": "Backlog"}, state="firing",
                          since=1.0, active_at=0.5, fired_at=1.0)
    text_labels = state_to_json(good) | {"labels": "queue=sms"}
    missing_state = {k: v for k, v in state_to_json(good).items() if k != "state"}
    entries = [state_to_json(good), state_to_json(gone), state_to_json(no_queue),
               text_labels, missing_state, 7]
    setup = client(redis_url)
    setup.set("stem_observe:states", json.dumps(entries))
    setup.close()
    with caplog.at_level(logging.WARNING, logger="stem_observe.rules"), \
            deployment.process() as process:
        assert process.engine.restored == {"restored": 1, "unknown_rule": 1, "malformed": 2}
        assert [(s.labels["queue"], s.fired_at) for s in process.engine.alerts()] == [
            ("emails", 1.0)]
        metric = "stem_observe_alert_states_restored_total"
        assert process.registry.get_sample_value(metric, {"outcome": "malformed"}) == 2
    store_message, engine_message = [r.getMessage() for r in caplog.records]
    assert store_message.startswith(
        "skipped 2 of 6 saved alert states that could not be decoded: [4] KeyError: 'state'; "
        "[5] TypeError: expected an object, got int")
    assert engine_message == "restored 1 saved alert states; skipped 2 malformed, 1 unknown rule"


def test_a_snapshot_that_is_not_json_is_logged_and_the_engine_starts_empty(
    deployment: Deployment, redis_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    setup = client(redis_url)
    setup.set("stem_observe:states", b"\x00not json")
    setup.close()
    with caplog.at_level(logging.WARNING, logger="stem_observe.rules.redis_store"), \
            deployment.process() as process:
        assert process.engine.alerts() == []
    assert "decoding alert states failed" in caplog.text


# --------------------------------------------------------------------------- serve


DEAD_LETTERS = """
rules:
  - name: DeadLetters
    kind: rate
    signals: [task-dead-lettered]
    group_by: [queue]
    window: 1m
    threshold: 1
routing:
  receivers:
    - name: hook
      kind: webhook
      url_env: TEST_WEBHOOK_URL
  route:
    receiver: hook
    group_by: [alertname, queue]
    group_wait: 0s
    group_interval: 1s
    repeat_interval: 4h
    send_resolved: true
"""


def serve(redis_url: str, rules: Path, hook_url: str, workdir: Path, name: str) -> Running:
    return Running(["serve", "--broker", redis_url, "--port", "0", "--poll-interval", "0.2s",
                    "--discover-interval", "0.2s", "--rules", str(rules), "--tick", "0.2s",
                    "--state-redis", redis_url],
                   workdir, env={"TEST_WEBHOOK_URL": hook_url}, name=name)


def api_alerts(base: str) -> list[dict[str, object]]:
    body = json.loads(urllib.request.urlopen(f"{base}/api/alerts").read())
    alerts: list[dict[str, object]] = body["alerts"]
    return alerts


def ticks(base: str) -> float:
    for line in urllib.request.urlopen(f"{base}/metrics").read().decode().splitlines():
        if line.startswith("stem_observe_rule_evaluation_seconds_count "):
            return float(line.split()[1])
    return 0.0


def test_serve_restarted_while_an_alert_fires_keeps_it_and_does_not_notify_again(
    redis_url: str, tmp_path: Path,
) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(DEAD_LETTERS)
    with RecordingServer() as hook:
        with serve(redis_url, rules, hook.url + "/hook", tmp_path, "first") as first:
            base = first.base_url()
            wait_for(lambda: ready(base),
                     message="ready")
            broker = client(redis_url)
            for _ in range(3):
                StemSimulator(broker).run_task("payments.charge", queue="payments",
                                               worker_id="w1", outcome="fail",
                                               error_type="CardDeclined")
            broker.close()
            [firing] = wait_for(lambda: [a for a in api_alerts(base)
                                         if a["state"] == "firing"], timeout_s=30,
                                message="the alert firing")
            wait_for(hook.received, timeout_s=30, message="the notification")
        assert first.process.returncode == 0

        with serve(redis_url, rules, hook.url + "/hook", tmp_path, "second") as second:
            base = second.base_url()
            [restored] = api_alerts(base)  # before the windows saw anything
            assert (restored["state"], restored["active_at"], restored["fired_at"]) == (
                "firing", firing["active_at"], firing["fired_at"])
            start = ticks(base)
            wait_for(lambda: ticks(base) >= start + 15, timeout_s=30,
                     message="fifteen ticks of the restarted instance")
            assert [a["state"] for a in api_alerts(base)] == ["firing"]
        statuses = [json.loads(r.body)["status"] for r in hook.received()]
        assert statuses == ["firing"]
