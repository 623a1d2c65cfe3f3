"""Fleet mode end to end: a forwarder in this process, a real Redis, real ``serve --fleet``.

Each test runs its own ``redis-server`` (append-only file, fsync always) so it can be stopped
and restarted without losing what was acknowledged: the drop counter can then be compared
exactly with what did not arrive.
"""

from __future__ import annotations

import os
import re
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import stem_observe
from stem_observe import events as ev
from stem_observe.signals import emit
from stem_observe.sinks.fleet import DEFAULT_STREAM, FleetForwarder
from stem_observe.sources._fleet_wire import MAX_TEXT, DropReport, WireError, decode
from tests.conftest import Installed
from tests.support.process import Running
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_for

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
DURABLE = ("--appendonly", "yes", "--appendfsync", "always")


@pytest.fixture
def fleet_redis(tmp_path: Path) -> Iterator[RedisServer]:
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(workdir)
    server.start(*DURABLE)
    yield server
    server.stop()


class Serve:
    """``stem-observe serve --fleet URL`` (fleet mode only) as a subprocess."""

    def __init__(self, url: str, workdir: Path, name: str) -> None:
        self.running = Running(["serve", "--fleet", url, "--port", "0"], workdir, name=name,
                               env={"STEM_BROKER_URL": "", "STEM_OBSERVE_RULES": ""})
        self.base = self.running.base_url()
        wait_for(lambda: self.get("/readyz")[0] == 200, timeout_s=20, message=f"{name} ready")

    def get(self, path: str) -> tuple[int, str]:
        request = urllib.request.Request(self.base + path, headers={"Accept": OPENMETRICS})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def metrics(self) -> str:
        return self.get("/metrics")[1]

    def total(self, pattern: str) -> float:
        """The sum of every sample whose name and labels match ``pattern``."""
        return sum(float(m) for m in re.findall(rf"^{pattern} (\S+)", self.metrics(), re.M))

    def stop(self) -> None:
        returncode = self.running.stop()
        assert returncode == 0, self.running.stderr_path.read_text()


@pytest.fixture
def serve_factory(fleet_redis: RedisServer, tmp_path: Path) -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for serve in started:
        serve.stop()


def start_serve(started: list[Serve], redis_server: RedisServer, tmp_path: Path) -> Serve:
    serve = Serve(redis_server.url, tmp_path, f"serve-{len(started)}")
    started.append(serve)
    return serve


@pytest.fixture
def forwarder(installed: Installed, fleet_redis: RedisServer) -> Iterator[FleetForwarder]:
    fwd = FleetForwarder(fleet_redis.url, flush_interval_s=0.05, worker="test-host",
                         registry=installed.registry, timeout_s=1.0, max_backoff_s=1.0)
    fwd.start()
    yield fwd
    fwd.close(timeout_s=5)


def stream_entries(server: RedisServer) -> list[dict[bytes, bytes]]:
    """The fields of every entry in the fleet stream, oldest first."""
    client = redis.Redis.from_url(server.url)
    try:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(  # type: ignore[assignment]
            DEFAULT_STREAM)
    finally:
        client.close()
    return [fields for _id, fields in entries]


def stream_records(server: RedisServer) -> list[ev.Event | DropReport | WireError]:
    """Every record in the fleet stream, decoded as ``serve`` decodes them."""
    return [record for fields in stream_entries(server) for record in decode(fields)]


def task_events_in_stream(server: RedisServer) -> list[ev.TaskEvent]:
    """The task events in the fleet stream."""
    return [e for e in stream_records(server) if isinstance(e, ev.TaskEvent)]


def trace_ids_by_task(installed: Installed) -> dict[str, str]:
    """The worker's own spans: task id -> trace id."""
    return {
        str(dict(span.attributes or {})["stem.task.id"]):
            format(span.context.trace_id, "032x")
        for span in installed.spans.get_finished_spans() if span.context is not None
    }


