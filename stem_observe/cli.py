"""The ``stem-observe`` command line.

Each subcommand lives in ``stem_observe.commands``. Configuration follows the library:
flags, then environment variables (``STEM_OBSERVE_*``, and Stem's own ``STEM_BROKER_URL`` /
``STEM_RESULT_BACKEND_URL``), then defaults. Exit status: 0 on success, 1 when the command
ran and found a failure, 2 for usage and configuration errors.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from stem_observe import __version__
from stem_observe.errors import StemObserveError

__all__ = ["main"]

#: Modules under ``stem_observe.commands`` that add subcommands, in help order.
COMMANDS = ("demo", "serve", "health", "observe", "dlq", "rules")


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
    for name in COMMANDS:
        importlib.import_module(f"stem_observe.commands.{name}").register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        status: int = args.func(args)
    except StemObserveError as exc:
        print(f"stem-observe: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"stem-observe: error: {exc}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
