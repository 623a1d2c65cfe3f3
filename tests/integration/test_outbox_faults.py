"""The durable outbox (``stem_observe.notify.outbox``) under faults, on a real
``redis-server``: each test pins a scenario (a receiver configured on some instances only,
a hanging receiver or a full queue, a Redis restart during a delivery, a network partition,
a shutdown mid-delivery, two instances deciding one transition, a group's version expiring,
an unresponsive Redis, a receiver named like an outbox key) and checks a promise of the
outbox: one notification per alert transition, never a stale state after a newer one,
nothing lost, fail open at the cost of one time-out, bounded state and load."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from stem_observe.notify._breaker import Breaker
from stem_observe.notify.base import RetryPolicy
from stem_observe.notify.dispatch import Dispatcher
from stem_observe.notify.model import Alert, Notification
from stem_observe.notify.outbox import GROUP, RedisOutbox
from stem_observe.notify.redis_log import RedisNotificationLog
from stem_observe.notify.server_clock import ServerClock
from stem_observe.notify.webhook import WebhookReceiver
from tests.support.fault_server import FaultServer, Reply, Request, Responder
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_for

GROUP_KEY = "route/queue=emails"
EMAILS = Alert(name="failure_rate", labels={"queue": "emails"}, value=0.3, threshold=0.1,
               starts_at=1_700_000_000.0)
EMAILS_RESOLVED = Alert(name="failure_rate", labels={"queue": "emails"}, status="resolved",
                        starts_at=1_700_000_000.0, ends_at=1_700_000_100.0)
SMS = Alert(name="failure_rate", labels={"queue": "sms"}, value=0.4, threshold=0.1,
            starts_at=1_700_000_050.0)
FAST_RETRY = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.1, max_attempts=3,
                         deadline_s=5.0)
BACK_OFF = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=60.0, max_attempts=5,
                       deadline_s=120.0)
"""Retries that honour a long ``Retry-After``: the delivery stays in back-off."""


class Node:
    """One ``serve`` instance's notification side (dispatcher, shared log, outbox, and one
    circuit breaker for the three, as ``serve`` wires them), with the webhook receivers
    given as ``{name: url}``."""

    def __init__(self, url: str, name: str, hooks: Mapping[str, str], *,
                 claim_timeout_s: float = 30.0, lease_s: float = 0.6,
                 retry: RetryPolicy = FAST_RETRY, send_resolved: bool = True,
                 timeout_s: float = 2.0, max_queue: int = 1000, **outbox: Any) -> None:
        self.name = name
        self.registry = CollectorRegistry()
        self.client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.breaker = Breaker()
        self.clock = ServerClock(self.client, breaker=self.breaker)
        self.log = RedisNotificationLog(self.client, clock=self.clock, breaker=self.breaker)
        self.outbox = RedisOutbox(self.client, instance=name, claim_timeout_s=claim_timeout_s,
                                  lease_s=lease_s, block_s=0.1, registry=self.registry,
                                  breaker=self.breaker, **outbox)
        receivers = [WebhookReceiver(hook, hook_url, timeout_s=timeout_s,
                                     send_resolved=send_resolved)
                     for hook, hook_url in hooks.items()]
        self.dispatcher = Dispatcher(receivers, log=self.log, outbox=self.outbox,
                                     registry=self.registry, clock=self.clock, retry=retry,
                                     max_queue=max_queue)
        self.dispatcher.start()
        self.closed = False

    def notify(self, *alerts: Alert, group_key: str = GROUP_KEY,
               receivers: Sequence[str] | None = None) -> list[Notification]:
        return self.dispatcher.notify(group_key, list(alerts), receivers=receivers)

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def enqueued(self, outcome: str, receiver: str = "hook") -> float:
        return self.value("stem_observe_outbox_enqueued_total", receiver=receiver,
                          outcome=outcome)

    def counted(self, outcome: str, receiver: str = "hook") -> float:
        return self.value("stem_observe_notifications_total", receiver=receiver,
                          outcome=outcome)

    def settled(self, receiver: str = "hook") -> bool:
        """Nothing left in the receiver's stream and nothing being delivered here."""
        return (self.client.xlen(self.outbox.stream(receiver)) == 0
                and self.dispatcher.flush(0.1))

    def close(self, timeout_s: float = 2.0) -> None:
        if not self.closed:
            self.closed = True
            self.dispatcher.close(timeout_s)
            self.client.close()


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    made: list[Node] = []
    yield made
    for node in made:
        node.close()


