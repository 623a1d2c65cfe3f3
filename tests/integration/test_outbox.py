"""The durable outbox on a real ``redis-server``: several instances, one notification per
transition, take-over, dead letters, hand-back and clock skew (matrix rows 20 and 24 to 31)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from stem_observe.notify.base import RetryPolicy
from stem_observe.notify.clock import SYSTEM_CLOCK, Clock
from stem_observe.notify.dispatch import Dispatcher
from stem_observe.notify.model import Alert, Notification
from stem_observe.notify.outbox import GROUP, RedisOutbox
from stem_observe.notify.redis_log import RedisNotificationLog
from stem_observe.notify.server_clock import ServerClock
from stem_observe.notify.webhook import WebhookReceiver
from tests.support.fault_server import FaultServer, Reply, Request
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_for

GROUP_KEY = "route/queue=emails"
FIRING = Alert(name="failure_rate", labels={"queue": "emails"}, value=0.3, threshold=0.1,
               starts_at=1_700_000_000.0)
RESOLVED = Alert(name="failure_rate", labels={"queue": "emails"}, status="resolved",
                 starts_at=1_700_000_000.0, ends_at=1_700_000_100.0)
FAST_RETRY = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.1, max_attempts=3,
                         deadline_s=5.0)


class SkewedClock:
    """The system clock with wall time moved by ``skew_s`` (a host whose clock is off)."""

    def __init__(self, skew_s: float) -> None:
        self.skew_s = skew_s

    def monotonic(self) -> float:
        return SYSTEM_CLOCK.monotonic()

    def time(self) -> float:
        return SYSTEM_CLOCK.time() + self.skew_s

    def sleep(self, seconds: float, cancel: threading.Event | None = None) -> bool:
        return SYSTEM_CLOCK.sleep(seconds, cancel)


class Instance:
    """One ``serve`` instance's notification side: dispatcher, shared log and outbox."""

    def __init__(self, url: str, hook_url: str, name: str, *, claim_timeout_s: float = 30.0,
                 lease_s: float = 0.6, local: Clock = SYSTEM_CLOCK,
                 retry: RetryPolicy = FAST_RETRY, send_resolved: bool = True,
                 timeout_s: float = 2.0) -> None:
        self.name = name
        self.registry = CollectorRegistry()
        self.client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.clock = ServerClock(self.client, local=local)
        self.log = RedisNotificationLog(self.client, clock=self.clock)
        self.outbox = RedisOutbox(self.client, instance=name, claim_timeout_s=claim_timeout_s,
                                  lease_s=lease_s, block_s=0.1, registry=self.registry)
        self.dispatcher = Dispatcher(
            [WebhookReceiver("hook", hook_url, timeout_s=timeout_s,
                             send_resolved=send_resolved)],
            log=self.log, outbox=self.outbox, registry=self.registry, clock=self.clock,
            retry=retry)
        self.dispatcher.start()
        self.closed = False

    def notify(self, *alerts: Alert, repeat_interval_s: float | None = None
               ) -> list[Notification]:
        return self.dispatcher.notify(GROUP_KEY, list(alerts or (FIRING,)),
                                      repeat_interval_s=repeat_interval_s)

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def enqueued(self, outcome: str) -> float:
        return self.value("stem_observe_outbox_enqueued_total", receiver="hook",
                          outcome=outcome)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.dispatcher.close(2.0)
            self.client.close()


@pytest.fixture
def instances(redis_url: str) -> Iterator[list[Instance]]:
    made: list[Instance] = []
    yield made
    for instance in made:
        instance.close()


def start(made: list[Instance], url: str, hook: FaultServer, *names: str,
          **kwargs: object) -> Sequence[Instance]:
    new = [Instance(url, hook.url + "/hook", name, **kwargs) for name in names]  # type: ignore[arg-type]
    made.extend(new)
    return new


def ensure_group(instance: Instance) -> None:
    with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: the leader made it
        instance.client.xgroup_create(instance.outbox.stream("hook"), GROUP, id="0", mkstream=True)


def leader(*candidates: Instance) -> Instance:
    wait_for(lambda: any(i.outbox.leads("hook") for i in candidates), message="an outbox leader")
    return next(i for i in candidates if i.outbox.leads("hook"))


def statuses(hook: FaultServer) -> list[str]:
    return [json.loads(r.body)["status"] for r in hook.answered()]


