"""Rules engine: evaluation time per tick, and time from a threshold crossing to a webhook.

* **tick** — ``Engine.evaluate()`` for 100 rules (40 rate, 30 ratio, 30 spike, all grouped
  by ``[task, queue]``, ``for: 30s``) after events for 10,000 label sets, ticks 10 s apart;
  about 1 % of the label sets breach, so alerts go pending and then firing. Shapes:

  - ``split`` — the 10,000 label sets divided among the rules (100 each: 10,000 (rule,
    label set) pairs). Rules of one kind would share their windows, so each rule gets its
    own window length and is fed its own slice directly.
  - ``shared`` — every rule sees all 10,000 label sets (1,000,000 pairs); the rules of one
    kind read the same windows.
  - ``distinct`` — as ``shared``, but every rule has its own window length, so no window
    is shared: 100 windows of 10,000 label sets each.
  - ``steady`` — as ``shared``, with traffic between ticks: 1,000 random label sets get a
    retry and a success every tick and the breaching ones keep breaching, for 70 ticks, so
    the first events leave every window along the way.

  Each shape reports the first tick (every label set changed since the feed), the median
  and the maximum of all ticks. Target: a median under 100 ms.
* **crossing → webhook** — a rate rule (``threshold: 4``, ``group_wait: 0s``) on the real
  tick thread, a real :class:`WebhookReceiver` and a local HTTP server: the clock starts
  when the fifth ``task-retry`` (the crossing) is emitted and stops when the server reads
  the request. Target: under one tick + 100 ms.

Run from the repository root::

    .venv/bin/python bench/bench_rules.py [--ticks 5] [--steady-ticks 70] [--crossings 10]
        [--tick-s 1.0] [--shapes split,shared,distinct,steady] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stem_observe
from stem_observe import events as ev
from stem_observe.notify import Dispatcher, FakeClock, WebhookReceiver
from stem_observe.rules import parse_rules
from stem_observe.rules.engine import Engine

TASKS, QUEUES = 100, 100  # 10,000 label sets
TICK_S = 10.0


def rules_yaml(count: int = 100, *, distinct: bool = False) -> str:
    """Rule ``i``: rate below 40, ratio below 70, spike after. ``distinct`` gives each rule
    its own window length (a second longer per rule), so no two share a window."""
    rules: list[str] = []
    for i in range(count):
        extra = i if distinct else 0
        if i < 40:
            body = ("kind: rate\n    signals: [task-retry]\n"
                    f"    window: {300 + extra}s\n    threshold: 50")
        elif i < 70:
            body = ("kind: ratio\n    numerator: [task-failed]\n"
                    "    denominator: [task-succeeded, task-failed]\n"
                    f"    window: {600 + extra}s\n    threshold: 0.5\n    min_denominator: 20")
        else:
            body = ("kind: spike\n    signals: [task-retry]\n"
                    f"    window: {300 + extra}s\n"
                    "    baseline: 1h\n    factor: 3\n    min_count: 20")
        rules.append(f"  - name: R{i}\n    {body}\n    group_by: [task, queue]\n    for: 30s")
    return "rules:\n" + "\n".join(rules) + "\n"


def hot(t: int, q: int) -> bool:
    return (t * QUEUES + q) % 97 == 0


def send(engine: Engine, t: int, q: int, n: int, tag: str) -> int:
    """``n`` retries of task ``t`` on queue ``q``, each followed by a failure if the label
    set is hot, else a success. Returns events sent."""
    task, queue, failing = f"task{t}", f"q{q}", hot(t, q)
    for j in range(n):
        task_id = f"{tag}-{t}-{q}-{j}"
        engine.observe(ev.TaskRetry(task_id=task_id, task_name=task, queue=queue))
        engine.observe(ev.TaskFailed(task_id=task_id, task_name=task, queue=queue) if failing
                       else ev.TaskSucceeded(task_id=task_id, task_name=task, queue=queue))
    return 2 * n


def feed(engine: Engine) -> int:
    """Events for every label set; about 1 % get enough to breach. Returns events sent."""
    return sum(send(engine, t, q, 60 if hot(t, q) else 1, "feed")
               for t in range(TASKS) for q in range(QUEUES))


def feed_split(engine: Engine, clock: FakeClock) -> int:
    """Rule ``i`` sees task ``i`` on every queue (100 label sets each), fed to its own
    windows directly: with the signal bus, every rule on a signal sees every event."""
    events = 0
    for i, states in enumerate(engine._rules.values()):
        source = states.evaluator.source
        assert source is not None
        for q in range(QUEUES):
            retry = ev.TaskRetry(task_id=f"{i}-{q}", task_name=f"task{i}", queue=f"q{q}")
            failed = ev.TaskFailed(task_id=retry.task_id, task_name=retry.task_name,
                                   queue=retry.queue)
            for _ in range(60 if q % 13 == 0 else 1):
                source.observe("task-retry", retry, clock.time())
                source.observe("task-failed", failed, clock.time())
                source.observe("task-succeeded", failed, clock.time())
                events += 1
    return events


def traffic(engine: Engine, tick: int, rng: random.Random) -> int:
    """Between two ticks: a retry and a success for 1,000 random label sets, and two
    retries and two failures for each hot one (they keep breaching)."""
    sent = 0
    for _ in range(1000):
        t, q = rng.randrange(TASKS), rng.randrange(QUEUES)
        if not hot(t, q):
            sent += send(engine, t, q, 1, f"s{tick}")
    for t in range(TASKS):
        for q in range(QUEUES):
            if hot(t, q):
                sent += send(engine, t, q, 2, f"s{tick}")
    return sent


def bench_tick(ticks: int, shape: str) -> dict[str, Any]:
    clock = FakeClock()
    engine = Engine(parse_rules(rules_yaml(distinct=shape in ("split", "distinct"))), None,
                    clock=clock, registry=CollectorRegistry(), max_label_sets=TASKS * QUEUES)
    rng = random.Random(7)
    if shape == "split":
        events, pairs = feed_split(engine, clock), 100 * QUEUES
    else:
        events, pairs = feed(engine), 100 * TASKS * QUEUES
    gc.collect()  # the feed's garbage, so the first tick does not pay for collecting it
    times: list[float] = []
    for tick in range(ticks):
        clock.advance(TICK_S)
        if shape == "steady" and tick > 0:
            events += traffic(engine, tick, rng)
        started = time.perf_counter()
        engine.evaluate()
        times.append(time.perf_counter() - started)
    states: dict[str, int] = {}
    for state in engine.alerts():
        states[state.state] = states.get(state.state, 0) + 1
    return {"shape": shape, "pairs": pairs, "events": events, "ticks": ticks,
            "windows": len(engine._sources),
            "first_ms": times[0] * 1000, "median_ms": statistics.median(times) * 1000,
            "max_ms": max(times) * 1000, "alerts": states}


class _Arrivals:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.cond = threading.Condition()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        arrivals = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                arrived = time.perf_counter()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if body["status"] == "firing":
                    with arrivals.cond:
                        arrivals.times.append(arrived)
                        arrivals.cond.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _dispatcher(hook: WebhookReceiver, state_redis: str | None) -> tuple[Dispatcher, Any]:
    """A dispatcher in memory, or (``state_redis``) through the Redis outbox as ``serve
    --state-redis`` builds it, under a prefix of its own."""
    if not state_redis:
        return Dispatcher([hook], registry=CollectorRegistry()), None
    import redis

    from stem_observe.notify._breaker import Breaker
    from stem_observe.notify.outbox import RedisOutbox
    from stem_observe.notify.redis_log import RedisNotificationLog
    from stem_observe.notify.server_clock import ServerClock

    client = redis.Redis.from_url(state_redis, socket_timeout=1.0, socket_connect_timeout=1.0)
    prefix = f"bench_rules_{uuid.uuid4().hex[:8]}"
    breaker = Breaker()
    clock = ServerClock(client, breaker=breaker)
    registry = CollectorRegistry()
    outbox = RedisOutbox(client, prefix=prefix, registry=registry, breaker=breaker)
    log = RedisNotificationLog(client, prefix=prefix, clock=clock, breaker=breaker)
    return Dispatcher([hook], registry=registry, log=log, outbox=outbox, clock=clock), (
        client, prefix)


def bench_crossing(crossings: int, tick_s: float,
                   state_redis: str | None = None) -> dict[str, Any]:
    arrivals = _Arrivals()
    server = ThreadingHTTPServer(("127.0.0.1", 0), arrivals.handler())
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
    text = f"""