def add(made: list[Node], url: str, name: str, hooks: Mapping[str, str],
        **kwargs: Any) -> Node:
    node = Node(url, name, hooks, **kwargs)
    made.append(node)
    return node


def leader(*candidates: Node, receiver: str = "hook") -> Node:
    wait_for(lambda: any(n.outbox.leads(receiver) for n in candidates),
             message=f"an outbox leader for {receiver}")
    return next(n for n in candidates if n.outbox.leads(receiver))


def eventually(condition: Any, timeout_s: float, message: str) -> bool:
    """``wait_for`` that answers ``False`` on time-out, so the test can say more."""
    try:
        wait_for(condition, timeout_s=timeout_s, message=message)
    except AssertionError:
        return False
    return True


def statuses(hook: FaultServer) -> list[str]:
    return [json.loads(r.body)["status"] for r in hook.answered()]


def requested(hook: FaultServer) -> list[str]:
    """The status of every notification the receiver was sent, answered or not."""
    return [json.loads(r.body)["status"] for r in hook.requests()]


def alert_counts(hook: FaultServer) -> list[int]:
    return [len(json.loads(r.body)["alerts"]) for r in hook.answered()]


def has_group(node: Node, receiver: str) -> bool:
    try:
        groups: Any = node.client.xinfo_groups(node.outbox.stream(receiver))
    except redis.ResponseError:
        return False
    return any(g["name"] in (GROUP, GROUP.encode()) for g in groups)


