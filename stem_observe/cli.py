"""The ``stem-observe`` command line.

``stem-observe demo`` runs a synthetic workload through the whole pipeline. Configuration
follows the library: flags, then ``STEM_OBSERVE_*`` environment variables, then defaults.
Configuration errors exit with status 2 and a message naming the bad setting.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from stem_observe import __version__
from stem_observe.config import Settings, to_seconds
from stem_observe.errors import StemObserveError

__all__ = ["main"]


def _duration(text: str) -> float:
    try:
        return to_seconds(text, key="duration")
    except StemObserveError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stem-observe",
        description="Observability and alerting bridge for background-task systems.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="WARNING",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level of the bridge's own logs (default: WARNING)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="run a synthetic workload through metrics, traces and logs",
        description="Run a realistic synthetic task workload (flaky tasks that retry, tasks "
                    "that fail into a dead-letter queue, heartbeating workers) through the "
                    "bridge, serving /metrics, until the duration passes or Ctrl-C.",
    )
    defaults = Settings()
    demo.add_argument("--duration", type=_duration, default=60.0,
                      help="how long to run, e.g. 30s or 5m; 0 runs until Ctrl-C (default: 60s)")
    demo.add_argument("--rate", type=float, default=20.0, help="tasks per second (default: 20)")
    demo.add_argument("--workers", type=int, default=3, help="worker count (default: 3)")
    demo.add_argument("--host", default=None,
                      help=f"HTTP bind address (default: {defaults.http_host})")
    demo.add_argument("--port", type=int, default=None,
                      help=f"HTTP port, 0 for any free port (default: {defaults.http_port})")
    demo.add_argument("--seed", type=int, default=None, help="random seed, for repeatable runs")
    return parser


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _demo(args: argparse.Namespace) -> int:
    from stem_observe.demo import run_demo

    settings = Settings.resolve(http_host=args.host, http_port=args.port)
    if args.rate <= 0:
        raise StemObserveError("--rate: must be positive")
    if args.workers < 1:
        raise StemObserveError("--workers: must be at least 1")
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    run_demo(
        sys.stdout, duration_s=args.duration, rate=args.rate, workers=args.workers,
        host=settings.http_host, port=settings.http_port, seed=args.seed,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "demo":
            return _demo(args)
    except StemObserveError as exc:
        print(f"stem-observe: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"stem-observe: error: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
