"""Rules engine: evaluation time per tick, and time from a threshold crossing to a webhook.

* **tick** — ``Engine.evaluate()`` for 100 rules (40 rate, 30 ratio, 30 spike, all grouped
  by ``[task, queue]``) after events for 10,000 label sets, median of ``--ticks`` ticks
  10 s apart. Two shapes: ``split`` — the 10,000 label sets divided among the rules (100
  each: 10,000 (rule, label set) pairs); ``shared`` — every rule sees all 10,000 label sets
  (1,000,000 pairs). About 1 % of the label sets breach, so alerts go pending and firing.
  Target: under 100 ms.
* **crossing → webhook** — a rate rule (``threshold: 4``, ``group_wait: 0s``) on the real
  tick thread, a real :class:`WebhookReceiver` and a local HTTP server: the clock starts
  when the fifth ``task-retry`` (the crossing) is emitted and stops when the server reads
  the request. Target: under one tick + 100 ms.

Run from the repository root::

    .venv/bin/python bench/bench_rules.py [--ticks 5] [--crossings 10] [--tick-s 1.0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
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


def rules_yaml(count: int = 100) -> str:
    rules: list[str] = []
    for i in range(count):
        if i < 40:
            body = "kind: rate\n    signals: [task-retry]\n    window: 5m\n    threshold: 50"
        elif i < 70:
            body = ("kind: ratio\n    numerator: [task-failed]\n"
                    "    denominator: [task-succeeded, task-failed]\n"
                    "    window: 10m\n    threshold: 0.5\n    min_denominator: 20")
        else:
            body = ("kind: spike\n    signals: [task-retry]\n    window: 5m\n"
                    "    baseline: 1h\n    factor: 3\n    min_count: 20")
        rules.append(f"  - name: R{i}\n    {body}\n    group_by: [task, queue]\n    for: 30s")
    return "rules:\n" + "\n".join(rules) + "\n"


def feed(engine: Engine) -> int:
    """Events for every label set; about 1 % get enough to breach. Returns events sent."""
    sent = 0
    for t in range(TASKS):
        for q in range(QUEUES):
            hot = (t * QUEUES + q) % 97 == 0
            task, queue = f"task{t}", f"q{q}"
            n = 60 if hot else 1
            for j in range(n):
                engine.observe(ev.TaskRetry(task_id=f"{t}-{q}-{j}", task_name=task,
                                            queue=queue))
                engine.observe(ev.TaskFailed(task_id=f"{t}-{q}-{j}", task_name=task,
                                             queue=queue) if hot else
                               ev.TaskSucceeded(task_id=f"{t}-{q}-{j}", task_name=task,
                                                queue=queue))
                sent += 2
    return sent


def bench_tick(ticks: int, *, shared: bool) -> dict[str, Any]:
    clock = FakeClock()
    if shared:
        engine = Engine(parse_rules(rules_yaml()), None, clock=clock,
                        registry=CollectorRegistry(), max_label_sets=TASKS * QUEUES)
        events = feed(engine)
        pairs = 100 * TASKS * QUEUES
    else:
        # split: rule i only ever sees tasks of its own slice (100 label sets each). The
        # rules share their signals, so events go to each rule's evaluator directly.
        engine = Engine(parse_rules(rules_yaml()), None, clock=clock,
                        registry=CollectorRegistry(), max_label_sets=TASKS * QUEUES)
        events = 0
        for evaluator_index, evaluator in enumerate(engine._evaluators):
            for q in range(QUEUES):
                hot = q % 13 == 0
                key_event = ev.TaskRetry(task_id=f"{evaluator_index}-{q}",
                                         task_name=f"task{evaluator_index}", queue=f"q{q}")
                for _ in range(60 if hot else 1):
                    evaluator.observe("task-retry", key_event, clock.time())
                    failed = ev.TaskFailed(task_id=key_event.task_id,
                                           task_name=key_event.task_name, queue=key_event.queue)
                    evaluator.observe("task-failed", failed, clock.time())
                    evaluator.observe("task-succeeded", failed, clock.time())
                    events += 1
        pairs = 100 * QUEUES
    times: list[float] = []
    states: dict[str, int] = {}
    for _ in range(ticks):
        clock.advance(10)
        started = time.perf_counter()
        engine.evaluate()
        times.append(time.perf_counter() - started)
    for state in engine.alerts():
        states[state.state] = states.get(state.state, 0) + 1
    return {"shape": "shared" if shared else "split", "pairs": pairs, "events": events,
            "median_ms": statistics.median(times) * 1000, "max_ms": max(times) * 1000,
            "alerts": states}


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


def bench_crossing(crossings: int, tick_s: float) -> dict[str, Any]:
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
    with Dispatcher([hook], registry=CollectorRegistry()) as dispatcher, \
            Engine(parse_rules(text), dispatcher, registry=CollectorRegistry(), tick_s=tick_s):
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
    return {"tick_s": tick_s, "crossings": crossings,
            "median_ms": statistics.median(latencies) * 1000,
            "max_ms": max(latencies) * 1000,
            "target_ms": tick_s * 1000 + 100}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--crossings", type=int, default=10)
    parser.add_argument("--tick-s", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [bench_tick(args.ticks, shared=False), bench_tick(args.ticks, shared=True)]
    crossing = bench_crossing(args.crossings, args.tick_s)
    if args.json:
        print(json.dumps({"tick": results, "crossing": crossing}, indent=2))
        return
    for r in results:
        verdict = "met" if r["median_ms"] < 100 else "NOT met"
        print(f"tick, {r['shape']:6} ({r['pairs']:>9,} rule x label-set pairs, "
              f"{r['events']:,} events): median {r['median_ms']:.1f} ms, "
              f"max {r['max_ms']:.1f} ms — target < 100 ms {verdict}; alerts {r['alerts']}")
    c = crossing
    verdict = "met" if c["max_ms"] < c["target_ms"] else "NOT met"
    print(f"crossing -> webhook request (tick {c['tick_s']} s, {c['crossings']} crossings): "
          f"median {c['median_ms']:.0f} ms, max {c['max_ms']:.0f} ms — target < "
          f"{c['target_ms']:.0f} ms {verdict}")


if __name__ == "__main__":
    main()