def test_two_instances_notifying_at_once_send_exactly_one_request(
    redis_url: str, instances: list[Instance],
) -> None:
    """Row 20: the transition enters the outbox once; the leader sends it once."""
    with FaultServer() as hook:
        a, b = start(instances, redis_url, hook, "a", "b")
        barrier = threading.Barrier(2)

        def run(instance: Instance) -> None:
            barrier.wait()
            instance.notify()

        threads = [threading.Thread(target=run, args=(i,)) for i in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert sorted([a.enqueued("queued"), b.enqueued("queued")]) == [0.0, 1.0]
        wait_for(lambda: len(hook.answered()) == 1, message="the notification")
        wait_for(lambda: a.log.get(GROUP_KEY, "hook") is not None, message="the log entry")
        for _ in range(3):  # later flushes of the unchanged group queue nothing
            assert a.notify() == []
            assert b.notify() == []
        assert a.enqueued("queued") + b.enqueued("queued") == 1.0
        # the resolution is one more transition, sent once
        a.notify(RESOLVED)
        b.notify(RESOLVED)
        wait_for(lambda: len(hook.answered()) == 2, message="the resolution")
        assert statuses(hook) == ["firing", "resolved"]
        assert len(hook.requests()) == 2

        def sent() -> float:
            return sum(i.value("stem_observe_notifications_total", receiver="hook",
                               outcome="sent") for i in (a, b))

        wait_for(lambda: sent() >= 2.0, message="both counted as sent")
        assert sent() == 2.0


def test_a_resolve_queued_before_the_trigger_was_delivered_still_follows_it(
    redis_url: str, instances: list[Instance],
) -> None:
    """The last queued state counts, not only the last delivered: a group resolving while
    its trigger waits in the outbox queues the resolution right behind it, in order."""
    with FaultServer(Reply(status=503), Reply(status=503)) as hook:
        a, b = start(instances, redis_url, hook, "a", "b")
        a.notify()
        a.notify(RESOLVED)
        b.notify(RESOLVED)
        wait_for(lambda: len(hook.answered()) == 2, message="trigger and resolve")
        assert statuses(hook) == ["firing", "resolved"]
        assert a.enqueued("queued") + b.enqueued("queued") == 2.0


def test_an_entry_taken_by_an_instance_that_died_is_taken_over_and_sent_once(
    redis_url: str, instances: list[Instance],
) -> None:
    """Row 24: an instance read the entry and held the lease, then died before sending;
    once its lease and the claim timeout pass, the next leader sends it, once. (The same
    with a real ``serve`` process killed mid-request: ``test_serve_ha.py``.)"""
    with FaultServer() as hook:
        a, = start(instances, redis_url, hook, "a", claim_timeout_s=1.0)
        a.outbox.close()  # a queues, the dead instance below had been sending
        a.client.set(a.outbox._leader_key("hook"), "dead-instance", px=1000)
        ensure_group(a)
        a.notify()
        taken = a.client.xreadgroup(GROUP, "dead-instance", {a.outbox.stream("hook"): ">"}, count=1)
        assert taken
        b, = start(instances, redis_url, hook, "b", claim_timeout_s=1.0)
        wait_for(lambda: len(hook.answered()) == 1, timeout_s=15,
                 message="the taken-over notification")
        assert b.value("stem_observe_outbox_reclaimed_total", receiver="hook") == 1.0
        wait_for(lambda: b.client.xlen(b.outbox.stream("hook")) == 0, message="acknowledged")
        assert b.client.xpending(b.outbox.stream("hook"), GROUP)["pending"] == 0
        assert len(hook.requests()) == 1


def test_an_entry_already_delivered_is_not_sent_again_when_taken_over(
    redis_url: str, instances: list[Instance],
) -> None:
    """Row 25's narrow case: the holder delivered and recorded the delivered version, then
    died before acknowledging: the taker sees the version delivered and only acknowledges."""
    with FaultServer() as hook:
        a, = start(instances, redis_url, hook, "a", claim_timeout_s=0.5)
        a.outbox.close()  # a reads by hand below
        ensure_group(a)
        a.notify()
        reply: Any = a.client.xreadgroup(GROUP, "dead-instance", {a.outbox.stream("hook"): ">"},
                                         count=1)
        fields = reply[0][1][0][1]
        a.outbox._scripts["done"](keys=[a.outbox._state_key("done", "hook", GROUP_KEY)],
                                  args=[int(fields[b"version"]), 60_000])
        b, = start(instances, redis_url, hook, "b", claim_timeout_s=0.5)
        wait_for(lambda: b.client.xlen(b.outbox.stream("hook")) == 0, message="the entry settled")
        assert hook.requests() == []
        assert b.value("stem_observe_outbox_reclaimed_total", receiver="hook") == 1.0


def test_a_poison_notification_is_dead_lettered_and_does_not_block_the_next(
    redis_url: str, instances: list[Instance],
) -> None:
    """Row 30: a payload that always gets 400 goes to the dead stream after one request;
    the next notification in the stream is delivered."""
    def answer(request: Request) -> Reply:
        body = json.loads(request.body)
        return Reply(status=400, body="bad") if body["groupKey"] == "poison" else Reply()

    with FaultServer(responder=answer) as hook:
        a, = start(instances, redis_url, hook, "a")
        a.dispatcher.notify("poison", [FIRING])
        a.notify()
        wait_for(lambda: len(hook.answered(200)) == 1, message="the good notification")
        dead: Any = a.client.xrange(a.outbox.dead_stream)
        assert len(dead) == 1
        fields = dead[0][1]
        assert fields[b"error_kind"] == b"client"
        assert b"400" in fields[b"error"]
        assert len(hook.answered(400)) == 1
        assert a.value("stem_observe_outbox_dead_letters_total", receiver="hook",
                       reason="failed") == 1.0
        # kept as sent for the dedup TTL: the next flushes do not retry it in a loop
        assert a.dispatcher.notify("poison", [FIRING]) == []


def test_an_entry_that_is_never_acknowledged_is_buried_after_max_deliveries(
    redis_url: str, instances: list[Instance],
) -> None:
    """Row 30's delivery counter: an entry every holder died on goes to the dead stream
    without another attempt."""
    with FaultServer() as hook:
        a, = start(instances, redis_url, hook, "a", claim_timeout_s=0.3)
        a.outbox.close()
        ensure_group(a)
        a.notify()
        stream = a.outbox.stream("hook")
        read: Any = a.client.xreadgroup(GROUP, "crashed-1", {stream: ">"}, count=1)
        ticket = read[0][1][0][0]
        for n in range(2, 7):  # five more instances took it and died
            a.client.xclaim(stream, GROUP, f"crashed-{n}", 0, [ticket])
        b, = start(instances, redis_url, hook, "b", claim_timeout_s=0.3)
        wait_for(lambda: b.value("stem_observe_outbox_dead_letters_total",
                                 receiver="hook", reason="max_deliveries") == 1.0,
                 message="the burial")
        assert hook.requests() == []
        buried: Any = b.client.xrange(b.outbox.dead_stream)
        (_, fields), = buried
        assert fields[b"reason"] == b"max_deliveries"
        assert b.client.xlen(stream) == 0


def test_sigterm_during_back_off_hands_the_entry_to_another_instance(
    redis_url: str, instances: list[Instance],
) -> None:
    """Row 31: the leader is stopped while waiting to retry; the entry is not acknowledged
    but handed back, and the other instance delivers it: one 2xx, no lost message."""
    slow = RetryPolicy(initial_backoff_s=30.0, max_backoff_s=30.0, max_attempts=5,
                       deadline_s=120.0)
    with FaultServer(Reply(status=503)) as hook:
        a, = start(instances, redis_url, hook, "a", retry=slow)
        assert leader(a) is a
        b, = start(instances, redis_url, hook, "b", retry=slow)
        a.notify()
        wait_for(lambda: len(hook.requests()) == 1, message="the first attempt")
        a.close()  # what SIGTERM does
        assert a.value("stem_observe_notifications_total", receiver="hook",
                       outcome="handed_back") == 1.0
        assert a.value("stem_observe_notifications_total", receiver="hook",
                       outcome="dead_lettered") == 0.0
        wait_for(lambda: len(hook.answered()) == 1, timeout_s=15, message="b's delivery")
        assert len(hook.requests()) == 2
        assert b.client.xlen(b.outbox.stream("hook")) == 0


def test_a_stop_during_a_hanging_request_aborts_it_and_hands_the_entry_over(
    redis_url: str, instances: list[Instance],
) -> None:
    """Stopping while a request hangs: the request is aborted at once (not waited out), the
    entry handed back rather than dead-lettered, and the other instance delivers it."""
    with FaultServer(Reply(hang=True), hang_limit_s=20.0) as hook:
        a, = start(instances, redis_url, hook, "a", timeout_s=15.0)
        assert leader(a) is a
        start(instances, redis_url, hook, "b")
        a.notify()
        wait_for(lambda: len(hook.requests()) == 1, message="the hanging request")
        a.closed = True
        began = time.monotonic()
        a.dispatcher.close(0.1)  # drain briefly, then cancel: the request is still hanging
        assert time.monotonic() - began < 7.5  # aborted, not waited out (15 s)
        a.client.close()
        assert a.value("stem_observe_notifications_total", receiver="hook",
                       outcome="handed_back") == 1.0
        assert a.value("stem_observe_notifications_total", receiver="hook",
                       outcome="dead_lettered") == 0.0
        wait_for(lambda: len(hook.answered()) == 1, timeout_s=15, message="b's delivery")
        first, second = hook.requests()
        assert first.headers["webhook-id"] == second.headers["webhook-id"]


def test_clock_skew_between_instances_does_not_re_send_early(
    redis_url: str, instances: list[Instance],
) -> None:
    """Row 29: instance b's clock runs 90 s ahead; repeat intervals are measured on the
    Redis server's clock, so b does not repeat early, and repeats once when it is due."""
    with FaultServer() as hook:
        a, = start(instances, redis_url, hook, "a")
        b, = start(instances, redis_url, hook, "b", local=SkewedClock(90.0))
        assert abs(b.clock.time() - a.clock.time()) < 1.0
        a.notify(repeat_interval_s=2.0)
        wait_for(lambda: len(hook.answered()) == 1, message="the first notification")
        wait_for(lambda: a.log.get(GROUP_KEY, "hook") is not None, message="the log entry")
        assert b.notify(repeat_interval_s=2.0) == []  # 90 s by b's own clock, ~0 s by Redis'
        wait_for(lambda: bool(b.notify(repeat_interval_s=2.0)), timeout_s=10,
                 message="the repeat falling due")
        wait_for(lambda: len(hook.answered()) == 2, message="the repeat")
        entry = a.log.get(GROUP_KEY, "hook")
        assert entry is not None
        assert entry.sequence == 1
        first, second = hook.answered()
        assert second.at - first.at >= 1.5
        assert len(hook.requests()) == 2


def test_a_redis_restart_without_persistence_costs_at_most_one_extra_notification(
    redis_server: RedisServer, redis_url: str, instances: list[Instance],
) -> None:
    """Row 26: outbox, dedup keys and log are gone with the restart; both instances carry
    on, the group is notified once more, then the dedup holds again."""
    with FaultServer() as hook:
        a, b = start(instances, redis_url, hook, "a", "b")
        a.notify()
        b.notify()
        wait_for(lambda: len(hook.answered()) == 1, message="the notification")
        redis_server.restart()
        wait_for(lambda: bool(a.notify() or b.notify()) or len(hook.answered()) == 2,
                 message="the group queued again after the restart")
        wait_for(lambda: len(hook.answered()) == 2, timeout_s=15, message="the one extra")
        for _ in range(3):
            a.notify()
            b.notify()
        assert len(hook.requests()) == 2


def test_notifications_are_sent_while_redis_is_down(
    redis_server: RedisServer, redis_url: str, instances: list[Instance],
) -> None:
    """Row 28: Redis down, fail open: sent locally (counted ``unavailable``); the local copy
    of the log keeps the instance from re-sending every flush."""
    with FaultServer() as hook:
        a, = start(instances, redis_url, hook, "a")
        redis_server.stop()
        a.notify()
        assert a.enqueued("unavailable") == 1.0
        assert a.dispatcher.flush(10.0)
        assert len(hook.answered()) == 1
        a.notify()
        assert a.dispatcher.flush(10.0)
        assert len(hook.requests()) == 1


def test_an_aof_redis_killed_and_restarted_keeps_unacknowledged_entries(
    tmp_path: Path, instances: list[Instance],
) -> None:
    """Row 27: with ``appendonly yes`` (``appendfsync always``: nothing acknowledged to the
    caller is lost), a Redis ``kill -9`` and restart keeps stream and PEL; the holder died
    too, and the next leader delivers every entry once."""
    server = RedisServer(tmp_path)
    aof = ("--appendonly", "yes", "--appendfsync", "always")
    server.start(*aof)
    try:
        with FaultServer() as hook:
            a, = start(instances, server.url, hook, "a", claim_timeout_s=1.0)
            a.outbox.close()  # a queues; a holder that dies with Redis had taken them
            ensure_group(a)
            a.notify()
            a.dispatcher.notify("route/queue=sms", [FIRING])
            assert a.client.xreadgroup(GROUP, "dead-instance", {a.outbox.stream("hook"): ">"},
                                       count=10)
            assert server._process is not None
            server._process.kill()  # kill -9
            server._process.wait()
            server._process = None
            server.start(*aof)
            check = redis.Redis.from_url(server.url)
            assert check.xlen(a.outbox.stream("hook")) == 2
            assert check.xpending(a.outbox.stream("hook"), GROUP)["pending"] >= 1
            check.close()
            b, = start(instances, server.url, hook, "b", claim_timeout_s=1.0)
            wait_for(lambda: len(hook.answered()) == 2, timeout_s=20, message="both sent")
            assert sorted(json.loads(r.body)["groupKey"] for r in hook.answered()) == [
                "route/queue=emails", "route/queue=sms"]
            wait_for(lambda: b.client.xlen(b.outbox.stream("hook")) == 0, message="both settled")
    finally:
        for instance in instances:
            instance.close()
        server.stop()
