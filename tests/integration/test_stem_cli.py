"""``stem-observe health``, ``observe …`` and ``dlq …`` against a real Redis."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from stem_observe.cli import main
from stem_observe.commands._common import mask_url
from stem_observe.sources.stem.keys import StemKeys
from stem_observe.sources.stem.wire import Envelope, dart_iso, dumps, heartbeat_to_json
from tests.support.redis_server import free_port

KEYS = StemKeys()
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
UUID = "0194f1c2-7b3a-7c4d-8e5f-0123456789ab"
SECRET = "s3cr3t-Pa55w0rd"
ENV_VARS = ("STEM_BROKER_URL", "STEM_RESULT_BACKEND_URL", "STEM_OBSERVE_NAMESPACE",
            "STEM_OBSERVE_BACKEND_NAMESPACE")


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Stem's variables pointing broker and backend at the test server."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STEM_BROKER_URL", redis_url)
    monkeypatch.setenv("STEM_RESULT_BACKEND_URL", redis_url)
    return redis_url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    status, out, err = run(capsys, *argv, "--json")
    assert status == 0, err
    return json.loads(out)


def envelope(task_id: str, *, name: str = "emails.send", attempt: int = 0,
             queue: str = "default") -> Envelope:
    return Envelope(id=task_id, name=name, args={"n": 1}, enqueued_at=T0 - 60, attempt=attempt,
                    queue=queue, meta={"stem.task": name})


def push_dead(client: redis.Redis, env: Envelope, *, dead_at: float,
              reason: str | None = "max-retries-exhausted", ns: StemKeys = KEYS) -> None:
    client.lpush(ns.dead(env.queue), dumps({
        "envelope": env.to_json(), "reason": reason, "meta": {"error": "Exception: boom"},
        "deadAt": dart_iso(dead_at)}))


def enqueue(client: redis.Redis, env: Envelope, ns: StemKeys = KEYS) -> None:
    """What a Stem producer writes for an immediate task."""
    stream = ns.stream(env.queue, env.priority)
    if not client.exists(stream):
        client.xgroup_create(stream, ns.group(env.queue), id="0", mkstream=True)
    fields: Any = env.stream_fields()
    client.xadd(stream, fields)


def heartbeat(client: redis.Redis, worker_id: str, *, age_s: float, queues: dict[str, int],
              isolates: int = 2, namespace: str = "stem") -> None:
    """What ``RedisResultBackend.setWorkerHeartbeat`` writes."""
    body = heartbeat_to_json(
        worker_id=worker_id, namespace=namespace, timestamp=time.time() - age_s,
        isolate_count=isolates, inflight=sum(queues.values()), queues=queues,
        extras={"subscriptions": {"queues": sorted(queues)}},
    )
    client.set(KEYS.heartbeat(worker_id), dumps(body), px=60_000)
    client.sadd(KEYS.heartbeats(), worker_id)


def seed(client: redis.Redis) -> None:
    """default: 3 enqueued, 1 delivered (so 2 pending, 1 in flight), 1 delayed, 2 dead;
    emails: only dead letters; reports: only in a worker's subscriptions."""
    for n in range(3):
        enqueue(client, envelope(f"task-{n}"))
    client.xreadgroup(KEYS.group("default"), "worker-1", {KEYS.stream("default"): ">"}, count=1)
    client.zadd(KEYS.delayed("default"),
                {dumps(envelope("later").to_json()): int((time.time() + 600) * 1000)})
    push_dead(client, envelope(UUID, attempt=3), dead_at=T0)
    push_dead(client, envelope("dead-2", name="reports.build"), dead_at=T0 + 60, reason=None)
    push_dead(client, envelope("mail-1", queue="emails"), dead_at=T0 + 120)
    heartbeat(client, "worker-1", age_s=2, queues={"default": 1, "reports": 0})


# --------------------------------------------------------------------------- observe