def test_serve_counts_forwarded_lifecycles_with_real_task_and_trace_ids(
    installed: Installed, forwarder: FleetForwarder, serve_factory: list[Serve],
    fleet_redis: RedisServer, tmp_path: Path,
) -> None:
    serve = start_serve(serve_factory, fleet_redis, tmp_path)
    traced = [f"traced-{i}" for i in range(3)]
    for task_id in traced:  # the producer's trace context came with the message
        with stem_observe.track_task("emails.send", task_id=task_id, queue="emails",
                                     headers={"traceparent": TRACEPARENT}):
            pass
    with stem_observe.track_task("emails.send", task_id="root-1", queue="emails"):
        pass  # no context came: the worker's span began the trace
    with pytest.raises(KeyError), stem_observe.track_task(
            "payments.charge", task_id="failed-1", queue="payments"):
        raise KeyError("card")
    with stem_observe.track_task("payments.charge", task_id="retried-1",
                                 queue="payments") as run:
        run.retry("gateway timeout", countdown=5)
    stem_observe.send_worker_heartbeat("worker-a", interval_s=2.0, inflight=1, concurrency=4)
    assert forwarder.flush(5)
    traces = trace_ids_by_task(installed)
    assert traces["traced-0"] == TRACE_ID
    emails = r'\{queue="emails",task="emails.send"\}'

    wait_for(lambda: serve.total(rf"stem_tasks_succeeded_total{emails}") == 4,
             timeout_s=20, message="four successes on serve's /metrics")
    wait_for(lambda: serve.total(r'stem_observe_fleet_events_total\{kind="[^"]+"\}') == 25,
             timeout_s=20, message="every forwarded event")
    body = serve.metrics()
    assert re.search(rf"^stem_tasks_started_total{emails} 4\.0", body, re.M)
    assert re.search(r'^stem_tasks_started_total\{queue="payments",task="payments.charge"\} '
                     r"2\.0", body, re.M)
    failed = re.search(r'^stem_tasks_failed_total\{queue="payments",task="payments.charge"\} '
                       r'1\.0 # \{task_id="([^"]+)",trace_id="([0-9a-f]{32})"\}', body, re.M)
    assert failed is not None, body
    assert failed.groups() == ("failed-1", traces["failed-1"])
    retried = re.search(r'^stem_tasks_retried_total\{queue="payments",task="payments.charge"\}'
                        r' 1\.0 # \{task_id="([^"]+)",trace_id="([0-9a-f]{32})"\}', body, re.M)
    assert retried is not None, body
    assert retried.groups() == ("retried-1", traces["retried-1"])
    exemplars = re.findall(r'^stem_task_duration_seconds_bucket\{[^}]*queue="emails"[^}]*\} '
                           r'\S+ # \{task_id="([^"]+)",trace_id="([0-9a-f]{32})"\}', body, re.M)
    assert exemplars
    for task_id, trace_id in exemplars:
        assert trace_id == traces[task_id]  # the worker's trace, for header and root alike
    assert re.search(r'^stem_worker_up\{namespace="stem",worker="worker-a"\} 1\.0', body, re.M)
    assert re.search(r'^stem_worker_inflight\{namespace="stem",worker="worker-a"\} 1\.0',
                     body, re.M)
    assert re.search(r"^stem_observe_fleet_redis_up 1\.0", body, re.M)
    assert forwarder.dropped == 0
    assert not re.search(r"^stem_observe_spans_dropped", body, re.M) or re.search(
        r'^stem_observe_open_spans 0\.0', body, re.M)  # serve opened no span of its own


