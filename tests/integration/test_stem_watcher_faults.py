"""The watcher's hard cases: each test here once failed against an earlier version."""

from __future__ import annotations

import time

import pytest
import redis

from stem_observe import events as ev
from stem_observe.sources.stem.keys import StemKeys
from stem_observe.sources.stem.wire import dart_iso, dumps, heartbeat_to_json
from tests.integration.test_stem_watcher import (  # the fixtures too
    Seen,
    client,
    dead_letter,
    make_watcher,
    sample,
    seen,
    write_status,
)
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_for

KEYS = StemKeys()
__all__ = ["client", "seen"]  # fixtures used by name


def test_records_the_cache_let_go_are_not_sent_again(client: redis.Redis, seen: Seen) -> None:
    watcher = make_watcher(client, max_tasks=10, clock_skew_s=0)
    watcher.reconcile(prime=True)
    for index in range(20):
        write_status(client, f"t{index}", "succeeded")
    watcher.reconcile()  # 20 news, more than the cache keeps
    assert len(seen.of(ev.TaskSucceeded)) == 20
    watcher.reconcile()
    watcher.reconcile()
    assert len(seen.of(ev.TaskSucceeded)) == 20


def test_a_retry_overwritten_before_any_scan_is_still_reported(
    client: redis.Redis, seen: Seen,
) -> None:
    watcher = make_watcher(client)
    watcher.reconcile(prime=True)
    write_status(client, "t1", "running", attempt=0)
    watcher.reconcile()
    # Attempt 0 failed, was retried, and attempt 1 succeeded, all between two scans.
    write_status(client, "t1", "succeeded", attempt=1)
    watcher.reconcile()
    (retry,) = seen.of(ev.TaskRetry)
    assert (retry.task_id, retry.attempt) == ("t1", 0)
    assert [e.attempt for e in seen.of(ev.TaskSucceeded)] == [1]


def test_a_dead_letter_replay_rewrite_is_not_a_new_failure(
    client: redis.Redis, seen: Seen,
) -> None:
    watcher = make_watcher(client)
    watcher.reconcile(prime=True)
    error: dict[str, object] = {
        "type": "Boom", "message": "x", "stack": None, "retryable": False, "meta": {}}
    now = time.time()
    write_status(client, "t1", "failed", attempt=2, error=error, updated=now)
    watcher.reconcile()
    write_status(client, "t1", "failed", attempt=2, error=error, updated=now + 5,
                 meta={"replayCount": 1})  # what `dlq replay` writes
    watcher.reconcile()
    assert len(seen.of(ev.TaskFailed)) == 1
    # The replayed task runs as the next attempt: a re-run, not a retry.
    write_status(client, "t1", "running", attempt=3, updated=now + 6)
    watcher.reconcile()
    assert not seen.of(ev.TaskRetry)
    assert [e.attempt for e in seen.of(ev.TaskPrerun)] == [3]


def test_rate_limited_reschedules_are_not_retries(client: redis.Redis, seen: Seen) -> None:
    watcher = make_watcher(client)
    watcher.reconcile(prime=True)
    write_status(client, "t1", "retried", meta={"retryAfterMs": 500, "rateLimited": True})
    watcher.reconcile()
    write_status(client, "t1", "running")
    watcher.reconcile()
    assert not seen.of(ev.TaskRetry)
    assert len(seen.of(ev.TaskPrerun)) == 1


def test_the_listener_survives_a_record_it_cannot_use(client: redis.Redis, seen: Seen) -> None:
    client.config_set("notify-keyspace-events", "K$")
    watcher = make_watcher(client, poll_interval_s=0.1, reconcile_interval_s=3600)
    watcher.start()
    try:
        wait_for(lambda: watcher.listening.is_set() and watcher.reconciles >= 1,
                 message="listening")
        write_status(client, "odd", "retried", meta={"retryDelayMs": 10**400})
        write_status(client, "after", "running")
        wait_for(lambda: any(e.task_id == "after" for e in seen.of(ev.TaskPrerun)),
                 message="the next record after an odd one")
        assert all(thread.is_alive() for thread in watcher._threads)
    finally:
        watcher.close()
        client.config_set("notify-keyspace-events", "")


def test_enabled_notifications_come_back_after_redis_restarts(
    client: redis.Redis, redis_server: RedisServer, seen: Seen,
) -> None:
    watcher = make_watcher(client, poll_interval_s=0.1, reconcile_interval_s=3600,
                           notifications="enable")
    watcher.start()
    try:
        wait_for(watcher.listening.is_set, message="listening")
        redis_server.restart()  # the server forgets CONFIG SET
        wait_for(lambda: "K" in str(client.config_get("notify-keyspace-events").get(
            "notify-keyspace-events", "")), timeout_s=20, message="notifications set again")
        wait_for(watcher.listening.is_set, message="subscribed again")
        write_status(client, "fresh", "running")
        wait_for(lambda: any(e.task_id == "fresh" for e in seen.of(ev.TaskPrerun)),
                 message="a transition by notification after the restart")
    finally:
        watcher.close()
        client.config_set("notify-keyspace-events", "")