class StallProxy:
    """A TCP proxy in front of Redis that can stall: while stalled nothing is forwarded
    either way (a network partition between one instance and Redis)."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.flowing = threading.Event()
        self.flowing.set()
        self.closing = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream), timeout=1.0)
            except OSError:
                conn.close()
                continue
            for src, dst in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(None)
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while not self.flowing.wait(0.05):
                    if self.closing.is_set():
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.closing.set()
        self.flowing.set()
        self.sock.close()
        self.thread.join(2)


# --- 1. a receiver configured on some instances only --------------------------------------

def test_a_receiver_configured_only_on_a_follower_is_still_delivered(
    redis_url: str, nodes: list[Node],
) -> None:
    """Rolling out a new receiver: the instance that sends for the receivers everyone has
    (``a``) does not have it yet, a follower (``b``) does. The follower queues the
    notification; it must be sent, once, by an instance that has the receiver (never
    taken back and forth and finally buried as ``max_deliveries`` by one that cannot send
    it)."""
    with FaultServer() as hook, FaultServer() as pager:
        a = add(nodes, redis_url, "a", {"hook": hook.url + "/hook"}, claim_timeout_s=0.3)
        assert leader(a) is a
        b = add(nodes, redis_url, "b", {"hook": hook.url + "/hook",
                                        "pager": pager.url + "/pager"}, claim_timeout_s=0.3)
        assert b.notify(EMAILS, receivers=["pager"])

        def buried() -> float:
            return sum(n.value("stem_observe_outbox_dead_letters_total", receiver="pager",
                               reason="max_deliveries") for n in (a, b))

        wait_for(lambda: len(pager.answered()) == 1 or buried() > 0,
                 timeout_s=15, message="the pager notification delivered or buried")
        dead: Any = a.client.xrange(a.outbox.dead_stream)
        assert len(pager.answered()) == 1, (
            f"never sent; dead stream: {[f[b'reason'] for _, f in dead]}")
        wait_for(lambda: b.settled("pager"), message="the pager stream settled")
        assert not a.outbox.leads("pager"), "an instance without the receiver sends for it"
        assert len(pager.requests()) == 1
        assert buried() == 0


# --- 2. one hanging receiver holds back every other receiver ------------------------------

def test_a_hanging_receiver_does_not_hold_back_another_receivers_notifications(
    redis_url: str, nodes: list[Node],
) -> None:
    """The leader reads at most ``capacity`` (100) entries of a receiver ahead. 130
    notifications for a receiver whose endpoint hangs fill that; a notification for a
    healthy receiver queued after them must still be read and sent at once, not after 30
    of the hanging ones are worked off (here 30 x 5 s; with production time-outs and
    retries, hours)."""
    with FaultServer(default=Reply(hang=True), hang_limit_s=60.0) as stuck, \
            FaultServer() as pager:
        a = add(nodes, redis_url, "a", {"stuck": stuck.url + "/stuck",
                                        "pager": pager.url + "/pager"},
                timeout_s=5.0, retry=RetryPolicy(max_attempts=1))
        assert leader(a, receiver="stuck") is a
        assert leader(a, receiver="pager") is a
        for n in range(130):
            assert a.notify(EMAILS, group_key=f"route/group-{n}", receivers=["stuck"])
        wait_for(lambda: len(stuck.requests()) == 1, message="the first hanging request")
        wait_for(lambda: a.outbox._in_flight("stuck") == a.outbox.capacity,
                 message="the hanging receiver's in-flight entries at capacity")
        assert a.notify(EMAILS, receivers=["pager"])
        wait_for(lambda: len(pager.answered()) == 1, timeout_s=10,
                 message="the healthy receiver's notification (held back by the hanging one)")
        assert len(stuck.requests()) == 1, "the healthy one waited for the hanging ones"


def test_a_full_receiver_queue_does_not_make_the_outbox_loop_spin(
    redis_url: str, nodes: list[Node],
) -> None:
    """A receiver's queue holds fewer notifications than the outbox reads ahead (a small
    ``max_queue``, or a queue filled by notifications sent locally while Redis was away):
    what does not fit must stay in the stream, not be handed back and read again at once,
    over and over, flooding Redis while the receiver is slow."""
    with FaultServer(default=Reply(hang=True), hang_limit_s=20.0) as stuck:
        a = add(nodes, redis_url, "a", {"stuck": stuck.url + "/stuck"}, timeout_s=10.0,
                retry=RetryPolicy(max_attempts=1), max_queue=2)
        assert leader(a, receiver="stuck") is a
        for n in range(10):
            assert a.notify(EMAILS, group_key=f"route/group-{n}", receivers=["stuck"])
        wait_for(lambda: len(stuck.requests()) == 1, message="the first hanging request")
        check = redis.Redis.from_url(redis_url)

        def commands() -> int:
            return int(check.info("stats")["total_commands_processed"])

        base = commands()
        began = time.monotonic()
        wait_for(lambda: commands() - base > 1000 or time.monotonic() - began > 2.0,
                 message="two seconds or a flood of commands")
        spent = commands() - base
        added = int(check.xinfo_stream(a.outbox.stream("stuck"))["entries-added"])
        check.close()
        assert spent < 1000, f"{spent} Redis commands in {time.monotonic() - began:.2f}s"
        assert added == 10, f"entries handed back and re-added {added - 10} times"


# --- 3. Redis restarted while a delivery is under way -------------------------------------

def _restart_during_back_off(redis_server: RedisServer, redis_url: str,
                             nodes: list[Node], slow: FaultServer,
                             pager: FaultServer) -> Node:
    # claim timeout 0.4 s: the keep-alive falls due every 0.1 s (claim_timeout / 4), so it
    # is due when the loop comes back from the connection error, before the group is
    # created again; with the default 360 s the same happens whenever it is due then.
    a = add(nodes, redis_url, "a", {"slow": slow.url + "/slow", "pager": pager.url + "/pager"},
            retry=BACK_OFF, claim_timeout_s=0.4)
    assert leader(a, receiver="slow") is a
    assert a.notify(EMAILS, receivers=["slow"])
    wait_for(lambda: len(slow.requests()) == 1, message="the first attempt (503)")
    redis_server.restart()  # no persistence: streams, groups and keys are gone
    return a


def test_a_redis_restart_during_a_delivery_does_not_stall_the_outbox(
    redis_server: RedisServer, redis_url: str, nodes: list[Node],
) -> None:
    """After a restart without persistence the leader must create the groups again while a
    delivery of the old stream is still in back-off (its entry refreshed by the keep-alive,
    which now finds no group), and go on sending what is queued after the restart, through
    the outbox (not by failing open)."""
    busy = Reply(status=503, headers={"Retry-After": "30"})
    with FaultServer(busy, busy, busy, busy) as slow, FaultServer() as pager:
        a = _restart_during_back_off(redis_server, redis_url, nodes, slow, pager)
        wait_for(lambda: bool(a.notify(SMS, group_key="route/queue=sms",
                                       receivers=["pager"])),
                 message="a notification queued after the restart")
        assert a.enqueued("queued", "pager") == 1.0, "sent locally, not through the outbox"
        delivered = eventually(lambda: len(pager.answered()) == 1, 10,
                               "the notification queued after the restart")
        try:
            groups = [g["name"] for g in a.client.xinfo_groups(a.outbox.stream("pager"))]
        except redis.ResponseError as exc:
            groups = [str(exc)]
        assert delivered, f"not sent within 10 s; consumer groups: {groups}"
        assert len(slow.requests()) == 1, "the slow delivery did not stay in back-off"


def test_a_redis_restart_during_a_delivery_does_not_make_the_outbox_loop_spin(
    redis_server: RedisServer, redis_url: str, nodes: list[Node],
) -> None:
    """Same scenario: the outbox loop, finding no group for the entry it keeps alive, must
    neither retry back to back nor flood Redis with commands."""
    busy = Reply(status=503, headers={"Retry-After": "30"})
    with FaultServer(busy, busy, busy, busy) as slow, FaultServer() as pager:
        _restart_during_back_off(redis_server, redis_url, nodes, slow, pager)
        check = redis.Redis.from_url(redis_url)

        def commands() -> int:
            return int(check.info("stats")["total_commands_processed"])

        base = commands()
        began = time.monotonic()
        # 3 s of a healthy outbox cost a few hundred commands (leases, keep-alive, reads,
        # reclaims, and this test's INFO polls); a spinning loop passes 1000 well within it.
        wait_for(lambda: commands() - base > 1000 or time.monotonic() - began > 3.0,
                 timeout_s=6, message="three seconds or a flood of commands")
        spent = commands() - base
        check.close()
        assert spent < 1000, f"{spent} Redis commands in {time.monotonic() - began:.2f}s"


# --- 4. stale entries sent after newer ones -----------------------------------------------

def test_an_entry_handed_back_behind_a_newer_one_is_not_sent_after_it(
    redis_url: str, nodes: list[Node],
) -> None:
    """The stopping leader hands its unfinished entry back by re-adding it at the end of
    the stream, behind an entry for the same group that another instance queued after this
    one stopped reading. For a receiver without ``send_resolved`` (Slack's default) too,
    the receiver must not hear the old state last, the shared log must not go back to it,
    and the next flush must not send the newer state again."""
    busy = Reply(status=503, headers={"Retry-After": "30"})
    with FaultServer(busy) as hook:
        url = hook.url + "/hook"
        # capacity 1: with the first entry in back-off, a reads nothing more (a read
        # under way when pause() is called could otherwise still take the newer entry)
        a = add(nodes, redis_url, "a", {"hook": url}, retry=BACK_OFF, send_resolved=False,
                capacity=1)
        assert leader(a) is a
        b = add(nodes, redis_url, "b", {"hook": url}, retry=BACK_OFF, send_resolved=False)
        assert a.notify(EMAILS)
        wait_for(lambda: len(hook.requests()) == 1, message="the first attempt (503)")
        a.outbox.pause()  # what close() does first: a reads no more
        assert b.notify(EMAILS, SMS)  # a new alert joins the group: a newer notification
        a.close(0.5)  # hands the unfinished one back, behind the newer one
        assert a.counted("handed_back") == 1.0
        wait_for(lambda: len(hook.answered()) >= 1, timeout_s=15, message="a delivery")
        wait_for(b.settled, timeout_s=15, message="both entries settled")
        counts = alert_counts(hook)
        assert counts[-1] == 2, f"the older state was delivered last: {counts}"
        assert counts == [2], f"the older state was delivered after the newer: {counts}"
        logged = b.log.get(GROUP_KEY, "hook")
        assert logged is not None
        assert len(logged.firing) == 2, "the shared log went back to the older state"
        assert b.notify(EMAILS, SMS) == [], "the newer state is queued a second time"


def test_a_leader_cut_off_from_redis_does_not_deliver_after_the_new_leader(
    redis_server: RedisServer, redis_url: str, nodes: list[Node],
) -> None:
    """Leader ``a`` loses Redis while a trigger is in back-off; its lease expires and ``b``
    takes over and delivers the resolution. ``a`` still holds the trigger in its queue;
    when its back-off ends it must not send it (the receiver would end on ``firing`` for an
    alert that resolved): it cannot confirm the entry is still its own, so it stops."""
    proxy = StallProxy(redis_server.port)
    busy = Reply(status=503, headers={"Retry-After": "3"})
    try:
        with FaultServer(busy) as hook:
            url = hook.url + "/hook"
            a = add(nodes, proxy.url, "a", {"hook": url}, retry=BACK_OFF)
            assert leader(a) is a
            b = add(nodes, redis_url, "b", {"hook": url}, retry=BACK_OFF)
            assert a.notify(EMAILS)
            wait_for(lambda: len(hook.requests()) == 1, message="the first attempt (503)")
            proxy.flowing.clear()  # a is cut off from Redis; its lease runs out
            wait_for(lambda: b.outbox.leads("hook"), message="b taking the lease")
            assert b.notify(EMAILS_RESOLVED)
            wait_for(lambda: len(hook.answered()) == 1, timeout_s=15,
                     message="the resolution")
            wait_for(lambda: a.counted("handed_back") == 1.0, timeout_s=15,
                     message="a's back-off ending without a send")
            assert a.dispatcher.flush(5.0)
            assert requested(hook) == ["firing", "resolved"], "the receiver ends on firing"
            assert statuses(hook) == ["resolved"]
    finally:
        proxy.close()


# --- 5. transitions decided differently by two instances ----------------------------------

def test_an_instance_whose_flush_has_no_alerts_does_not_swallow_the_resolution(
    redis_url: str, nodes: list[Node],
) -> None:
    """An engine passes a resolved alert only if *it* announced the alert while it fired
    (``engine._flush``: ``instance.announced``); an instance whose first flush of the group
    came after the resolution passes no alerts. That flush must neither send nor record
    anything in the *shared* log, so the instance that did announce the alert still sends
    the resolution."""
    with FaultServer() as hook:
        url = hook.url + "/hook"
        a = add(nodes, redis_url, "a", {"hook": url})
        b = add(nodes, redis_url, "b", {"hook": url})
        assert a.notify(EMAILS)
        wait_for(lambda: a.log.get(GROUP_KEY, "hook") is not None, message="the trigger")
        assert b.notify() == []  # b's flush: the alert resolved before b ever flushed it
        queued = a.notify(EMAILS_RESOLVED)
        assert queued, "the resolution is never sent (the shared log says it was)"
        wait_for(lambda: len(hook.answered()) == 2, message="the resolution")
        assert statuses(hook) == ["firing", "resolved"]


def test_two_instances_deciding_one_resolution_around_a_delivery_queue_it_once(
    redis_url: str, nodes: list[Node],
) -> None:
    """``a`` decides the resolution while the trigger is still on its way, ``b`` a moment
    later, after the trigger was delivered (so the two saw different delivered states):
    the transition must still enter the outbox once, and the receiver hear the resolution
    once. (Threads are held between the decision and the enqueue to pin the interleaving
    that two processes ticking independently can produce.)"""
    busy = Reply(status=503, headers={"Retry-After": "1"})
    with FaultServer(busy) as hook:
        url = hook.url + "/hook"
        a = add(nodes, redis_url, "a", {"hook": url}, retry=BACK_OFF)
        assert leader(a) is a
        b = add(nodes, redis_url, "b", {"hook": url}, retry=BACK_OFF)
        gates = {n.name: (threading.Event(), threading.Event()) for n in (a, b)}
        for node in (a, b):
            real = node.outbox.enqueue
            reached, go = gates[node.name]

            def held(*args: Any, _real: Any = real, _reached: threading.Event = reached,
                     _go: threading.Event = go) -> Any:
                _reached.set()
                assert _go.wait(20)
                return _real(*args)

            node.outbox.enqueue = held  # type: ignore[method-assign,assignment]
        gates["a"][1].set()
        assert a.notify(EMAILS)  # the trigger: first attempt 503, retried after 1 s
        wait_for(lambda: len(hook.requests()) == 1, message="the first attempt")
        for event in (*gates["a"], *gates["b"]):
            event.clear()
        decided = [threading.Thread(target=a.notify, args=(EMAILS_RESOLVED,))]
        decided[0].start()
        wait_for(gates["a"][0].is_set, message="a deciding before the delivery")
        wait_for(lambda: a.log.get(GROUP_KEY, "hook") is not None, message="the delivery")
        decided.append(threading.Thread(target=b.notify, args=(EMAILS_RESOLVED,)))
        decided[1].start()
        wait_for(gates["b"][0].is_set, message="b deciding after the delivery")
        gates["a"][1].set()
        decided[0].join(10)
        gates["b"][1].set()
        decided[1].join(10)
        wait_for(a.settled, timeout_s=15, message="everything settled")
        assert statuses(hook) == ["firing", "resolved"]
        assert a.enqueued("queued") + b.enqueued("queued") == 2.0
        assert b.enqueued("duplicate") == 1.0


# --- 6. bounded state ---------------------------------------------------------------------

def test_stopped_instances_leave_no_consumers_in_the_group(
    redis_url: str, nodes: list[Node],
) -> None:
    """Every process is a new consumer (``host:pid:uuid``) of a receiver's group
    ``senders``; one that stops must leave it, or each restart or deploy of a sender adds
    one for good."""
    with FaultServer() as hook:
        for n in range(3):
            node = add(nodes, redis_url, f"gen-{n}", {"hook": hook.url + "/hook"})
            assert leader(node) is node
            assert node.notify(EMAILS, group_key=f"route/group-{n}")
            wait_for(lambda sent=n + 1: len(hook.answered()) == sent,  # type: ignore[misc]
                     message="the notification")
            wait_for(node.settled, message="the notification settled")
            node.close()
        check = redis.Redis.from_url(redis_url)
        consumers: Any = check.xinfo_consumers(node.outbox.stream("hook"), GROUP)
        check.close()
        assert len(consumers) <= 1, [c["name"] for c in consumers]


# --- 7. fail open when Redis does not answer ----------------------------------------------

def test_fail_open_with_an_unresponsive_redis_pays_the_timeout_once_not_per_call(
    nodes: list[Node], redis_url: str,
) -> None:
    """Fail open with a Redis that accepts connections and never answers (a partition, a
    stalled server), rather than a stopped one that refuses at once: the engine's flush of
    a few groups (each a clock read, a log read, a last-queued read and an enqueue) must
    pay the socket time-out once, not once per call, before everything is sent locally."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    try:
        with FaultServer() as hook:
            a = add(nodes, f"redis://127.0.0.1:{listener.getsockname()[1]}/0", "a",
                    {"hook": hook.url + "/hook"})
            began = time.monotonic()
            for n in range(6):
                a.notify(EMAILS, group_key=f"route/group-{n}")
            spent = time.monotonic() - began
            wait_for(lambda: len(hook.answered()) == 6, timeout_s=15, message="all six")
            assert a.enqueued("unavailable") == 6.0
            assert spent < 1.0, f"flushing six groups took {spent:.1f}s (socket timeout 0.5s)"
    finally:
        listener.close()


# --- 8. versions across a restart and an expiry -------------------------------------------

def _held_first(arrived: threading.Event, release: threading.Event) -> Responder:
    """A responder that holds the first request until ``release`` (signalling ``arrived``)
    and answers every request 200."""
    first = threading.Lock()

    def answer(request: Request) -> Reply:
        if first.acquire(blocking=False):
            arrived.set()
            release.wait(20)
        return Reply()

    return answer


def test_a_delivery_finishing_across_a_redis_restart_does_not_swallow_the_resolution(
    redis_server: RedisServer, redis_url: str, nodes: list[Node],
) -> None:
    """A request is under way when Redis restarts without persistence, and succeeds after
    it. The group's versions start again from nothing; the version the old entry had must
    not be recorded as delivered in the new numbering, or the group's next notification
    (here the resolution, decided once) counts as delivered already and is never sent."""
    arrived, release = threading.Event(), threading.Event()
    try:
        with FaultServer(responder=_held_first(arrived, release)) as hook:
            a = add(nodes, redis_url, "a", {"hook": hook.url + "/hook"}, timeout_s=15.0)
            assert leader(a) is a
            assert a.notify(EMAILS)
            assert arrived.wait(10)
            redis_server.restart()
            wait_for(lambda: has_group(a, "hook"), message="the group created again")
            release.set()
            wait_for(lambda: len(hook.answered()) == 1, message="the trigger answered")
            wait_for(lambda: a.log.get(GROUP_KEY, "hook") is not None,
                     message="the trigger logged")
            assert a.dispatcher.flush(5.0)
            assert a.notify(EMAILS_RESOLVED)
            assert a.enqueued("queued") == 2.0  # through the outbox, not failing open
            eventually(lambda: len(hook.answered()) == 2, 5, "the resolution")
            assert statuses(hook) == ["firing", "resolved"], "the resolution was swallowed"
    finally:
        release.set()


def test_a_delivery_finishing_across_a_redis_restart_does_not_swallow_a_newer_state(
    redis_server: RedisServer, redis_url: str, nodes: list[Node],
) -> None:
    """As above, with the newer state queued after the restart but before the old request
    ends (behind it in the receiver's queue): it must be sent, not settled as delivered
    because the old entry's version is recorded on the new numbering."""
    arrived, release = threading.Event(), threading.Event()
    try:
        with FaultServer(responder=_held_first(arrived, release)) as hook:
            a = add(nodes, redis_url, "a", {"hook": hook.url + "/hook"}, timeout_s=15.0)
            assert leader(a) is a
            assert a.notify(EMAILS)
            assert arrived.wait(10)
            redis_server.restart()
            wait_for(lambda: has_group(a, "hook"), message="the group created again")
            assert a.notify(EMAILS, SMS)  # the log went with the restart: a first notification
            assert a.enqueued("queued") == 2.0
            wait_for(lambda: a.outbox._in_flight("hook") == 2,
                     message="the newer state read, behind the request under way")
            release.set()
            wait_for(a.settled, message="both settled")
            assert alert_counts(hook) == [1, 2], "the newer state was never sent"
    finally:
        release.set()


def test_a_group_whose_version_expired_first_is_still_notified(
    redis_url: str, nodes: list[Node],
) -> None:
    """A group's version and last queued state expire ``state_ttl_s`` after it was queued,
    its delivered version ``state_ttl_s`` after the delivery, a little later. A group that
    notifies again in between starts again from version 1, which must not count as
    delivered already: the resolution is decided once and would never be sent."""
    busy = Reply(status=503, headers={"Retry-After": "1"})
    with FaultServer(busy) as hook:
        a = add(nodes, redis_url, "a", {"hook": hook.url + "/hook"}, retry=BACK_OFF,
                state_ttl_s=1.5)
        assert leader(a) is a
        assert a.notify(EMAILS)  # queued now, delivered a second later
        wait_for(lambda: len(hook.answered()) == 1, message="the trigger")
        wait_for(a.settled, message="the trigger settled")
        version = a.outbox._state_key("ver", "hook", GROUP_KEY)
        done = a.outbox._state_key("done", "hook", GROUP_KEY)
        wait_for(lambda: not a.client.exists(version), message="the version expiring")
        assert a.client.exists(done), "the delivered version expired too: no window"
        assert a.notify(EMAILS_RESOLVED)
        eventually(lambda: len(hook.answered()) == 2, 5, "the resolution")
        assert statuses(hook) == ["firing", "resolved"], "the resolution was swallowed"


# --- 9. key layout ------------------------------------------------------------------------

def test_a_receiver_named_dead_does_not_read_the_dead_letters(
    redis_url: str, nodes: list[Node],
) -> None:
    """Receiver names are free (``[A-Za-z0-9][A-Za-z0-9_.-]*``), and a receiver's stream is
    ``<prefix>:outbox:q:<receiver>``; a receiver called ``dead`` must not share its stream
    with the dead letters: they would be read as its notifications."""
    with FaultServer(default=Reply(status=400, body="bad")) as hook, FaultServer() as dead:
        a = add(nodes, redis_url, "a", {"hook": hook.url + "/hook", "dead": dead.url + "/d"})
        assert leader(a, receiver="dead") is a
        assert a.notify(EMAILS, receivers=["hook"])
        wait_for(lambda: a.value("stem_observe_outbox_dead_letters_total", receiver="hook",
                                 reason="failed") == 1.0, message="the dead letter")
        check = redis.Redis.from_url(redis_url)
        base = int(check.info("stats")["total_commands_processed"])
        began = time.monotonic()
        wait_for(lambda: int(check.info("stats")["total_commands_processed"]) - base > 1000
                 or time.monotonic() - began > 2.0, message="two seconds or a flood")
        spent = int(check.info("stats")["total_commands_processed"]) - base
        entries: Any = check.xrange(a.outbox.dead_stream)
        check.close()
        assert [f[b"reason"] for _, f in entries] == [b"failed"], (
            f"{spent} commands; dead stream: {[f[b'reason'] for _, f in entries][:5]}")


# --- 10. a restart while a resolution is in back-off --------------------------------------

def test_a_resolution_in_back_off_across_a_redis_restart_is_still_sent(
    redis_server: RedisServer, redis_url: str, nodes: list[Node],
) -> None:
    """The resolution is in back-off when Redis restarts without persistence: the stream
    and the log are gone, and the engine decides a resolution once. The instance holding
    it is the only one that can still send it."""
    busy = Reply(status=503, headers={"Retry-After": "1"})
    with FaultServer() as hook:
        a = add(nodes, redis_url, "a", {"hook": hook.url + "/hook"}, retry=BACK_OFF)
        assert leader(a) is a
        assert a.notify(EMAILS)
        wait_for(lambda: len(hook.answered()) == 1, message="the trigger")
        wait_for(lambda: a.log.get(GROUP_KEY, "hook") is not None, message="logged")
        hook.script([busy])
        assert a.notify(EMAILS_RESOLVED)
        wait_for(lambda: len(hook.requests()) == 2, message="the resolution's first attempt")
        redis_server.restart()
        eventually(lambda: len(hook.answered()) == 2, 8, "the resolution")
        assert statuses(hook) == ["firing", "resolved"], "the receiver stays on firing"
