"""``stem-observe demo``: a synthetic workload through the whole pipeline."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType
from typing import Any

from stem_observe.commands._common import duration
from stem_observe.config import Settings
from stem_observe.errors import StemObserveError

__all__ = ["register"]


def register(commands: Any) -> None:
    defaults = Settings()
    demo = commands.add_parser(
        "demo", help="run a synthetic workload through metrics, traces and logs",
        description="Run a realistic synthetic task workload (flaky tasks that retry, tasks "
                    "that fail into a dead-letter queue, heartbeating workers) through the "
                    "bridge, serving /metrics, until the duration passes or Ctrl-C.",
    )
    demo.add_argument("--duration", type=duration, default=60.0,
                      help="how long to run, e.g. 30s or 5m; 0 runs until Ctrl-C (default: 60s)")
    demo.add_argument("--rate", type=float, default=20.0, help="tasks per second (default: 20)")
    demo.add_argument("--workers", type=int, default=3, help="worker count (default: 3)")
    demo.add_argument("--host", default=None,
                      help=f"HTTP bind address (default: {defaults.http_host})")
    demo.add_argument("--port", type=int, default=None,
                      help=f"HTTP port, 0 for any free port (default: {defaults.http_port})")
    demo.add_argument("--seed", type=int, default=None, help="random seed, for repeatable runs")
    demo.add_argument("--stem", action="store_true",
                      help="simulate Stem workers writing Redis and watch it as "
                           "`stem-observe serve` does")
    demo.add_argument("--redis", default=None, metavar="URL",
                      help="with --stem: the Redis to fill (default: a private redis-server "
                           "on a free port)")
    demo.set_defaults(func=run)


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from stem_observe.demo import run_demo

    settings = Settings.resolve(http_host=args.host, http_port=args.port)
    if args.rate <= 0:
        raise StemObserveError("--rate: must be positive")
    if args.workers < 1:
        raise StemObserveError("--workers: must be at least 1")
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    if args.stem:
        from stem_observe.demo_stem import run_stem_demo

        run_stem_demo(
            sys.stdout, duration_s=args.duration, rate=args.rate, workers=args.workers,
            host=settings.http_host, port=settings.http_port, redis_url=args.redis,
            seed=args.seed,
        )
        return 0
    if args.redis:
        raise StemObserveError("--redis: only with --stem")
    run_demo(
        sys.stdout, duration_s=args.duration, rate=args.rate, workers=args.workers,
        host=settings.http_host, port=settings.http_port, seed=args.seed,
    )
    return 0