def test_two_serve_instances_share_the_stream_and_count_each_event_once(
    installed: Installed, forwarder: FleetForwarder, serve_factory: list[Serve],
    fleet_redis: RedisServer, tmp_path: Path,
) -> None:
    first = start_serve(serve_factory, fleet_redis, tmp_path)
    second = start_serve(serve_factory, fleet_redis, tmp_path)
    pattern = r'stem_tasks_succeeded_total\{queue="bulk",task="bulk.job"\}'
    for round_ in range(10):  # in several batches, so both instances get a chance
        for i in range(30):
            with stem_observe.track_task("bulk.job", task_id=f"{round_}-{i}", queue="bulk"):
                pass
        assert forwarder.flush(5)
    wait_for(lambda: first.total(pattern) + second.total(pattern) == 300, timeout_s=20,
             message="300 successes across both instances")
    client = redis.Redis.from_url(fleet_redis.url)
    try:
        wait_for(lambda: client.xpending(DEFAULT_STREAM, "stem-observe")["pending"] == 0,
                 message="every entry acknowledged")
        consumers = client.xinfo_consumers(DEFAULT_STREAM, "stem-observe")
    finally:
        client.close()
    assert len(consumers) == 2
    assert first.total(pattern) + second.total(pattern) == 300  # and no more arrived late
    assert forwarder.dropped == 0


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.timeout(120)
def test_redis_down_for_ten_seconds_neither_slows_the_worker_nor_hides_a_drop(
    installed: Installed, serve_factory: list[Serve], fleet_redis: RedisServer,
    tmp_path: Path,
) -> None:
    serve = start_serve(serve_factory, fleet_redis, tmp_path)
    queue_max = 2_000
    forwarder = FleetForwarder(fleet_redis.url, flush_interval_s=0.05, queue_max=queue_max,
                               worker="outage-host", registry=installed.registry,
                               timeout_s=1.0, max_backoff_s=1.0).start()
    durations: list[tuple[float, float]] = []  # (when, seconds one lifecycle took to emit)
    queued_max = [0]
    stop = threading.Event()

    def produce() -> None:
        period = 0.002  # ~500 tasks/s, 2,000 events/s: far more than the queue holds for 10 s
        next_at = time.monotonic()
        i = 0
        while not stop.is_set():
            started = time.perf_counter()
            with stem_observe.track_task("steady.job", task_id=f"s{i}", queue="steady"):
                pass
            durations.append((time.monotonic(), time.perf_counter() - started))
            queued_max[0] = max(queued_max[0], forwarder.queued)
            i += 1
            next_at += period
            stop.wait(max(0.0, next_at - time.monotonic()))

    producer = threading.Thread(target=produce, name="producer")
    try:
        producer.start()
        wait_for(lambda: len(durations) >= 1000, timeout_s=20, message="a steady rate")
        rss_before = _rss_bytes()
        down_at = time.monotonic()
        fleet_redis.stop()
        wait_for(lambda: time.monotonic() - down_at >= 10, timeout_s=15, interval_s=0.1,
                 message="ten seconds of outage")
        up_at = time.monotonic()
        rss_during = _rss_bytes()
        fleet_redis.start(*DURABLE)
        wait_for(lambda: forwarder.batches and time.monotonic() - up_at >= 1, timeout_s=20,
                 message="forwarding resumed")
    finally:
        stop.set()
        producer.join(10)
    sent = 4 * len(durations)
    assert forwarder.flush(15)
    received_pattern = r'stem_observe_fleet_events_total\{kind="[^"]+"\}'
    dropped_pattern = r'stem_observe_fleet_dropped_events_total\{worker="outage-host"\}'
    wait_for(lambda: serve.total(received_pattern) + serve.total(dropped_pattern) == sent,
             timeout_s=30, interval_s=0.2,
             message="every event either received by serve or reported dropped")
    received = serve.total(received_pattern)
    assert forwarder.dropped == sent - received
    assert serve.total(dropped_pattern) == forwarder.dropped
    assert forwarder.dropped > 0  # the outage was long enough to overflow the queue
    assert installed.value("stem_observe_fleet_dropped_total",
                           reason="queue_full") <= forwarder.dropped

    before = [d for t, d in durations if t < down_at]
    during = [d for t, d in durations if down_at <= t < up_at]
    rate_before = len(before) / (down_at - durations[0][0])
    rate_during = len(during) / (up_at - down_at)
    # Generous bounds: a producer blocked on Redis would stall for a timeout (1 s) per attempt.
    assert rate_during >= 0.7 * rate_before, (rate_before, rate_during)
    assert statistics.median(during) < max(5 * statistics.median(before), 0.002)
    assert max(during) < 0.5
    assert queued_max[0] <= queue_max
    assert rss_during - rss_before < 50 * 1024 * 1024
    forwarder.close()


