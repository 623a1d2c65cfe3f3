"""Validation helpers shared by rule and routing definitions.

Checks yield problems as (path, message) with paths in the YAML's spelling (``window``,
not ``window_s``), so the loader can point each one at a line; :func:`raise_if` turns what
a constructor found into one :class:`~stem_observe.errors.RulesError`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from stem_observe.errors import Problem, RulesError
from stem_observe.rules.signals_map import SIGNAL_LABELS
from stem_observe.rules.templates import format_value

__all__ = [
    "MAX_HORIZON_S",
    "MAX_WINDOW_S",
    "Found",
    "Location",
    "check_int",
    "check_positive",
    "check_signals",
    "check_threshold",
    "did_you_mean",
    "raise_if",
    "yaml_key",
]

MAX_WINDOW_S: Final = 86_400.0
"""Longest counting window: rings are sized by it (a day of 10 s buckets is 8,640 ints)."""
MAX_HORIZON_S: Final = 7 * 86_400.0

Found = Iterator[tuple[str, str]]
"""Problems as (path, message); paths use the YAML's keys (``window``, ``group_by[1]``)."""


@dataclass(frozen=True, slots=True)
class Location:
    """Where something was defined: a file and a 1-based line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def raise_if(found: list[tuple[str, str]], what: str) -> None:
    if found:
        raise RulesError([Problem(None, None, f"{what}.{path}" if path else what, message)
                          for path, message in found])


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the choice closest to ``word``, or nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.7)
    return f" (did you mean {close[0]}?)" if close else ""


def yaml_key(name: str) -> str:
    return name[:-2] if name.endswith("_s") else name.rstrip("_")


def check_signals(
    values: Mapping[str, Any], name: str, allowed: frozenset[str], why: str,
    *, required: bool = True,
) -> Found:
    if name not in values:
        return
    key = yaml_key(name)
    signals = values[name]
    if required and not signals:
        yield key, "must name at least one signal"
    seen: set[str] = set()
    for i, signal in enumerate(signals):
        if signal not in SIGNAL_LABELS:
            yield f"{key}[{i}]", f"unknown signal {signal!r}" + did_you_mean(
                signal, sorted(SIGNAL_LABELS))
        elif signal not in allowed:
            yield f"{key}[{i}]", f"signal {signal!r} {why}"
        elif signal in seen:
            yield f"{key}[{i}]", f"signal {signal!r} is listed twice"
        seen.add(signal)


def check_positive(values: Mapping[str, Any], name: str, *, limit: float = math.inf,
                    zero: bool = False, unit: str = "") -> Found:
    if name not in values:
        return
    value = values[name]
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        yield yaml_key(name), f"must be {'non-negative' if zero else 'positive'}, got {value!r}"
    elif value > limit:
        yield yaml_key(name), f"must be at most {format_value(limit)}{unit}, got {value!r}"


def check_int(values: Mapping[str, Any], name: str, low: int, high: int | None = None) -> Found:
    if name not in values:
        return
    value = values[name]
    if value < low or (high is not None and value > high):
        bound = f"at least {low}" if high is None else f"between {low} and {high}"
        yield yaml_key(name), f"must be {bound}, got {value!r}"


def check_threshold(values: Mapping[str, Any], *, signed: bool = False) -> Found:
    if "threshold" in values:
        value = values["threshold"]
        if not math.isfinite(value) or (value < 0 and not signed):
            yield "threshold", f"must be a finite{'' if signed else ', non-negative'} number, " \
                               f"got {value!r}"
