"""The suite's own ``redis-server`` can be stopped and restarted, and starts empty."""

from __future__ import annotations

import redis

from tests.support.redis_server import RedisServer


def test_redis_server_stops_and_restarts_on_the_same_port(
    redis_server: RedisServer, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        client.set("k", "v")
        assert client.get("k") == b"v"
        port = redis_server.port
        redis_server.stop()
        assert not redis_server.running
        redis_server.start()
        assert redis_server.port == port
        assert client.get("k") is None  # no persistence: a restart loses state
        assert client.ping()
    finally:
        client.close()


def test_each_test_gets_an_empty_database(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.dbsize() == 0
        client.set("left-behind", "1")
    finally:
        client.close()
