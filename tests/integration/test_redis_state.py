"""Silences and alert state shared through a real ``redis-server`` (row 29 for silences);
the notification side of rows 20 and 24 to 31 is in ``test_outbox.py``."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from stem_observe.notify.model import Alert
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