def test_a_key_of_the_wrong_type_spoils_only_its_own_step(
    client: redis.Redis, seen: Seen,
) -> None:
    client.set(KEYS.heartbeats(), "not a set")
    client.lpush(KEYS.dead("emails"), dead_letter("d1", dead_at=time.time()))
    watcher = make_watcher(client)
    watcher.poll_once()
    assert [s.queue for s in seen.of(ev.QueueSnapshot)] == ["emails"]
    assert sample(watcher, "stem_observe_stem_step_errors_total", step="heartbeats") == 1


def test_workers_seen_only_on_the_channel_are_not_declared_gone(
    client: redis.Redis, seen: Seen,
) -> None:
    watcher = make_watcher(client, poll_interval_s=0.05)
    watcher.start()
    try:
        wait_for(watcher.listening.is_set, message="listening")
        beat = heartbeat_to_json(worker_id="pubsub-only", namespace="stem",
                                 timestamp=time.time(), isolate_count=1, inflight=0)
        wait_for(lambda: client.publish(KEYS.heartbeat_channel(), dumps(beat)) > 0,
                 message="a subscriber")
        wait_for(lambda: seen.of(ev.WorkerHeartbeat), message="the heartbeat")
        polls = watcher.polls
        wait_for(lambda: watcher.polls >= polls + 5, message="more polls")
        assert not seen.of(ev.WorkerShutdown)
    finally:
        watcher.close()


def test_older_heartbeats_are_not_sent_after_newer_ones(client: redis.Redis, seen: Seen) -> None:
    watcher = make_watcher(client)
    now = time.time()
    for timestamp in (now, now - 10):
        beat = heartbeat_to_json(worker_id="w", namespace="stem", timestamp=timestamp,
                                 isolate_count=1, inflight=0)
        client.set(KEYS.heartbeat("w"), dumps(beat), px=60_000)
        client.sadd(KEYS.heartbeats(), "w")
        watcher.poll_once()
    (sent,) = seen.of(ev.WorkerHeartbeat)
    assert sent.timestamp == pytest.approx(now, abs=1e-5)


def test_dead_letters_from_a_worker_with_a_slow_clock_are_not_missed(
    client: redis.Redis, seen: Seen,
) -> None:
    watcher = make_watcher(client)
    now = time.time()
    client.lpush(KEYS.dead("emails"), dead_letter("first", dead_at=now))
    watcher.poll_once()  # primes
    client.lpush(KEYS.dead("emails"), dead_letter("new", dead_at=now + 1))
    client.lpush(KEYS.dead("emails"), dead_letter("skewed", dead_at=now - 30))
    watcher.poll_once()
    assert sorted(e.task_id for e in seen.of(ev.TaskDeadLettered)) == ["new", "skewed"]


def test_a_burst_of_dead_letters_is_sent_once(client: redis.Redis, seen: Seen) -> None:
    watcher = make_watcher(client)
    now = time.time()
    client.lpush(KEYS.dead("emails"), dead_letter("first", dead_at=now))
    watcher.poll_once()
    pipe = client.pipeline(transaction=False)
    for index in range(6000):
        pipe.lpush(KEYS.dead("emails"), dead_letter(f"b{index}", dead_at=now + index / 1000))
    pipe.execute()
    watcher.poll_once()
    assert len(seen.of(ev.TaskDeadLettered)) == 6000
    client.lpush(KEYS.dead("emails"), dead_letter("last", dead_at=now + 10))
    watcher.poll_once()
    assert len(seen.of(ev.TaskDeadLettered)) == 6001


def test_beat_history_becomes_schedule_signals_with_drift(client: redis.Redis, seen: Seen) -> None:
    now = time.time()
    client.zadd("stem:schedule:index", {"nightly": int(now * 1000)})
    client.hset("stem:schedule:nightly", mapping={"taskName": "reports.nightly",
                                                  "queue": "reports"})
    history = "stem:schedule:nightly:history"

    def run(scheduled: float, executed: float, success: bool, error: str = "") -> None:
        client.xadd(history, {"scheduledAt": dart_iso(scheduled), "executedAt": dart_iso(executed),
                              "success": "true" if success else "false", "durationMs": "12",
                              "error": error})

    run(now - 120, now - 119, True)  # history at start
    watcher = make_watcher(client)
    watcher.poll_once()
    assert not seen.of(ev.ScheduleEntryDispatched)
    run(now - 60, now - 58.5, True)
    run(now, now + 0.25, False, "StateError: broker down")
    watcher.poll_once()
    (dispatched,) = seen.of(ev.ScheduleEntryDispatched)
    assert (dispatched.entry_id, dispatched.task_name, dispatched.queue) == (
        "nightly", "reports.nightly", "reports")
    assert dispatched.drift_s == pytest.approx(1.5, abs=0.01)
    (failed,) = seen.of(ev.ScheduleEntryFailed)
    assert (failed.error_type, failed.error_message) == ("StateError", "broker down")
    due = seen.of(ev.ScheduleEntryDue)  # each history entry was due before its outcome
    assert [(d.entry_id, d.tick_at) for d in due] == [
        ("nightly", pytest.approx(now - 60, abs=0.01)), ("nightly", pytest.approx(now, abs=0.01))]
    watcher.poll_once()
    assert len(seen.of(ev.ScheduleEntryDispatched)) == 1  # nothing twice
    assert len(seen.of(ev.ScheduleEntryDue)) == 2
