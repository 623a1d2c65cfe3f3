"""Silences, alert state and the notification log shared through a real ``redis-server``
(matrix rows 20, 26 and 28; row 29 for silences only)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis
from prometheus_client import CollectorRegistry

from stem_observe.notify.base import RetryPolicy
from stem_observe.notify.dispatch import Dispatcher
from stem_observe.notify.model import Alert
from stem_observe.notify.redis_log import RedisNotificationLog
from stem_observe.notify.webhook import WebhookReceiver
from stem_observe.rules.engine import AlertState
from stem_observe.rules.redis_store import RedisStore, server_time
from tests.support.recording_server import RecordingServer
from tests.support.redis_server import RedisServer

FIRING = Alert(name="failure_rate", labels={"queue": "emails"}, value=0.3, threshold=0.1,
               starts_at=1_700_000_000.0)


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)


@pytest.fixture
def receiver_server() -> Iterator[RecordingServer]:
    with RecordingServer(200) as server:
        yield server


class Instance:
    """One "serve" instance's notification side: a dispatcher on the shared Redis log."""

    def __init__(self, url: str, receiver_url: str, name: str) -> None:
        self.registry = CollectorRegistry()
        self.log = RedisNotificationLog(client(url), instance=name, registry=self.registry,
                                        claim_ttl_s=30.0)
        self.dispatcher = Dispatcher(
            [WebhookReceiver("hook", receiver_url + "/in", timeout_s=2.0)],
            log=self.log, registry=self.registry,
            retry=RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.1, max_attempts=3,
                              deadline_s=5.0))
        self.dispatcher.start()

    def claims(self, outcome: str) -> float:
        return self.registry.get_sample_value("stem_observe_notification_claims_total",
                                              {"receiver": "hook", "outcome": outcome}) or 0.0

    def notify(self) -> None:
        self.dispatcher.notify("route/queue=emails", [FIRING])
        assert self.dispatcher.flush(5.0)


def test_silences_are_shared_and_expire_by_redis_server_time(redis_url: str) -> None:
    a, b = RedisStore(client(redis_url)), RedisStore(client(redis_url))
    now = server_time(a.client)
    silence = a.add(["queue = emails"], now + 1.0, created_by="ana", comment="migration")
    other = b.add(["queue = reports"], now + 3600)
    # b sees a's silence; the engine's local ``now`` (here absurd) is not used
    assert [s.id for s in b.silences(0.0)] == [silence.id, other.id]
    assert [s.id for s in b.silences(now + 10_000)] == [silence.id, other.id]
    assert b.list()[0].created_by == "ana"
    time.sleep(1.2)  # real time: the server's clock has to move
    assert [s.id for s in b.silences(0.0)] == [other.id]
    assert [s.id for s in a.list(include_expired=True)] == [silence.id, other.id]
    assert b.expire(other.id)
    assert not a.expire(other.id)
    assert a.silences(now) == []
    assert a.list() == []


def test_alert_states_survive_a_new_store(redis_url: str) -> None:
    state = AlertState(name="failure_rate", labels={"alertname": "failure_rate", "q": "e"},
                       state="firing", since=1.0, active_at=0.5, fired_at=1.0, value=0.3,
                       threshold=0.1, annotations={"summary": "x"}, silenced_by=("s1",))
    RedisStore(client(redis_url)).save_states([state])
    assert RedisStore(client(redis_url)).load_states() == [state]


def test_a_redis_outage_keeps_the_last_good_silences(
    redis_server: RedisServer, redis_url: str,
) -> None:
    store = RedisStore(client(redis_url))
    silence = store.add(["queue = emails"], server_time(store.client) + 3600)
    assert store.silences(0.0) == [silence]
    redis_server.stop()
    assert store.silences(time.time()) == [silence]  # fail open: last good data
    assert store.list() == [silence]
    assert store.expire(silence.id) is False
    store.save_states([])  # logged, not raised


def test_two_instances_notifying_at_once_send_exactly_one_request(
    redis_url: str, receiver_server: RecordingServer,
) -> None:
    """Row 20: one ``SET NX PX`` winner; the loser sends nothing and writes no entry."""
    a = Instance(redis_url, receiver_server.url, "a")
    b = Instance(redis_url, receiver_server.url, "b")
    try:
        barrier = threading.Barrier(2)

        def run(instance: Instance) -> None:
            barrier.wait()
            instance.notify()

        threads = [threading.Thread(target=run, args=(i,)) for i in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(receiver_server.received()) == 1
        assert sorted([a.claims("won"), b.claims("won")]) == [0.0, 1.0]
        assert a.claims("lost") + b.claims("lost") == 1.0
        # Only the winner counts a send: the loser made no request and reports none.
        sent = [inst.registry.get_sample_value(
            "stem_observe_notifications_total", {"receiver": "hook", "outcome": "sent"}) or 0.0
            for inst in (a, b)]
        assert sorted(sent) == [0.0, 1.0]
        # the shared log now holds the winner's entry: neither sends again
        a.notify()
        b.notify()
        assert len(receiver_server.received()) == 1
    finally:
        a.dispatcher.close()
        b.dispatcher.close()


def test_a_redis_restart_without_persistence_costs_at_most_one_extra_notification(
    redis_server: RedisServer, redis_url: str, receiver_server: RecordingServer,
) -> None:
    """Row 26: the log and claims are lost with the restart; the next flush of both
    instances re-sends once (documented), then the log holds again; nothing raises."""
    a = Instance(redis_url, receiver_server.url, "a")
    b = Instance(redis_url, receiver_server.url, "b")
    try:
        a.notify()
        b.notify()
        assert len(receiver_server.received()) == 1
        redis_server.restart()
        a.notify()
        b.notify()
        assert len(receiver_server.received()) == 2  # the one extra notification
        for _ in range(3):
            a.notify()
            b.notify()
        assert len(receiver_server.received()) == 2
    finally:
        a.dispatcher.close()
        b.dispatcher.close()


def test_notifications_are_sent_while_redis_is_down(
    redis_server: RedisServer, redis_url: str, receiver_server: RecordingServer,
) -> None:
    """Row 28 (Redis down): fail open, counted as ``unclaimed``; the local copy of the log
    keeps one instance from re-sending every flush."""
    a = Instance(redis_url, receiver_server.url, "a")
    try:
        redis_server.stop()
        started = time.monotonic()
        a.notify()
        assert time.monotonic() - started < 5.0
        assert len(receiver_server.received()) == 1
        assert a.claims("unclaimed") == 1.0
        a.notify()
        assert len(receiver_server.received()) == 1
    finally:
        a.dispatcher.close()
