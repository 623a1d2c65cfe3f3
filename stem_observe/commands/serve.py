"""``stem-observe serve``: the sidecar. Watches a Stem deployment's Redis and serves
``/metrics``, ``/healthz`` and ``/readyz`` until SIGINT or SIGTERM.

With ``--fleet URL`` it also consumes the fleet stream that Python workers forward their
events to (``sources/fleet.py``); with ``--fleet`` and no broker URL it does only that."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any, TextIO

from prometheus_client import REGISTRY

from stem_observe.bridge import install, uninstall
from stem_observe.commands._common import connection_options, duration, mask_url
from stem_observe.commands._stem import connect, resolve
from stem_observe.config import Settings
from stem_observe.server import HttpServer, Response, json_response
from stem_observe.sources.stem.watcher import StemWatcher, WatcherOptions

__all__ = ["register", "run"]

logger = logging.getLogger("stem_observe.serve")


def register(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", parents=[connection_options(with_json=False)],
        help="watch a Stem deployment's Redis and serve /metrics",
        description="The sidecar: turns what Stem writes to Redis into signals, metrics and "
                    "(with STEM_OBSERVE_OTLP_ENDPOINT) traces, and serves /metrics, /healthz "
                    "and /readyz. Without a result backend URL it reads the backend's keys "
                    "from the broker. With --fleet it also consumes the events Python "
                    "workers forward (fleet mode); with --fleet and no broker URL, only those.",
    )
    serve.add_argument("--worker-namespace", action="append", default=None,
                       help="a worker namespace whose heartbeat channel to follow "
                            "(repeatable; default: stem)")
    serve.add_argument("--poll-interval", type=duration, default=5.0,
                       help="queue, dead-letter and heartbeat poll interval (default: 5s)")
    serve.add_argument("--discover-interval", type=duration, default=30.0,
                       help="how often queues are rediscovered by SCAN (default: 30s; queues a "
                            "heartbeat names are picked up at once)")
    serve.add_argument("--reconcile-interval", type=duration, default=60.0,
                       help="full status-record scan interval (default: 60s)")
    serve.add_argument("--heartbeat-interval", type=duration, default=10.0,
                       help="Stem's worker heartbeat interval (default: 10s)")
    serve.add_argument("--notifications", choices=["auto", "on", "off", "enable"],
                       default="auto",
                       help="keyspace notifications for status changes: auto (use if the "
                            "server has them), enable (turn them on with CONFIG SET), on, off")
    serve.add_argument("--rules", action="append", default=None, metavar="PATH",
                       help="alert rules and routing (a YAML file or a directory; repeatable; "
                            "default: $STEM_OBSERVE_RULES, else no alerting)")
    serve.add_argument("--tick", type=duration, default=5.0,
                       help="how often alert rules are evaluated (default: 5s)")
    serve.add_argument("--state-redis", default=None, metavar="URL",
                       help="share silences, alert state and the notification log between "
                            "instances in this Redis (may be the broker URL; default: "
                            "$STEM_OBSERVE_STATE_REDIS, else in memory)")
    serve.add_argument("--claim-timeout", type=duration, default=360.0,
                       help="with --state-redis: how long a notification taken by one "
                            "instance may stay unfinished before another sends it "
                            "(default: 6m, longer than the 5m retry deadline)")
    serve.add_argument("--fleet", default=None, metavar="URL",
                       help="consume the fleet stream that Python workers (the Celery plugin, "
                            "FleetForwarder) forward their events to, in this Redis (may be "
                            "the broker URL; default: $STEM_OBSERVE_FLEET_REDIS). Several "
                            "instances share the stream through one consumer group. Without "
                            "a broker URL, serve runs in fleet mode only")
    serve.add_argument("--fleet-stream", default=None, metavar="KEY",
                       help="the fleet stream's key (default: stem_observe:fleet)")
    serve.add_argument("--host", default=None, help="HTTP bind address (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="HTTP port (default: 9464)")
    serve.set_defaults(func=run)


class _Stop:
    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.event.set()


def run(args: argparse.Namespace, *, out: TextIO | None = None,
        stop: threading.Event | None = None) -> int:
    out = out or sys.stdout
    settings = Settings.resolve(http_host=args.host, http_port=args.port)
    fleet_url = getattr(args, "fleet", None) or os.environ.get("STEM_OBSERVE_FLEET_REDIS") or None
    watch = fleet_url is None or bool(args.broker or os.environ.get("STEM_BROKER_URL"))
    fleet = None
    if fleet_url is not None:
        from stem_observe.sinks.fleet import DEFAULT_STREAM
        from stem_observe.sources.fleet import FleetConsumer

        fleet = FleetConsumer(fleet_url, stream=getattr(args, "fleet_stream", None)
                              or DEFAULT_STREAM, registry=REGISTRY)
    watcher = None
    where = keys = None
    if watch:
        target = resolve(args)
        keys = target.keys
        where = mask_url(target.broker_url)
        broker = connect(target.broker_url, "broker", fail_fast=False)
        backend = (broker if target.backend_url is None
                   else connect(target.backend_url, "backend", fail_fast=False))
        options = WatcherOptions(
            keys=keys, worker_namespaces=tuple(args.worker_namespace or ["stem"]),
            poll_interval_s=args.poll_interval, discover_interval_s=args.discover_interval,
            reconcile_interval_s=args.reconcile_interval,
            heartbeat_interval_s=args.heartbeat_interval, notifications=args.notifications,
        )
        watcher = StemWatcher(broker, options, backend=backend, registry=REGISTRY)
    bridge = install(settings=settings, logs=False)
    server = HttpServer(registry=REGISTRY, host=settings.http_host, port=settings.http_port)

    def readyz(headers: dict[str, str]) -> Response:
        if watcher is not None and not watcher.healthy():
            return json_response(503, {"status": "not ready",
                                       "reason": f"no successful poll of {where}"})
        if fleet is not None and not fleet.healthy():
            return json_response(503, {"status": "not ready",
                                       "reason": f"no successful read of {fleet.stream}"})
        queues = len(list(watcher.queues())) if watcher is not None else 0
        return json_response(200, {"status": "ready", "queues": queues})

    server.route("/readyz", readyz)
    stopper = _Stop()
    done = stop or stopper.event
    if stop is None:
        signal.signal(signal.SIGINT, stopper)
        signal.signal(signal.SIGTERM, stopper)
    rule_paths = args.rules or ([os.environ["STEM_OBSERVE_RULES"]]
                                if os.environ.get("STEM_OBSERVE_RULES") else [])
    alerting = None
    try:
        if rule_paths:
            from stem_observe.commands._alerting import start_alerting

            state_redis = (args.state_redis
                           or os.environ.get("STEM_OBSERVE_STATE_REDIS") or None)
            alerting = start_alerting(rule_paths, server, tick_s=args.tick,
                                      state_redis=state_redis,
                                      claim_timeout_s=args.claim_timeout)
        server.start()
        if fleet is not None:
            fleet.start()
            print(f"stem-observe serve: consuming fleet stream {fleet.stream} on "
                  f"{mask_url(fleet_url or '')} as {fleet.consumer} (group {fleet.group})",
                  file=out, flush=True)
        if watcher is not None and keys is not None:
            watcher.start()
            print(f"stem-observe serve: watching {where} (namespace "
                  f"{keys.broker}); metrics at {server.url}/metrics, readiness at "
                  f"{server.url}/readyz", file=out, flush=True)
        else:
            print(f"stem-observe serve: fleet mode; metrics at {server.url}/metrics, "
                  f"readiness at {server.url}/readyz", file=out, flush=True)
        if alerting is not None:
            print(f"stem-observe serve: alert rules from {', '.join(rule_paths)}; alerts at "
                  f"{server.url}/api/alerts", file=out, flush=True)
        done.wait()
        print("stem-observe serve: stopping", file=out, flush=True)
    finally:
        if alerting is not None:
            alerting.stop()
        if fleet is not None:
            fleet.close()
        if watcher is not None:
            watcher.close()
        bridge.flush()
        server.stop()
        uninstall()
    return 0