def test_observe_queues_table_and_json(env: str, client: redis.Redis,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    seed(client)
    status, out, err = run(capsys, "observe", "queues")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == "Queue   | Pending | Inflight | Delayed | Dead letters | Oldest age"
    assert lines[1] == "--------+---------+----------+---------+--------------+-----------"
    assert [line.split(" | ")[0].strip() for line in lines[2:]] == ["default", "emails",
                                                                     "reports"]
    assert re.fullmatch(r"default \|       2 \|        1 \|       1 \|            2 \|"
                        r" +\d+\.\ds", lines[2]), lines[2]
    assert lines[3] == "emails  |       0 |        0 |       0 |            1 |          -"

    document = run_json(capsys, "observe", "queues")
    rows = {row["queue"]: row for row in document["queues"]}
    assert list(rows) == ["default", "emails", "reports"]
    assert rows["default"]["pending"] == 2
    assert rows["default"]["inflight"] == 1
    assert rows["default"]["delayed"] == 1
    assert rows["default"]["delayedDue"] == 0
    assert rows["default"]["deadLetters"] == 2
    assert 0 <= rows["default"]["oldestPendingAgeSeconds"] < 60
    assert rows["reports"] == {"queue": "reports", "pending": 0, "inflight": 0, "delayed": 0,
                               "delayedDue": 0, "deadLetters": 0,
                               "oldestPendingAgeSeconds": None}


def test_observe_queues_has_no_side_effects_and_says_when_empty(
    env: str, client: redis.Redis, capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(capsys, "observe", "queues") == (0, "No queue data.\n", "")
    assert run_json(capsys, "observe", "queues") == {"queues": []}
    client.zadd(KEYS.delayed("q"), {"x": 1})
    before = sorted(client.keys("*"))
    run(capsys, "observe", "queues")
    assert sorted(client.keys("*")) == before  # Stem's CLI would create 10 streams here


def test_observe_queues_in_another_namespace(env: str, client: redis.Redis,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    other = StemKeys("prod")
    enqueue(client, envelope("a", queue="billing"), ns=other)
    enqueue(client, envelope("b", queue="ignored"))
    assert [q["queue"] for q in run_json(capsys, "observe", "queues", "--namespace", "prod")
            ["queues"]] == ["billing"]
    monkeypatch.setenv("STEM_OBSERVE_NAMESPACE", "prod")
    assert [q["queue"] for q in run_json(capsys, "observe", "queues")["queues"]] == ["billing"]


def test_observe_workers_table_and_json(env: str, client: redis.Redis,
                                        capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    heartbeat(client, "worker-b", age_s=5, queues={"default": 3}, isolates=4,
              namespace="stem-prod")
    heartbeat(client, "worker-a", age_s=1, queues={})
    client.sadd(KEYS.heartbeats(), "expired-worker")  # its key is gone: not listed
    client.set(KEYS.heartbeat("broken"), '{"workerId":"broken","queues":5}')
    client.set(KEYS.heartbeat("odd"), '{"workerId":"odd","timestamp":5}')  # skipped too
    client.sadd(KEYS.heartbeats(), "broken", "odd")
    status, out, err = run(capsys, "observe", "workers")
    assert status == 0, err
    lines = out.splitlines()
    assert [cell.strip() for cell in lines[0].split(" | ")] == [
        "Worker", "Namespace", "Active", "Inflight", "Last heartbeat", "Age"]
    assert re.fullmatch(r"worker-a \| stem      \|      2 \|        0 \| "
                        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3,6}Z +\| +\d+\.\ds", lines[2]),\
        lines[2]
    assert lines[3].startswith("worker-b | stem-prod |      4 |        3 | ")
    assert len(lines) == 4

    document = run_json(capsys, "observe", "workers")
    workers = document["workers"]
    assert [w["id"] for w in workers] == ["worker-a", "worker-b"]
    assert workers[1] | {"lastHeartbeat": None, "ageSeconds": None} == {
        "id": "worker-b", "namespace": "stem-prod", "active": 4, "inflight": 3,
        "lastHeartbeat": None, "ageSeconds": None, "queues": ["default"]}
    assert 4 <= workers[1]["ageSeconds"] < 60

    monkeypatch.delenv("STEM_RESULT_BACKEND_URL")
    assert run(capsys, "observe", "workers") == (0, "No worker data.\n", "")
    assert run_json(capsys, "observe", "workers") == {"workers": []}


def test_observe_dlq_table_and_json(env: str, client: redis.Redis,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "observe", "dlq") == (0, "Dead letter queue is empty.\n", "")
    seed(client)
    client.lpush(KEYS.dead("default"), "garbage")
    status, out, err = run(capsys, "observe", "dlq")
    assert status == 0, err
    assert out.splitlines() == [
        "Queue   | Task ID                              | Task          | Reason        "
        "        | Dead at",
        "--------+--------------------------------------+---------------+---------------"
        "--------+-------------------------",
        f"default | dead-2                               | reports.build | Unknown       "
        f"        | {dart_iso(T0 + 60)}",
        f"default | {UUID} | emails.send   | max-retries-exhausted | {dart_iso(T0)}",
        f"emails  | mail-1                               | emails.send   | max-retries-exh"
        f"austed | {dart_iso(T0 + 120)}",
    ]
    document = run_json(capsys, "observe", "dlq")
    assert document == {"dlq": [
        {"queue": "default", "taskId": "dead-2", "task": "reports.build", "reason": None,
         "deadAt": dart_iso(T0 + 60)},
        {"queue": "default", "taskId": UUID, "task": "emails.send",
         "reason": "max-retries-exhausted", "deadAt": dart_iso(T0)},
        {"queue": "emails", "taskId": "mail-1", "task": "emails.send",
         "reason": "max-retries-exhausted", "deadAt": dart_iso(T0 + 120)},
    ], "truncated": False, "skipped": 1}


def test_observe_dlq_stops_at_1000_entries(env: str, client: redis.Redis,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    element = dumps({"envelope": envelope("x").to_json(), "reason": "r", "meta": None,
                     "deadAt": dart_iso(T0)})
    client.lpush(KEYS.dead("a"), *[element] * 700)
    client.lpush(KEYS.dead("b"), *[element] * 400)
    document = run_json(capsys, "observe", "dlq")
    assert len(document["dlq"]) == 1000
    assert document["truncated"] is True
    _status, out, _err = run(capsys, "observe", "dlq")
    assert out.splitlines()[-1] == "Showing the first 1000 entries."
    client.delete(KEYS.dead("b"))
    client.lpush(KEYS.dead("a"), *[element] * 300)  # exactly 1000: nothing left out
    document = run_json(capsys, "observe", "dlq")
    assert (len(document["dlq"]), document["truncated"]) == (1000, False)


# --------------------------------------------------------------------------- dlq list / show


def test_dlq_list_matches_stems_table(env: str, client: redis.Redis,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    seed(client)
    status, out, err = run(capsys, "dlq", "list", "--queue", "default")
    assert status == 0, err
    assert out.splitlines() == [
        "ID                                  | Task                | Attempts | DeadAt       "
        "         | Reason",
        "------------------------------------+---------------------+---------+--------------"
        "--------+----------------",
        "dead-2                               | reports.build       |       0 | "
        "2026-01-01T00:01:... | -               ",
        f"{UUID} | emails.send         |       3 | 2026-01-01T00:00:... | "
        "max-retries-e...",
    ]

    status, out, err = run(capsys, "dlq", "list", "-q", "default", "--limit", "1")
    assert out.splitlines()[2].startswith("dead-2 ")
    assert out.splitlines()[-1] == "More entries available. Next offset: 1."
    status, out, err = run(capsys, "dlq", "list", "-q", "default", "-l", "1", "--offset", "1")
    assert out.splitlines()[2].startswith(UUID)
    assert out.splitlines()[-1] == "More entries available. Next offset: 2."

    # --since filters the page that was read, as Stem's does.
    status, out, err = run(capsys, "dlq", "list", "-q", "default", "--since",
                           "2026-01-01T00:00:30Z")
    assert [line.split(" ")[0] for line in out.splitlines()[2:]] == ["dead-2"]
    status, out, err = run(capsys, "dlq", "list", "-q", "default", "--since",
                           "2027-01-01T00:00:00+00:00", "--limit", "1")
    assert out.splitlines() == ["No dead letter entries found.",
                                "More entries available. Next offset: 1."]
    assert run(capsys, "dlq", "list", "-q", "nothing") == (
        0, "No dead letter entries found.\n", "")


def test_dlq_list_json(env: str, client: redis.Redis,
                       capsys: pytest.CaptureFixture[str]) -> None:
    seed(client)
    client.lpush(KEYS.dead("default"), "garbage")
    document = run_json(capsys, "dlq", "list", "--queue", "default", "--limit", "2")
    assert document["queue"] == "default"
    assert document["nextOffset"] == 2
    assert document["skipped"] == 1
    (entry,) = document["entries"]
    assert entry == {"queue": "default", "deadAt": dart_iso(T0 + 60), "reason": None,
                     "meta": {"error": "Exception: boom"},
                     "envelope": envelope("dead-2", name="reports.build").to_json()}
    document = run_json(capsys, "dlq", "list", "-q", "default", "--since", "2026-01-01T00:00:30")
    assert [e["envelope"]["id"] for e in document["entries"]] == ["dead-2"]
    assert document["nextOffset"] is None


def test_dlq_rejects_bad_arguments(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["dlq", "list"], ["dlq", "show", "x"], ["dlq", "replay", "--yes"],
                 ["dlq", "list", "-q", "d", "--limit", "0"],
                 ["dlq", "list", "-q", "d", "--since", "yesterday"],
                 ["dlq", "replay", "-q", "d", "--delay", "soon"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2, argv
    _out, err = capsys.readouterr()
    assert "the following arguments are required: -q/--queue" in err


def test_dlq_show(env: str, client: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    seed(client)
    expected = {"queue": "default", "deadAt": dart_iso(T0), "reason": "max-retries-exhausted",
                "meta": {"error": "Exception: boom"},
                "envelope": envelope(UUID, attempt=3).to_json()}
    status, out, err = run(capsys, "dlq", "show", "--queue", "default", UUID)
    assert status == 0, err
    assert out == json.dumps(expected, indent=2) + "\n"
    assert out.startswith('{\n  "queue": "default",\n  "deadAt": "2026-01-01T00:00:00.000Z",')
    assert run(capsys, "dlq", "show", "-q", "default", "--id", UUID) == (status, out, err)
    assert run(capsys, "dlq", "show", "-q", "default", UUID, "--json") == (status, out, err)

    assert run(capsys, "dlq", "show", "-q", "emails", UUID) == (
        1, "", f"No dead letter entry found for id {UUID} in emails.\n")
    assert run(capsys, "dlq", "show", "-q", "emails", UUID, "--json")[0] == 1
    status, _out, err = run(capsys, "dlq", "show", "-q", "emails")
    assert status == 2
    assert "task id" in err


# --------------------------------------------------------------------------- dlq replay


def test_dlq_replay_needs_yes_unless_dry_run(env: str, client: redis.Redis,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    seed(client)
    status, out, err = run(capsys, "dlq", "replay", "--queue", "default")
    assert status == 2
    assert "--yes" in err
    assert client.llen(KEYS.dead("default")) == 2

    status, out, err = run(capsys, "dlq", "replay", "--queue", "default", "--dry-run")
    assert status == 0, err
    assert out.splitlines() == [
        "Would replay 2 entries from default.",
        f" - {UUID} (emails.send) [attempt 3] reason=max-retries-exhausted",
        " - dead-2 (reports.build) [attempt 0] reason=-",
    ]
    assert client.llen(KEYS.dead("default")) == 2
    assert run_json(capsys, "dlq", "replay", "-q", "default", "--dry-run", "--task",
                    "reports.build") == {
        "queue": "default", "dryRun": True, "count": 1,
        "entries": [{"id": "dead-2", "task": "reports.build", "attempt": 0, "reason": None,
                     "deadAt": dart_iso(T0 + 60)}]}


def test_dlq_replay_moves_entries_and_notes_the_replay_in_status_records(
    env: str, client: redis.Redis, capsys: pytest.CaptureFixture[str],
) -> None:
    seed(client)
    client.set(KEYS.result(UUID), dumps({
        "id": UUID, "state": "failed", "payload": None, "error": None,
        "meta": {"queue": "default"}, "attempt": 3, "createdAt": dart_iso(T0 - 60),
        "updatedAt": dart_iso(T0)}), px=60_000)

    status, out, err = run(capsys, "dlq", "replay", "-q", "default", "--yes", "--reason",
                           "max-retries-exhausted", "--delay", "30s")
    assert status == 0, err
    assert out.splitlines() == [
        "Replayed 1 entry from default.",
        f" - {UUID} (emails.send) [attempt 3] reason=max-retries-exhausted",
    ]
    members: Any = client.zrange(KEYS.delayed("default"), 0, -1)
    replayed = [json.loads(m) for m in members if json.loads(m)["id"] == UUID]
    assert [m["attempt"] for m in replayed] == [4]
    meta = json.loads(client.get(KEYS.result(UUID)) or b"null")["meta"]
    assert meta["replayCount"] == 1
    assert meta["lastReplayDelayMs"] == 30000

    document = run_json(capsys, "dlq", "replay", "-q", "default", "-y")
    assert document["dryRun"] is False
    assert [e["id"] for e in document["entries"]] == ["dead-2"]
    assert client.llen(KEYS.dead("default")) == 0


def test_dlq_replay_lists_ten_then_counts_the_rest(env: str, client: redis.Redis,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    for n in range(12):
        push_dead(client, envelope(f"t{n:02d}", queue="bulk"), dead_at=T0 + n)
    status, out, err = run(capsys, "dlq", "replay", "-q", "bulk", "-y", "--limit", "50",
                           "--since", dart_iso(T0))
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == "Replayed 12 entries from bulk."
    assert lines[1:11] == [f" - t{n:02d} (emails.send) [attempt 0] reason=max-retries-exhausted"
                           for n in range(10)]
    assert lines[11:] == ["   ... 2 more"]
    stream: Any = client.xrange(KEYS.stream("bulk"))
    assert len(stream) == 12


# --------------------------------------------------------------------------- health


def test_health_table_and_json_with_keyspace_notifications_off_then_on(
    env: str, client: redis.Redis, capsys: pytest.CaptureFixture[str],
) -> None:
    heartbeat(client, "worker-1", age_s=1, queues={"default": 1})
    client.config_set("notify-keyspace-events", "")
    status, out, err = run(capsys, "health")
    assert status == 0, err
    rows = [[cell.strip() for cell in line.split(" | ")] for line in out.splitlines()[2:-1]]
    masked = mask_url(env)
    version = client.info("server")["redis_version"]
    assert rows[:7] == [
        ["broker", "ok", f"Connected to {masked}"],
        ["broker redis version", "ok", f"{version} (>= 7.0 needed for XINFO lag)"],
        ["broker keyspace notifications", "off", "notify-keyspace-events=''"],
        ["backend", "ok", f"Connected to {masked}"],
        ["backend redis version", "ok", str(version)],
        ["backend keyspace notifications", "off", "notify-keyspace-events=''"],
        ["worker worker-1", "ok", rows[6][2]],
    ]
    assert re.fullmatch(r"last heartbeat \S+Z \(\d\.\ds ago\)", rows[6][2])
    assert out.splitlines()[-1] == "Health: ok"

    try:
        client.config_set("notify-keyspace-events", "KEA")
        document = run_json(capsys, "health")
    finally:
        client.config_set("notify-keyspace-events", "")
    assert document["ok"] is True
    assert document["problems"] == []
    broker, backend = document["components"]
    assert broker == {"component": "broker", "url": masked, "status": "ok",
                      "message": f"Connected to {masked}", "redisVersion": version,
                      "redisVersionOk": True, "keyspaceNotifications": "on",
                      "notifyKeyspaceEvents": "AKE"}
    assert backend["keyspaceNotifications"] == "on"
    (worker,) = document["workers"]
    assert worker["workerId"] == "worker-1"
    assert worker["stale"] is False
    assert worker["active"] == 2
    assert worker["inflight"] == 1


def test_health_reports_unknown_when_config_and_info_are_not_allowed(
    env: str, client: redis.Redis, capsys: pytest.CaptureFixture[str],
) -> None:
    client.acl_setuser("observer", enabled=True, passwords=[f"+{SECRET}"], keys=["*"],
                       channels=["*"], categories=["+@all"], commands=["-config", "-info"])
    try:
        url = env.replace("redis://", f"redis://observer:{SECRET}@")
        status, out, err = run(capsys, "health", "--broker", url, "--backend", url)
        assert status == 0, err
        assert re.search(r"^broker redis version +\| unknown \| INFO not allowed$", out, re.M)
        assert re.search(r"^broker keyspace notifications +\| unknown \| CONFIG GET not allowed$",
                         out, re.M), out
        document = run_json(capsys, "health", "--broker", url, "--backend", url)
        assert document["ok"] is True
        broker = document["components"][0]
        assert broker["url"] == mask_url(url) == env.replace("redis://", "redis://observer:***@")
        assert (broker["redisVersion"], broker["redisVersionOk"]) == (None, None)
        assert (broker["keyspaceNotifications"], broker["notifyKeyspaceEvents"]) == (
            "unknown", None)
        assert SECRET not in out
    finally:
        client.acl_deluser("observer")


def test_health_stale_workers_fail_only_with_strict(env: str, client: redis.Redis,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    heartbeat(client, "fresh", age_s=1, queues={})
    heartbeat(client, "slow", age_s=45, queues={})
    status, out, err = run(capsys, "health")
    assert status == 0, err
    assert re.search(r"^worker slow +\| stale +\| last heartbeat \S+ \(45\.\ds ago, stale "
                     r"after 30\.0s\)$", out, re.M), out
    assert re.search(r"^warning: worker slow: last heartbeat 45\.\ds ago", out, re.M)
    assert out.splitlines()[-1] == "Health: ok"

    status, out, err = run(capsys, "health", "--strict")
    assert status == 1
    assert out.splitlines()[-1] == "Health: FAILED (1 problem)"
    document = json.loads(run(capsys, "health", "--strict", "--stale-after", "1m", "--json")[1])
    assert document["ok"] is True
    assert [w["stale"] for w in document["workers"]] == [False, False]
    status, out, _err = run(capsys, "health", "--strict", "--json")
    assert status == 1
    assert json.loads(out)["problems"][0].startswith("worker slow: last heartbeat")


def test_health_without_a_backend_skips_it(env: str, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEM_RESULT_BACKEND_URL")
    status, out, err = run(capsys, "health")
    assert status == 0, err
    assert re.search(r"^backend +\| skipped \| not configured", out, re.M)
    assert re.search(r"^workers +\| unknown \|", out, re.M)
    document = run_json(capsys, "health", "--backend", env, "--skip-backend")
    assert document["components"][1] == {"component": "backend", "status": "skipped",
                                         "message": "skipped (--skip-backend)"}


def test_health_fails_when_nothing_listens(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    status, out, err = run(capsys, "health", "--broker", url)
    assert status == 1
    assert re.search(rf"^broker +\| error +\| Connection failed for {re.escape(url)}: ",
                     out, re.M), out
    assert "problem: broker: Connection failed for" in out
    assert out.splitlines()[-1] == "Health: FAILED (1 problem)"

    status, out, err = run(capsys, "health", "--broker", url, "--json")
    assert status == 1
    document = json.loads(out)
    assert document["ok"] is False
    assert document["components"][0]["status"] == "error"
    assert document["components"][1]["status"] == "ok"

    status, out, err = run(capsys, "observe", "queues", "--broker", url)
    assert (status, out) == (1, "")
    assert err.startswith(f"stem-observe: error: broker: Connection failed for {url}: ")


def test_passwords_never_appear_in_output(env: str, client: redis.Redis,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    port = env.rsplit(":", 1)[1].split("/", 1)[0]
    good = f"redis://:{SECRET}@127.0.0.1:{port}/0"
    stem_style = f"redis://{SECRET}@127.0.0.1:{port}/0"  # Stem: the whole userinfo is the password
    wrong = f"redis://default:{SECRET}x@127.0.0.1:{port}/0"
    query = f"redis://127.0.0.1:{port}/0?password={SECRET}"
    assert mask_url(good) == f"redis://:***@127.0.0.1:{port}/0"
    assert mask_url(stem_style) == f"redis://***@127.0.0.1:{port}/0"
    assert mask_url(wrong) == f"redis://default:***@127.0.0.1:{port}/0"
    assert mask_url(query) == f"redis://127.0.0.1:{port}/0?password=***"
    client.config_set("requirepass", SECRET)
    authed = redis.Redis.from_url(good)
    try:
        outputs: list[tuple[int, str, str]] = []
        for url in (good, stem_style, query):
            outputs.append(run(capsys, "health", "--broker", url, "--backend", url))
            assert outputs[-1][0] == 0, outputs[-1]
            outputs.append(run(capsys, "observe", "queues", "--broker", url, "--backend", url))
            assert outputs[-1][0] == 0, outputs[-1]
        outputs.append(run(capsys, "health", "--broker", wrong, "--backend", good, "--json"))
        assert outputs[-1][0] == 1
        assert "Connection failed for redis://default:***@" in outputs[-1][1]
        outputs.append(run(capsys, "observe", "dlq", "--broker", wrong))
        assert outputs[-1][0] == 1
        outputs.append(run(capsys, "health", "--broker", env, "--backend", env))
        assert outputs[-1][0] == 1  # no password: NOAUTH
        for output in outputs:
            assert SECRET not in output[1] + output[2], output
    finally:
        authed.config_set("requirepass", "")
        authed.close()


def test_configuration_errors_exit_2(env: str, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEM_BROKER_URL")
    status, out, err = run(capsys, "observe", "queues")
    assert (status, out) == (2, "")
    assert "STEM_BROKER_URL" in err
    status, out, err = run(capsys, "health", "--broker", f"http://:{SECRET}@localhost/")
    assert status == 2
    assert SECRET not in err
    # serve resolves its URLs like the other commands, and fails before it starts anything.
    status, out, err = run(capsys, "serve")
    assert (status, out) == (2, "")
    assert "STEM_BROKER_URL" in err
    status, out, err = run(capsys, "serve", "--broker", f"http://:{SECRET}@localhost/")
    assert (status, out) == (2, "")
    assert SECRET not in err


def test_python_dash_m_observe_queues(redis_url: str, client: redis.Redis) -> None:
    enqueue(client, envelope("a"))
    environ = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    result = subprocess.run(
        [sys.executable, "-m", "stem_observe", "observe", "queues"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**environ, "STEM_BROKER_URL": redis_url},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Queue   | Pending | Inflight | Delayed | Dead letters | Oldest age"
    assert re.fullmatch(r"default \|       1 \|        0 \|       0 \|            0 \| +\S+",
                        lines[2]), lines