rules:
  - name: Retries
    kind: rate
    signals: [task-retry]
    group_by: [queue]
    window: 1m
    threshold: 4
routing:
  receivers:
    - name: hook
      kind: webhook
      url_env: HOOK_URL
  route:
    receiver: hook
    group_by: [alertname, queue]
    group_wait: 0s
    group_interval: {tick_s}s
    repeat_interval: 1h
"""
    latencies: list[float] = []
    hook = WebhookReceiver("hook", url=url, timeout_s=5.0)
    dispatcher, redis_state = _dispatcher(hook, state_redis)
    with dispatcher, Engine(parse_rules(text), dispatcher, registry=CollectorRegistry(),
                            tick_s=tick_s, clock=dispatcher.clock):
        for i in range(crossings):
            for j in range(4):
                stem_observe.emit(ev.TaskRetry(task_id=f"{i}-{j}", task_name="t",
                                               queue=f"queue{i}"))
            # wait a random-ish phase of the tick so crossings land anywhere in it
            time.sleep((i * 0.37 % 1.0) * tick_s)
            crossed = time.perf_counter()
            stem_observe.emit(ev.TaskRetry(task_id=f"{i}-x", task_name="t", queue=f"queue{i}"))
            def arrived(n: int = i) -> bool:
                return len(arrivals.times) > n

            with arrivals.cond:
                if not arrivals.cond.wait_for(arrived, timeout=tick_s + 10):
                    raise RuntimeError("no webhook arrived")
                latencies.append(arrivals.times[i] - crossed)
    server.shutdown()
    server.server_close()
    if redis_state is not None:
        client, prefix = redis_state
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()
    return {"tick_s": tick_s, "crossings": crossings, "outbox": bool(state_redis),
            "median_ms": statistics.median(latencies) * 1000,
            "max_ms": max(latencies) * 1000,
            "target_ms": tick_s * 1000 + 100}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--steady-ticks", type=int, default=70)
    parser.add_argument("--crossings", type=int, default=10)
    parser.add_argument("--tick-s", type=float, default=1.0)
    parser.add_argument("--shapes", default="split,shared,distinct,steady")
    parser.add_argument("--state-redis", default=None, metavar="URL",
                        help="also measure crossing -> webhook through the Redis outbox "
                             "(keys under a prefix of their own, deleted afterwards)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    results = [bench_tick(args.steady_ticks if shape == "steady" else args.ticks, shape)
               for shape in shapes]
    crossings = [bench_crossing(args.crossings, args.tick_s)] if args.crossings else []
    if args.crossings and args.state_redis:
        crossings.append(bench_crossing(args.crossings, args.tick_s, args.state_redis))
    if args.json:
        print(json.dumps({"tick": results, "crossing": crossings}, indent=2))
        return
    for r in results:
        verdict = "met" if r["median_ms"] < 100 else "NOT met"
        print(f"tick, {r['shape']:8} ({r['pairs']:>9,} rule x label-set pairs, "
              f"{r['windows']} windows, {r['events']:,} events, {r['ticks']} ticks): "
              f"first {r['first_ms']:.1f} ms, median {r['median_ms']:.1f} ms, "
              f"max {r['max_ms']:.1f} ms — target < 100 ms {verdict}; alerts {r['alerts']}")
    for c in crossings:
        verdict = "met" if c["max_ms"] < c["target_ms"] else "NOT met"
        path = "through the Redis outbox" if c["outbox"] else "in memory"
        print(f"crossing -> webhook request, {path} (tick {c['tick_s']} s, "
              f"{c['crossings']} crossings): median {c['median_ms']:.0f} ms, max "
              f"{c['max_ms']:.0f} ms — target < {c['target_ms']:.0f} ms {verdict}")


if __name__ == "__main__":
    main()
