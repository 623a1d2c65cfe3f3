"""Stem watcher throughput: poll-cycle time at scale, and status transitions per second.

Starts a private ``redis-server`` on a free port and fills it as a large Stem deployment
would look: ``--queues`` queues (a stream with a consumer group, some delivered and some
waiting messages, a delayed set), ``--statuses`` status records and ``--dead`` dead letters
spread over the queues. Then, with the bridge installed (metrics sink on a private
registry), it measures:

* **poll cycle**: ``StemWatcher.poll_once()`` (discover, count, snapshot every queue, read
  changed dead-letter lists, stored heartbeats), median and max of ``--repeats`` cycles
  (the first also reads every dead-letter list once); target under 1 s for 1,000 queues;
* **reconcile**: one full scan of the status records (the reconciler's start-up scan);
* **transitions from notifications**: with keyspace notifications on, ``--transitions``
  status records are written as fast as a pipeline allows, and the time until the watcher
  has sent every resulting ``task-prerun`` gives events per second; target at least 5,000.

Run from the repository root::

    .venv/bin/python bench/bench_watcher.py [--queues 1000] [--statuses 100000] [--dead 10000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stem_observe
from stem_observe import events as ev
from stem_observe import signals
from stem_observe.sources.stem.keys import StemKeys
from stem_observe.sources.stem.watcher import StemWatcher, WatcherOptions
from stem_observe.sources.stem.wire import Envelope, dart_iso, dumps
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_for

KEYS = StemKeys()


def status_json(task_id: str, state: str, queue: str, now: float) -> str:
    return dumps({
        "id": task_id, "state": state, "payload": None, "error": None,
        "meta": {"task": "bench.task", "stem.task": "bench.task", "queue": queue,
                 "stem.queue": queue, "worker": "bench-worker", "startedAt": dart_iso(now)},
        "attempt": 0, "createdAt": dart_iso(now), "updatedAt": dart_iso(now),
    })


def fill(client: redis.Redis, queues: int, statuses: int, dead: int) -> None:
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for index in range(queues):
        queue = f"queue-{index:04d}"
        envelope = Envelope(id=f"m-{index}", name="bench.task", queue=queue, enqueued_at=now)
        pipe.xgroup_create(KEYS.stream(queue), KEYS.group(queue), "0", mkstream=True)
        for _ in range(3):
            pipe.xadd(KEYS.stream(queue), envelope.stream_fields())
        pipe.zadd(KEYS.delayed(queue), {dumps(envelope.to_json()): int((now + 60) * 1000)})
        if index % 100 == 0:
            pipe.execute()
    pipe.execute()
    for index in range(queues):  # one message of each queue delivered, not acknowledged
        queue = f"queue-{index:04d}"
        pipe.xreadgroup(KEYS.group(queue), "bench-worker", {KEYS.stream(queue): ">"}, count=1)
        if index % 200 == 0:
            pipe.execute()
    pipe.execute()
    for index in range(statuses):
        queue = f"queue-{index % queues:04d}"
        pipe.set(KEYS.result(f"s-{index}"), status_json(f"s-{index}", "succeeded", queue, now),
                 px=86_400_000)
        if index % 5000 == 0:
            pipe.execute()
    pipe.execute()
    for index in range(dead):
        queue = f"queue-{index % queues:04d}"
        envelope = Envelope(id=f"d-{index}", name="bench.task", queue=queue, enqueued_at=now)
        pipe.lpush(KEYS.dead(queue), dumps({
            "envelope": envelope.to_json(), "reason": "max-retries-exhausted",
            "meta": {"error": "Boom: bench"}, "deadAt": dart_iso(now)}))
        if index % 5000 == 0:
            pipe.execute()
    pipe.execute()


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self, sender: object, *, event: ev.Event) -> None:
        with self.lock:
            self.count += 1


def run(queues: int, statuses: int, dead: int, transitions: int, repeats: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(Path(workdir))
        server.start()
        client = redis.Redis(port=server.port)
        try:
            started = time.perf_counter()
            fill(client, queues, statuses, dead)
            fill_s = time.perf_counter() - started
            stem_observe.install(registry=CollectorRegistry(), tracing=False, logs=False)
            watcher = StemWatcher(client, WatcherOptions(notifications="enable",
                                                         poll_interval_s=3600),
                                  registry=CollectorRegistry())
            cycles = []
            for _ in range(repeats):
                started = time.perf_counter()
                watcher.poll_once()
                cycles.append(time.perf_counter() - started)
            started = time.perf_counter()
            watcher.reconcile(prime=True)  # the start-up scan: learns every record
            reconcile_s = time.perf_counter() - started
            counter = Counter()
            signals.task_prerun.connect(counter)
            watcher.start()
            wait_for(lambda: watcher.listening.is_set() and watcher.reconciles >= 2,
                     message="the watcher subscribed, and its reconciles done")
            now = time.time()
            started = time.perf_counter()
            pipe = client.pipeline(transaction=False)
            for index in range(transitions):
                pipe.set(KEYS.result(f"t-{index}"),
                         status_json(f"t-{index}", "running", "queue-0000", now), px=86_400_000)
                if index % 1000 == 0:
                    pipe.execute()
            pipe.execute()
            written_s = time.perf_counter() - started
            wait_for(lambda: counter.count >= transitions, timeout_s=120, interval_s=0.005,
                     message=f"{transitions} transitions")
            elapsed = time.perf_counter() - started
            watcher.close()
            signals.task_prerun.disconnect(counter)
            stem_observe.uninstall()
        finally:
            client.close()
            server.stop()
    return {
        "queues": queues, "statuses": statuses, "dead_letters": dead,
        "fill_s": round(fill_s, 2),
        "poll_cycle_median_s": round(statistics.median(cycles), 4),
        "poll_cycle_max_s": round(max(cycles), 4),
        "reconcile_s": round(reconcile_s, 3),
        "transitions": transitions,
        "transitions_written_s": round(written_s, 3),
        "transitions_per_s": round(transitions / elapsed),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--queues", type=int, default=1000)
    parser.add_argument("--statuses", type=int, default=100_000)
    parser.add_argument("--dead", type=int, default=10_000)
    parser.add_argument("--transitions", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.queues, args.statuses, args.dead, args.transitions, args.repeats)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"Stem watcher: {result['queues']} queues, {result['statuses']} status records, "
          f"{result['dead_letters']} dead letters (filled in {result['fill_s']} s)")
    print(f"poll cycle     median {result['poll_cycle_median_s']:.3f} s, "
          f"max {result['poll_cycle_max_s']:.3f} s   (target < 1 s)")
    print(f"reconcile      {result['reconcile_s']:.2f} s for every status record")
    print(f"notifications  {result['transitions_per_s']} transitions/s into signals "
          f"({result['transitions']} written in {result['transitions_written_s']} s; "
          f"target >= 5000/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