def test_malformed_entries_are_counted_acknowledged_and_skipped(
    installed: Installed, serve_factory: list[Serve], fleet_redis: RedisServer,
    tmp_path: Path,
) -> None:
    serve = start_serve(serve_factory, fleet_redis, tmp_path)
    client = redis.Redis.from_url(fleet_redis.url)
    try:
        good = '{"k":"task-succeeded","task_id":"ok-1","task_name":"good.job"}'
        for fields in (
            {"v": "7", "e": "[]"},  # a version this serve does not know
            {"v": "1", "e": '[{"k":"task-teleported"}]'},  # an unknown kind
            {"v": "1", "e": "[{not json"},
            {"v": "3", "e": b"\xc1"},  # not MessagePack
            {"v": "1", "e": f'[{{"k":"task-succeeded","task_id":5,"task_name":"x"}},{good}]'},
            {"garbage": b"\xff\xfe"},
        ):
            client.xadd(DEFAULT_STREAM, fields)  # type: ignore[arg-type]
        wait_for(lambda: serve.total(r'stem_tasks_succeeded_total\{queue="default",'
                                     r'task="good.job"\}') == 1,
                 timeout_s=20, message="the good entry after the bad ones")
        body = serve.metrics()
        for kind, count in (("version", 1), ("kind", 1), ("malformed", 4)):
            assert re.search(rf'^stem_observe_fleet_parse_errors_total\{{kind="{kind}"\}} '
                             rf"{count}\.0", body, re.M), body
        wait_for(lambda: client.xpending(DEFAULT_STREAM, "stem-observe")["pending"] == 0,
                 message="bad entries acknowledged too")
        assert serve.get("/readyz")[0] == 200
    finally:
        client.close()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_forwards_on_its_own_connection_and_thread(
    installed: Installed, forwarder: FleetForwarder, fleet_redis: RedisServer,
) -> None:
    with stem_observe.track_task("fork.job", task_id="in-parent"):
        pass
    assert forwarder.flush(5)
    parent_thread = forwarder._thread
    pid = os.fork()
    if pid == 0:  # the child: forward, flush, leave without pytest's teardown
        ok = False
        try:
            ok = forwarder.queued == 0 and forwarder._thread is not parent_thread
            with stem_observe.track_task("fork.job", task_id="in-child"):
                pass
            ok = ok and forwarder.flush(5) and forwarder.forwarded == 4
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with stem_observe.track_task("fork.job", task_id="in-parent-after"):
        pass
    assert forwarder.flush(5)
    assert forwarder.forwarded == 8  # the parent's own count, untouched by the child
    ids = [e.task_id for e in task_events_in_stream(fleet_redis)]
    for task_id in ("in-parent", "in-child", "in-parent-after"):
        assert ids.count(task_id) == 4  # one record per event


