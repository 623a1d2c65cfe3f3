"""The Stem watcher against a real Redis holding what Stem writes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from stem_observe import events as ev
from stem_observe import signals
from stem_observe.sources.stem.keys import StemKeys
from stem_observe.sources.stem.watcher import StemWatcher, WatcherOptions
from stem_observe.sources.stem.wire import Envelope, dart_iso, dumps, heartbeat_to_json
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_for

KEYS = StemKeys()


class Seen:
    """Every event the watcher sends."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def __call__(self, sender: object, *, event: ev.Event) -> None:
        if sender == "stem":
            self.events.append(event)

    def of(self, kind: type[ev.Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
def seen() -> Iterator[Seen]:
    receiver = Seen()
    for sig in signals.SIGNALS.values():
        sig.connect(receiver)
    yield receiver
    for sig in signals.SIGNALS.values():
        sig.disconnect(receiver)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def make_watcher(client: redis.Redis, **options: Any) -> StemWatcher:
    return StemWatcher(client, WatcherOptions(**options), registry=CollectorRegistry())


def status(task_id: str, state: str, *, attempt: int = 0, meta: dict[str, Any] | None = None,
           error: dict[str, Any] | None = None, updated: float | None = None) -> str:
    now = updated if updated is not None else time.time()
    return dumps({
        "id": task_id, "state": state, "payload": None, "error": error,
        "meta": {"task": "emails.send", "stem.task": "emails.send", "queue": "emails",
                 "stem.queue": "emails", **(meta or {})},
        "attempt": attempt, "createdAt": dart_iso(now - 10), "updatedAt": dart_iso(now),
    })


def write_status(client: redis.Redis, task_id: str, state: str, **kw: Any) -> None:
    client.set(KEYS.result(task_id), status(task_id, state, **kw), px=86_400_000)


def dead_letter(task_id: str, *, dead_at: float, reason: str = "max-retries-exhausted",
                queue: str = "emails") -> str:
    envelope = Envelope(id=task_id, name="emails.send", queue=queue, attempt=3, max_retries=3,
                        enqueued_at=dead_at - 60, headers={"traceparent": "00-" + "a" * 32
                                                           + "-" + "b" * 16 + "-01"})
    return dumps({"envelope": envelope.to_json(), "reason": reason,
                  "meta": {"error": "SMTPError: boom"}, "deadAt": dart_iso(dead_at)})


def sample(watcher: StemWatcher, name: str, **labels: str) -> float:
    return watcher.registry.get_sample_value(name, labels) or 0.0


# --------------------------------------------------------------------------- queues


def test_queue_snapshots_count_like_stem_and_vanished_queues_are_dropped(
    client: redis.Redis, seen: Seen,
) -> None:
    now = time.time()
    envelope = Envelope(id="t1", name="emails.send", queue="emails", enqueued_at=now)
    client.xgroup_create(KEYS.stream("emails"), KEYS.group("emails"), "0", mkstream=True)
    for _ in range(3):
        client.xadd(KEYS.stream("emails"), envelope.stream_fields())
    client.xreadgroup(KEYS.group("emails"), "worker-1", {KEYS.stream("emails"): ">"}, count=1)
    client.xadd(KEYS.stream("emails", 5), envelope.stream_fields())  # no group yet: pending
    client.zadd(KEYS.delayed("emails"), {dumps(envelope.to_json()): int((now - 1) * 1000),
                                         dumps({**envelope.to_json(), "id": "t2"}):
                                         int((now + 60) * 1000)})
    client.lpush(KEYS.dead("reports"), dead_letter("d1", dead_at=now - 30, queue="reports"))
    client.xadd(KEYS.stream("stem.control.broadcast"), envelope.stream_fields())
    client.xadd(KEYS.stream("billing.control.v2"), envelope.stream_fields())  # a user queue
    watcher = make_watcher(client, discover_interval_s=0)
    watcher.poll_once(now)
    snapshots = {s.queue: s for s in seen.of(ev.QueueSnapshot)}
    assert set(snapshots) == {"emails", "reports", "billing.control.v2"}  # not Stem's control
    emails = snapshots["emails"]
    assert (emails.pending, emails.inflight, emails.delayed, emails.delayed_overdue,
            emails.dead_letters) == (3, 1, 2, 1, 0)
    assert emails.oldest_pending_age_s is not None
    assert 0 <= emails.oldest_pending_age_s < 60
    reports = snapshots["reports"]
    assert reports.dead_letters == 1
    assert reports.oldest_dead_letter_age_s == pytest.approx(30, abs=1)
    assert not client.exists(KEYS.stream("emails", 1))  # observing created nothing
    client.delete(KEYS.dead("reports"))
    seen.events.clear()
    watcher.poll_once()
    gone = [s for s in seen.of(ev.QueueSnapshot) if s.gone]
    assert [s.queue for s in gone] == ["reports"]


# --------------------------------------------------------------------------- statuses


def test_reconcile_emits_each_transition_once_with_the_records_times(
    client: redis.Redis, seen: Seen,
) -> None:
    write_status(client, "old", "succeeded", updated=time.time() - 60)  # history
    watcher = make_watcher(client)
    assert watcher.reconcile(prime=True) == 0  # the first scan only learns what is there
    assert not seen.of(ev.TaskSucceeded)
    started = time.time() - 5
    write_status(client, "t1", "running", meta={"worker": "w1",
                                                 "startedAt": dart_iso(started)})
    assert watcher.reconcile() == 1
    (prerun,) = seen.of(ev.TaskPrerun)
    assert (prerun.task_id, prerun.task_name, prerun.queue, prerun.worker_id) == (
        "t1", "emails.send", "emails", "w1")
    assert prerun.occurred_at == pytest.approx(started, abs=0.001)
    assert not prerun.in_process
    write_status(client, "t1", "succeeded", meta={
        "worker": "w1", "startedAt": dart_iso(started), "completedAt": dart_iso(started + 2.5)})
    assert watcher.reconcile() == 1
    assert watcher.reconcile() == 0  # seen already: nothing twice
    (succeeded,) = seen.of(ev.TaskSucceeded)
    assert succeeded.runtime_s == pytest.approx(2.5, abs=0.001)
    assert succeeded.occurred_at == pytest.approx(started + 2.5, abs=0.001)
    assert len(seen.of(ev.TaskPrerun)) == 1


def test_a_transition_first_seen_by_the_start_up_scan_is_not_swallowed(
    client: redis.Redis, seen: Seen,
) -> None:
    write_status(client, "history", "running", updated=time.time() - 60)
    watcher = make_watcher(client)
    write_status(client, "live", "running", updated=watcher.started_at + 0.5)
    assert watcher.reconcile(prime=True) == 1
    assert [e.task_id for e in seen.of(ev.TaskPrerun)] == ["live"]


def test_an_unseen_running_version_still_gives_a_start_and_retries_advance_attempts(
    client: redis.Redis, seen: Seen,
) -> None:
    watcher = make_watcher(client)
    watcher.reconcile(prime=True)
    now = time.time()
    write_status(client, "t1", "retried", attempt=0, meta={"retryDelayMs": 2000},
                 error={"type": "TimeoutError", "message": "slow", "stack": None,
                        "retryable": True, "meta": {}}, updated=now)
    watcher.reconcile()
    (retry,) = seen.of(ev.TaskRetry)
    assert (retry.attempt, retry.error_type, retry.retry_delay_s) == (0, "TimeoutError", 2.0)
    assert retry.next_retry_at == pytest.approx(now + 2, abs=0.01)
    # Attempt 1 ran and failed for good before the next scan: its start is not lost.
    write_status(client, "t1", "failed", attempt=1, meta={
        "worker": "w2", "startedAt": dart_iso(now + 3), "failedAt": dart_iso(now + 4)},
        error={"type": "TimeoutError", "message": "slow again", "stack": "trace",
               "retryable": False, "meta": {}}, updated=now + 4)
    watcher.reconcile()
    (prerun,) = seen.of(ev.TaskPrerun)
    assert (prerun.attempt, prerun.occurred_at) == (1, pytest.approx(now + 3, abs=0.001))
    (failed,) = seen.of(ev.TaskFailed)
    assert (failed.attempt, failed.error_message, failed.stacktrace) == (1, "slow again", "trace")
    assert failed.runtime_s == pytest.approx(1.0, abs=0.001)
    # An older version read late (a slow notification) changes nothing.
    write_status(client, "t1", "running", attempt=1, updated=now + 3)
    assert watcher.reconcile() == 0


def test_cancelled_records_become_revocations(client: redis.Redis, seen: Seen) -> None:
    watcher = make_watcher(client)
    watcher.reconcile(prime=True)
    write_status(client, "t1", "cancelled", meta={"revoked": True,
                                                   "revokedReason": "user request"})
    write_status(client, "t2", "cancelled", meta={"stem.expired": True})
    watcher.reconcile()
    assert sorted(e.reason for e in seen.of(ev.TaskRevoked)) == ["expired", "user request"]


def test_unparsable_records_are_skipped_and_counted(client: redis.Redis, seen: Seen) -> None:
    watcher = make_watcher(client)
    watcher.reconcile(prime=True)
    client.set(KEYS.result("bad-json"), "{not json")
    client.set(KEYS.result("odd-state"), dumps({"id": "odd-state", "state": "exploded"}))
    write_status(client, "fine", "running")
    assert watcher.reconcile() == 1
    assert sample(watcher, "stem_observe_stem_parse_errors_total", kind="status") == 1
    assert sample(watcher, "stem_observe_stem_parse_errors_total", kind="status_state") == 1


def test_keyspace_notifications_deliver_transitions_and_a_dropped_subscription_loses_none(
    client: redis.Redis, redis_server: RedisServer, seen: Seen,
) -> None:
    client.config_set("notify-keyspace-events", "")
    watcher = make_watcher(client, poll_interval_s=0.1, reconcile_interval_s=3600,
                           notifications="enable")
    watcher.start()
    try:
        assert "K" in str(client.config_get("notify-keyspace-events")["notify-keyspace-events"])
        wait_for(lambda: watcher.listening.is_set() and watcher.reconciles >= 1,
                 message="subscribed and primed")
        for index in range(50):
            write_status(client, f"n{index}", "running")
        wait_for(lambda: len(seen.of(ev.TaskPrerun)) == 50, message="50 notified starts")
        assert sample(watcher, "stem_observe_stem_transitions_total", source="notification") > 0
        # Drop the subscription: whatever is written meanwhile arrives by reconcile, once.
        client.client_kill_filter(_type="pubsub")
        for index in range(50):
            write_status(client, f"n{index}", "succeeded")
        wait_for(lambda: len(seen.of(ev.TaskSucceeded)) == 50, message="50 outcomes")
        watcher.reconcile()
        assert len(seen.of(ev.TaskSucceeded)) == 50
        assert len({e.task_id for e in seen.of(ev.TaskSucceeded)}) == 50
    finally:
        watcher.close()
        client.config_set("notify-keyspace-events", "")


# --------------------------------------------------------------------------- dead letters


def test_new_dead_letters_are_sent_once_with_reason_error_and_trace_context(
    client: redis.Redis, seen: Seen,
) -> None:
    now = time.time()
    client.lpush(KEYS.dead("emails"), dead_letter("history", dead_at=now - 100))
    watcher = make_watcher(client)
    watcher.poll_once()
    assert not seen.of(ev.TaskDeadLettered)  # already there at start
    client.lpush(KEYS.dead("emails"), dead_letter("d1", dead_at=now - 1))
    client.lpush(KEYS.dead("emails"), "{broken")
    client.lpush(KEYS.dead("emails"), dead_letter("d2", dead_at=now, reason="unregistered-task"))
    watcher.poll_once()
    letters = seen.of(ev.TaskDeadLettered)
    assert [(e.task_id, e.reason) for e in letters] == [
        ("d1", "max-retries-exhausted"), ("d2", "unregistered-task")]
    assert letters[0].error == "SMTPError: boom"
    assert letters[0].headers["traceparent"].startswith("00-aaaa")
    assert letters[0].occurred_at == pytest.approx(now - 1, abs=0.001)
    assert sample(watcher, "stem_observe_stem_parse_errors_total", kind="dead_letter") >= 1
    # A replay removes d1 and a new failure arrives between two polls: only d3 is news.
    client.lrem(KEYS.dead("emails"), 1, dead_letter("d1", dead_at=now - 1))
    client.lpush(KEYS.dead("emails"), dead_letter("d3", dead_at=now + 1))
    watcher.poll_once()
    watcher.poll_once()
    assert [e.task_id for e in seen.of(ev.TaskDeadLettered)] == ["d1", "d2", "d3"]


# --------------------------------------------------------------------------- heartbeats


def test_heartbeats_from_keys_and_pubsub_and_expiry(client: redis.Redis, seen: Seen) -> None:
    now = time.time()
    beat = heartbeat_to_json(worker_id="w1", namespace="stem", timestamp=now, isolate_count=2,
                             inflight=1, queues={"emails": 1},
                             extras={"concurrency": 4, "subscriptions": {"queues": ["emails"]}})
    client.set(KEYS.heartbeat("w1"), dumps(beat), px=60_000)
    client.sadd(KEYS.heartbeats(), "w1")
    watcher = make_watcher(client, heartbeat_interval_s=7, poll_interval_s=0.1)
    watcher.poll_once()
    (first,) = seen.of(ev.WorkerHeartbeat)
    assert (first.worker_id, first.inflight, first.concurrency, first.interval_s) == (
        "w1", 1, 4, 7)
    assert "emails" in {s.queue for s in seen.of(ev.QueueSnapshot)}  # found by subscription
    watcher.poll_once()
    assert len(seen.of(ev.WorkerHeartbeat)) == 1  # the same beat is not sent twice
    watcher.start()
    try:
        wait_for(lambda: watcher.polls >= 3, message="polls")
        published = {**beat, "workerId": "w2", "timestamp": dart_iso(time.time())}
        wait_for(lambda: client.publish(KEYS.heartbeat_channel("stem"), dumps(published)) > 0,
                 message="the watcher's subscription")
        wait_for(lambda: any(e.worker_id == "w2" for e in seen.of(ev.WorkerHeartbeat)),
                 message="a published heartbeat")
        client.delete(KEYS.heartbeat("w1"))  # as if its 60 s TTL ran out
        wait_for(lambda: any(e.worker_id == "w1" and e.gone
                             for e in seen.of(ev.WorkerShutdown)), message="w1 expiring")
    finally:
        watcher.close()


# --------------------------------------------------------------------------- resilience


def test_the_watcher_survives_redis_restarting(
    client: redis.Redis, redis_server: RedisServer, seen: Seen,
) -> None:
    watcher = make_watcher(client, poll_interval_s=0.1)
    watcher.start()
    try:
        wait_for(watcher.ready.is_set, message="ready")
        redis_server.stop()
        wait_for(lambda: not watcher.ready.is_set(), message="not ready while Redis is down")
        assert sample(watcher, "stem_observe_stem_redis_up") == 0
        redis_server.start()
        wait_for(watcher.ready.is_set, timeout_s=20, message="ready again")
        write_status(client, "after", "running")
        wait_for(lambda: watcher.reconcile() or any(
            e.task_id == "after" for e in seen.of(ev.TaskPrerun)), message="a new transition")
    finally:
        watcher.close()
