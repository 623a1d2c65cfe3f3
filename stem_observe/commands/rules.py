"""``stem-observe rules check``: validate rule files; ``alerts`` and ``silence``: talk to a
running ``serve`` over its HTTP API."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import httpx

from stem_observe.commands._common import duration
from stem_observe.errors import RulesError, StemObserveError

__all__ = ["register"]


def register(commands: Any) -> None:
    rules = commands.add_parser("rules", help="validate alert rule files")
    sub = rules.add_subparsers(dest="rules_command", required=True, metavar="COMMAND")
    check = sub.add_parser("check", help="load and validate rules and routing")
    check.add_argument("paths", nargs="+", metavar="PATH", help="rule files or directories")
    check.set_defaults(func=_check)
    test = sub.add_parser(
        "test", help="replay events through rules and print what fires when",
        description="Replay a JSON-lines event file (one {\"at\": \"30s\", \"signal\": "
                    "\"task-retry\", ...} per line) through the rules on a simulated clock "
                    "and print every alert state change, like `promtool test rules`.")
    test.add_argument("rules", metavar="RULES", help="rule file or directory")
    test.add_argument("events", metavar="EVENTS", help="JSON-lines event file")
    test.add_argument("--tick", type=duration, default=5.0, help="evaluation interval (5s)")
    test.add_argument("--tail", type=duration, default=600.0,
                      help="time simulated after the last event (default: 10m)")
    test.set_defaults(func=_test)

    alerts = commands.add_parser("alerts", help="list the alerts of a running serve")
    alerts.add_argument("--url", default="http://127.0.0.1:9464",
                        help="the serve's HTTP address (default: http://127.0.0.1:9464)")
    alerts.add_argument("--json", action="store_true", help="print JSON")
    alerts.set_defaults(func=_alerts)

    silence = commands.add_parser("silence", help="add, list or expire silences")
    silence_sub = silence.add_subparsers(dest="silence_command", required=True,
                                         metavar="COMMAND")
    for name, func in (("add", _silence_add), ("list", _silence_list),
                       ("expire", _silence_expire)):
        parser = silence_sub.add_parser(name)
        parser.add_argument("--url", default="http://127.0.0.1:9464",
                            help="the serve's HTTP address")
        parser.set_defaults(func=func)
        if name == "add":
            parser.add_argument("matchers", nargs="+", help='e.g. "queue = emails"')
            parser.add_argument("--duration", type=duration, default=3600.0,
                                help="how long (default: 1h)")
            parser.add_argument("--comment", default="")
            parser.add_argument("--created-by", default="")
        if name == "expire":
            parser.add_argument("id", help="the silence id")


def _check(args: argparse.Namespace) -> int:
    from stem_observe.rules import load_rules

    try:
        rule_set = load_rules(*args.paths)
    except RulesError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 1
    receivers = len(rule_set.routing.receivers) if rule_set.routing else 0
    print(f"OK: {len(rule_set.rules)} rule(s), {receivers} receiver(s)")
    return 0


def _test(args: argparse.Namespace) -> int:
    from stem_observe.rules import load_rules
    from stem_observe.rules.replay import read_events, replay

    try:
        rule_set = load_rules(args.rules)
    except RulesError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    events = read_events(args.events)
    transitions = replay(rule_set, events, tick_s=args.tick, tail_s=args.tail)
    for transition in transitions:
        print(transition.line())
    if not transitions:
        print("No alert changed state.")
    return 0


def _call(method: str, url: str, **kwargs: Any) -> Any:
    try:
        response = httpx.request(method, url, timeout=10.0, **kwargs)
    except httpx.HTTPError as exc:
        raise StemObserveError(f"cannot reach {url}: {exc}") from None
    if response.status_code >= 400:
        raise StemObserveError(f"{url}: {response.status_code} {response.text.strip()}")
    return response.json()


def _alerts(args: argparse.Namespace) -> int:
    document = _call("GET", f"{args.url.rstrip('/')}/api/alerts")
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    alerts = document.get("alerts", [])
    if not alerts:
        print("No alerts.")
    for alert in alerts:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(alert.get("labels", {}).items())
                           if k not in ("alertname",))
        summary = alert.get("annotations", {}).get("summary", "")
        print(f"{alert.get('state', '?'):9} {alert.get('name')} {{{labels}}} {summary}")
    return 0


def _silence_add(args: argparse.Namespace) -> int:
    silence = _call("POST", f"{args.url.rstrip('/')}/api/silences", json={
        "matchers": args.matchers, "duration": args.duration, "comment": args.comment,
        "created_by": args.created_by,
    })
    print(silence.get("id", ""))
    return 0


def _silence_list(args: argparse.Namespace) -> int:
    document = _call("GET", f"{args.url.rstrip('/')}/api/silences")
    silences = document.get("silences", [])
    if not silences:
        print("No silences.")
    for silence in silences:
        print(f"{silence.get('id')} {' '.join(map(str, silence.get('matchers', [])))} "
              f"until {silence.get('ends_at')} {silence.get('comment', '')}".rstrip())
    return 0


def _silence_expire(args: argparse.Namespace) -> int:
    _call("DELETE", f"{args.url.rstrip('/')}/api/silences", params={"id": args.id})
    print(f"expired {args.id}")
    return 0
