"""``stem-observe rules test``: replay an event sequence through rules, print what fires when.

The events file is JSON lines (``#`` comments and blank lines allowed), one event each::

    {"at": "30s", "signal": "task-retry", "task_id": "t1", "task_name": "emails.send",
     "queue": "emails"}

``at`` is the time from the start (seconds or a duration such as ``90s``, ``5m``);
``signal`` is a wire name (``task-retry``, ``task-dead-lettered``, ``queue-snapshot`` …);
the other keys are that event's fields. The rules are evaluated every ``tick_s`` from 0 to
the last event plus ``tail_s``, on a simulated clock: a replay of an hour takes a moment.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from prometheus_client import CollectorRegistry

from stem_observe import events as ev
from stem_observe import signals
from stem_observe.config import to_seconds
from stem_observe.errors import StemObserveError
from stem_observe.notify.clock import FakeClock
from stem_observe.rules.engine import AlertState, Engine
from stem_observe.rules.model import RuleSet

__all__ = ["Transition", "read_events", "replay"]

_TYPES: dict[str, type[ev.Event]] = {sig.name: kind for kind, sig in signals.SIGNALS.items()}


@dataclass(frozen=True, slots=True)
class Transition:
    at_s: float
    alert: AlertState

    def line(self) -> str:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(self.alert.labels.items())
                          if k not in ("alertname", "severity"))
        value = "" if self.alert.value is None else f"  value={self.alert.value:g}"
        return f"{_clock(self.at_s):>9}  {self.alert.name}{{{labels}}}  {self.alert.state}{value}"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def read_events(path: str | Path) -> list[tuple[float, ev.Event]]:
    """``(offset_s, event)`` pairs from a JSON-lines file; errors name the file and line."""
    found: list[tuple[float, ev.Event]] = []
    for number, line in _lines(Path(path)):
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise StemObserveError(f"{where}: not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise StemObserveError(f"{where}: expected a JSON object")
        signal = data.pop("signal", None)
        kind = _TYPES.get(signal) if isinstance(signal, str) else None
        if kind is None:
            raise StemObserveError(
                f"{where}: signal: expected one of {', '.join(sorted(_TYPES))}, got {signal!r}")
        at = to_seconds(data.pop("at", 0), key=f"{where}: at")
        known = {f.name for f in fields(kind)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise StemObserveError(f"{where}: {signal} has no field {unknown[0]!r}")
        for name in ("queues", "load_avg", "broadcasts"):
            if isinstance(data.get(name), list):
                data[name] = tuple(data[name])
        try:
            event = kind(**data)
        except TypeError as exc:
            raise StemObserveError(f"{where}: {exc}") from None
        found.append((at, event))
    return sorted(found, key=lambda pair: pair[0])


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise StemObserveError(f"{path}: {exc.strerror}") from None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            yield number, stripped


def replay(
    rules: RuleSet, events: list[tuple[float, ev.Event]], *, tick_s: float = 5.0,
    tail_s: float = 600.0,
) -> list[Transition]:
    """Every alert state change, in order, when ``events`` arrive at their offsets."""
    start = 1_000_000.0
    clock = FakeClock(start=start, wall_start=start)
    engine = Engine(rules, None, clock=clock, registry=CollectorRegistry(), tick_s=tick_s)
    end = (events[-1][0] if events else 0.0) + tail_s
    transitions: list[Transition] = []
    index, now = 0, 0.0
    while now <= end:
        while index < len(events) and events[index][0] <= now:
            at, event = events[index]
            engine.observe(event, at=start + at)
            index += 1
        clock.advance(start + now - clock.time())
        transitions.extend(Transition(now, state) for state in engine.evaluate(start + now))
        now += tick_s
    return transitions