def test_an_event_the_wire_cannot_carry_is_counted_and_its_batch_still_lands(
    installed: Installed, forwarder: FleetForwarder, fleet_redis: RedisServer,
) -> None:
    emit(ev.TaskSucceeded(task_id="huge-attempt", task_name="n", attempt=2**70))
    emit(ev.TaskSucceeded(task_id="ok", task_name="n" * 5000, queue="q"))
    emit(ev.TaskFailed(task_id="failed", task_name="n", error_message="m" * 5000,
                       stacktrace="s" * 100_000))
    assert forwarder.flush(5)
    assert forwarder.dropped_by_reason() == {"unencodable": 1}
    assert forwarder.forwarded == 2
    decoded = {e.task_id: e for e in task_events_in_stream(fleet_redis)}
    assert set(decoded) == {"ok", "failed"}
    assert len(decoded["ok"].task_name) == MAX_TEXT  # cut where it is read
    failed = decoded["failed"]
    assert isinstance(failed, ev.TaskFailed)
    assert len(failed.error_message) == MAX_TEXT  # cut by the worker
    assert failed.stacktrace is not None
    assert len(failed.stacktrace) < 5000


def test_a_batch_of_nothing_but_an_unencodable_event_leaves_the_counts_exact(
    installed: Installed, forwarder: FleetForwarder, fleet_redis: RedisServer,
) -> None:
    emit(ev.TaskSucceeded(task_id="huge-attempt", task_name="n", attempt=2**70))
    assert forwarder.flush(5)
    emit(ev.TaskSucceeded(task_id="ok", task_name="n"))
    assert forwarder.flush(5)
    assert forwarder.dropped_by_reason() == {"unencodable": 1}
    assert forwarder.forwarded == 1
    assert [e.task_id for e in task_events_in_stream(fleet_redis)] == ["ok"]


def test_records_too_large_for_one_entry_are_split_not_lost(
    installed: Installed, forwarder: FleetForwarder, fleet_redis: RedisServer,
) -> None:
    broadcasts = tuple(f"{i:05d}" * 20 for i in range(500))  # ≈ 50 kB per heartbeat
    for i in range(100):  # one entry's worth of records, ≈ 5 MB: over what serve reads
        emit(ev.WorkerHeartbeat(worker_id=f"w{i}", broadcasts=broadcasts))
    assert forwarder.flush(10)
    assert forwarder.dropped == 0
    assert forwarder.forwarded == 100
    beats = [e for e in stream_records(fleet_redis) if isinstance(e, ev.WorkerHeartbeat)]
    assert len(beats) == 100
    assert beats[0].broadcasts == broadcasts
    assert len(stream_entries(fleet_redis)) > 1


def test_a_drop_report_names_any_worker_and_is_delivered(
    installed: Installed, fleet_redis: RedisServer,
) -> None:
    forwarder = FleetForwarder(fleet_redis.url, flush_interval_s=0.05, worker="w\udcff",
                               registry=None, timeout_s=1.0).start()
    try:
        emit(ev.TaskSucceeded(task_id="huge-attempt", task_name="n", attempt=2**70))
        assert forwarder.flush(5)  # the report went out: nothing left to send
        reports = [e for e in stream_records(fleet_redis) if isinstance(e, DropReport)]
        assert reports == [DropReport("w?", 1)]
    finally:
        forwarder.close(timeout_s=5)


@pytest.mark.parametrize("landed", [True, False], ids=["reply-lost", "not-written"])
def test_a_batch_whose_write_failed_is_settled_by_its_marker(
    installed: Installed, forwarder: FleetForwarder, fleet_redis: RedisServer,
    monkeypatch: pytest.MonkeyPatch, landed: bool,
) -> None:
    write = forwarder._write
    failures: list[int] = []

    def fail_once(client: redis.Redis, seq: int, bodies: list[bytes]) -> None:
        if not failures:
            failures.append(seq)
            if landed:
                write(client, seq, bodies)  # Redis ran the script; its reply never came
            raise redis.ConnectionError("connection lost")
        write(client, seq, bodies)

    monkeypatch.setattr(forwarder, "_write", fail_once)
    with stem_observe.track_task("settle.job", task_id="once"):
        pass
    assert forwarder.flush(10)
    assert failures
    assert forwarder.dropped == 0
    assert forwarder.forwarded == 4
    ids = [e.task_id for e in task_events_in_stream(fleet_redis)]
    assert ids == ["once"] * 4  # written once, whether or not the first try landed
