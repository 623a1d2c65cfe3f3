"""Rule and routing definitions: frozen, typed, and validated when built.

Six kinds of rule, each over signals (Stem's wire names) grouped by bounded labels. A rule
holds for a label set — the condition its :meth:`breached` method decides — while:

=============  ==========================================================================
kind           condition
=============  ==========================================================================
rate           the count of ``signals`` over ``window`` is above ``threshold``
ratio          ``numerator / denominator`` over ``window`` is above ``threshold``, and the
               denominator is at least ``min_denominator``
spike          the count over ``window`` is at least ``min_count`` and above ``factor``
               times the rule's own baseline, an EWMA over ``baseline`` (``windows.py``)
absence        nothing of ``signals`` arrived for ``absent_for`` — counted, with ``when``,
               from the later of the last event and the moment the gauge condition began
gauge          the last value of a gauge ``field`` of ``signal`` compares to ``threshold``
poison_pill    one task failed with one error fingerprint ``min_count`` times in ``window``
=============  ==========================================================================

``for`` and ``keep_firing_for`` debounce the condition into alert states (the engine's
job). Annotations are :class:`Template` s with ``{name}`` placeholders and nothing else.

Validation speaks the YAML's language: problems name keys as the rules file spells them
(``window``, not ``window_s``), so :mod:`.loader` can point each one at a line.
Constructing a rule in Python validates it the same way and raises :class:`RulesError`.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from dataclasses import field as dc_field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from stem_observe import events as ev
from stem_observe.errors import StemObserveError

__all__ = [
    "KINDS",
    "LABELS",
    "OPS",
    "PLACEHOLDERS",
    "RECEIVER_KINDS",
    "RECEIVER_OPTIONS",
    "RECEIVER_REQUIRED",
    "RECEIVER_SECRETS",
    "RULE_CLASSES",
    "SEVERITIES",
    "SIGNAL_GAUGES",
    "SIGNAL_LABELS",
    "UNKNOWN",
    "AbsenceRule",
    "Annotations",
    "GaugeCondition",
    "GaugeOp",
    "GaugeRule",
    "InhibitRule",
    "Key",
    "Kind",
    "Label",
    "Location",
    "Matcher",
    "PoisonPillRule",
    "Problem",
    "RateRule",
    "RatioRule",
    "Receiver",
    "ReceiverKind",
    "Route",
    "Routing",
    "Rule",
    "RuleSet",
    "RulesError",
    "Severity",
    "SpikeRule",
    "Template",
    "error_of",
    "format_duration",
    "gauge_value",
    "keys_of",
]

Kind = Literal["rate", "ratio", "spike", "absence", "gauge", "poison_pill"]
Label = Literal["task", "queue", "worker", "reason", "error_type"]
Severity = Literal["critical", "error", "warning", "info"]
GaugeOp = Literal[">", ">=", "<", "<="]
ReceiverKind = Literal["slack", "pagerduty", "webhook", "alertmanager", "console"]
Key = tuple[str, ...]
"""A label set as the values of a rule's ``group_by`` labels, in that order."""

KINDS: Final[tuple[Kind, ...]] = ("rate", "ratio", "spike", "absence", "gauge", "poison_pill")
LABELS: Final[tuple[Label, ...]] = ("task", "queue", "worker", "reason", "error_type")
SEVERITIES: Final[tuple[Severity, ...]] = ("critical", "error", "warning", "info")
OPS: Final[tuple[GaugeOp, ...]] = (">", ">=", "<", "<=")
RECEIVER_KINDS: Final[tuple[ReceiverKind, ...]] = (
    "slack", "pagerduty", "webhook", "alertmanager", "console",
)
UNKNOWN: Final = "unknown"
"""The value of a label the event does not know (a task with no worker id)."""

_T = frozenset({"task", "queue", "worker"})
_W = frozenset({"worker", "queue"})
_S = frozenset({"task", "queue"})
#: The labels each signal carries. Worker signals carry ``queue`` once per queue the worker
#: consumes: one heartbeat of a worker on two queues touches two label sets.
SIGNAL_LABELS: Final[Mapping[str, frozenset[str]]] = MappingProxyType({
    "after-task-publish": _S,
    "task-received": _T,
    "task-prerun": _T,
    "task-postrun": _T,
    "task-succeeded": _T,
    "task-heartbeat": _T,
    "task-retry": _T | {"error_type"},
    "task-failed": _T | {"error_type"},
    "task-revoked": _T | {"reason"},
    "task-dead-lettered": _T | {"reason"},
    "worker-ready": _W,
    "worker-heartbeat": _W,
    "worker-stopping": _W | {"reason"},
    "worker-shutdown": _W | {"reason"},
    "queue-snapshot": frozenset({"queue"}),
    "schedule-entry-due": _S,
    "schedule-entry-dispatched": _S,
    "schedule-entry-failed": _S | {"error_type"},
})
#: Numeric fields a gauge rule (or an absence rule's ``when``) may read, per signal.
SIGNAL_GAUGES: Final[Mapping[str, frozenset[str]]] = MappingProxyType({
    "queue-snapshot": frozenset({
        "pending", "inflight", "delayed", "delayed_overdue", "dead_letters",
        "oldest_pending_age_s", "oldest_dead_letter_age_s",
    }),
    "worker-heartbeat": frozenset({
        "inflight", "concurrency", "max_concurrency", "prefetch", "queue_depth",
        "isolate_count", "memory_bytes", "memory_percent",
    }),
})
_COUNTABLE: Final = frozenset(SIGNAL_LABELS) - {"queue-snapshot"}
_ERROR_SIGNALS: Final = frozenset({"task-failed", "task-retry", "task-dead-lettered"})

_COMMON_PLACEHOLDERS: Final = frozenset({"alertname", "severity", "value", "threshold"})
#: The placeholders each kind's annotations may use, besides the rule's ``group_by`` labels.
#: What each means (what the engine passes): ``alertname`` the rule's name; ``severity``;
#: ``value`` what was measured (a count, a ratio, seconds of silence, a gauge's value);
#: ``threshold`` what it was compared with (a spike's ``factor`` times ``baseline``, an
#: absence's ``absent_for`` in seconds, a poison pill's ``min_count``); ``baseline`` the
#: expected count; ``numerator`` and ``denominator`` counts; ``value_percent`` and
#: ``threshold_percent`` a ratio times 100; ``window``, ``baseline_window``, ``absent_for``
#: and ``silent_for`` durations as :func:`format_duration` writes them; ``last_seen`` an
#: ISO 8601 UTC time or ``never``; ``field`` the gauge's name; ``fingerprint`` the error
#: fingerprint; ``sample_task_ids`` a sequence of task ids (rendered comma-separated).
PLACEHOLDERS: Final[Mapping[Kind, frozenset[str]]] = MappingProxyType({
    "rate": _COMMON_PLACEHOLDERS | {"window"},
    "ratio": _COMMON_PLACEHOLDERS | {
        "window", "numerator", "denominator", "value_percent", "threshold_percent",
    },
    "spike": _COMMON_PLACEHOLDERS | {"window", "baseline", "baseline_window", "factor"},
    "absence": _COMMON_PLACEHOLDERS | {"absent_for", "last_seen", "silent_for"},
    "gauge": _COMMON_PLACEHOLDERS | {"field"},
    "poison_pill": _COMMON_PLACEHOLDERS | {"window", "fingerprint", "sample_task_ids"},
})

MAX_WINDOW_S: Final = 86_400.0
"""Longest counting window: rings are sized by it (a day of 10 s buckets is 8,640 ints)."""
MAX_HORIZON_S: Final = 7 * 86_400.0
_MAX_SAMPLES: Final = 20
_NAME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,127}\Z")
_LABEL_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ENV_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_RESERVED_LABELS: Final = frozenset({"alertname", "severity"})

_Found = Iterator[tuple[str, str]]
"""Problems as (path, message); paths use the YAML's keys (``window``, ``group_by[1]``)."""


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class Location:
    """Where something was defined: a file and a 1-based line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a rules file; ``str()`` reads ``file:line: path: message``."""

    file: str | None
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = "" if self.file is None else (
            f"{self.file}: " if self.line is None else f"{self.file}:{self.line}: "
        )
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


class RulesError(StemObserveError, ValueError):
    """Rules or routing are invalid. ``problems`` lists every problem found, in file order."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            text = str(self.problems[0])
        else:
            text = f"{len(self.problems)} problems:\n" + "\n".join(
                f"  {p}" for p in self.problems)
        super().__init__(text)


def _raise_if(found: list[tuple[str, str]], what: str) -> None:
    if found:
        raise RulesError([Problem(None, None, f"{what}.{path}" if path else what, message)
                          for path, message in found])


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.7)
    return f" (did you mean {close[0]}?)" if close else ""


# --------------------------------------------------------------------------- templates

_PLACEHOLDER_RE: Final = re.compile(r"[a-z_][a-z0-9_]*\Z")


@dataclass(frozen=True, slots=True)
class Template:
    """Text with ``{name}`` placeholders; ``{{`` and ``}}`` are literal braces.

    Only plain lower-case names are placeholders: no attribute access, indexing, format
    specs or expressions, so rendering cannot run code. Raises ``ValueError`` on bad syntax;
    which names a rule may use is checked by the rule (:data:`PLACEHOLDERS`).
    """

    text: str
    fields: tuple[str, ...] = dc_field(init=False, compare=False)
    """The placeholders used, in order of first use."""
    _parts: tuple[str, ...] = dc_field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        parts: list[str] = []
        literal: list[str] = []
        text, i = self.text, 0
        while i < len(text):
            char = text[i]
            if text.startswith("{{", i) or text.startswith("}}", i):
                literal.append(char)
                i += 2
            elif char == "{":
                end = text.find("}", i + 1)
                if end < 0:
                    raise ValueError(f"unclosed '{{' at column {i + 1} (write {{{{ for a brace)")
                name = text[i + 1:end]
                if not _PLACEHOLDER_RE.match(name):
                    raise ValueError(
                        f"{{{name}}} at column {i + 1} is not a placeholder: use a plain "
                        "name such as {queue} (write {{ and }} for literal braces)")
                parts += ["".join(literal), name]
                literal = []
                i = end + 1
            elif char == "}":
                raise ValueError(f"unmatched '}}' at column {i + 1} (write }}}} for a brace)")
            else:
                literal.append(char)
                i += 1
        parts.append("".join(literal))
        object.__setattr__(self, "_parts", tuple(parts))
        object.__setattr__(self, "fields", tuple(dict.fromkeys(parts[1::2])))

    def render(self, values: Mapping[str, object]) -> str:
        """The text with each placeholder replaced; a missing value renders empty.

        Numbers render briefly (``0.25``, ``1234``), sequences comma-separated. Values are
        inserted as they are: receivers escape for their own format.
        """
        parts = self._parts
        out = [parts[0]]
        for i in range(1, len(parts), 2):
            out += [_format_value(values.get(parts[i])), parts[i + 1]]
        return "".join(out)


def format_duration(seconds: float) -> str:
    """``seconds`` as the rules files write durations: ``500ms``, ``90s`` → ``1m30s``, ``1h``.

    What an engine should pass for duration placeholders (``{window}``, ``{absent_for}``,
    ``{silent_for}``, ``{baseline_window}``).
    """
    if not math.isfinite(seconds) or seconds < 0:
        return str(seconds)
    if 0 < seconds < 1:
        return f"{round(seconds * 1000)}ms"
    parts: list[str] = []
    rest = round(seconds)
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size or (unit == "s" and not parts):
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


def _format_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence):
        return ", ".join(_format_value(item) for item in value)
    return str(value)


@dataclass(frozen=True, slots=True)
class Annotations:
    """The templated texts of an alert."""

    summary: Template | None = None
    description: Template | None = None
    runbook_url: Template | None = None
    dashboard_url: Template | None = None

    def items(self) -> Iterator[tuple[str, Template]]:
        """The annotations that are set, as (name, template)."""
        for f in fields(self):
            template = getattr(self, f.name)
            if template is not None:
                yield f.name, template

    def render(self, values: Mapping[str, object]) -> dict[str, str]:
        """Every set annotation rendered with ``values``."""
        return {name: template.render(values) for name, template in self.items()}


# --------------------------------------------------------------------------- rules


def _yaml_key(name: str) -> str:
    return name[:-2] if name.endswith("_s") else name.rstrip("_")


def _check_signals(
    values: Mapping[str, Any], name: str, allowed: frozenset[str], why: str,
    *, required: bool = True,
) -> _Found:
    if name not in values:
        return
    key = _yaml_key(name)
    signals = values[name]
    if required and not signals:
        yield key, "must name at least one signal"
    seen: set[str] = set()
    for i, signal in enumerate(signals):
        if signal not in SIGNAL_LABELS:
            yield f"{key}[{i}]", f"unknown signal {signal!r}" + _did_you_mean(
                signal, sorted(SIGNAL_LABELS))
        elif signal not in allowed:
            yield f"{key}[{i}]", f"signal {signal!r} {why}"
        elif signal in seen:
            yield f"{key}[{i}]", f"signal {signal!r} is listed twice"
        seen.add(signal)


def _check_positive(values: Mapping[str, Any], name: str, *, limit: float = math.inf,
                    zero: bool = False, unit: str = "") -> _Found:
    if name not in values:
        return
    value = values[name]
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        yield _yaml_key(name), f"must be {'non-negative' if zero else 'positive'}, got {value!r}"
    elif value > limit:
        yield _yaml_key(name), f"must be at most {_format_value(limit)}{unit}, got {value!r}"


def _check_int(values: Mapping[str, Any], name: str, low: int, high: int | None = None) -> _Found:
    if name not in values:
        return
    value = values[name]
    if value < low or (high is not None and value > high):
        bound = f"at least {low}" if high is None else f"between {low} and {high}"
        yield _yaml_key(name), f"must be {bound}, got {value!r}"


def _check_threshold(values: Mapping[str, Any], *, signed: bool = False) -> _Found:
    if "threshold" in values:
        value = values["threshold"]
        if not math.isfinite(value) or (value < 0 and not signed):
            yield "threshold", f"must be a finite{'' if signed else ', non-negative'} number, " \
                               f"got {value!r}"


def _check_gauge(signal: str | None, field: str | None, op: str | None, at: str) -> _Found:
    if signal is not None and signal not in SIGNAL_GAUGES:
        hint = (_did_you_mean(signal, sorted(SIGNAL_GAUGES)) if signal not in SIGNAL_LABELS
                else f"; gauges come from {' or '.join(sorted(SIGNAL_GAUGES))}")
        yield f"{at}signal", f"signal {signal!r} carries no gauge{hint}"
    elif signal is not None and field is not None and field not in SIGNAL_GAUGES[signal]:
        yield f"{at}field", f"{signal} has no gauge {field!r}" + _did_you_mean(
            field, sorted(SIGNAL_GAUGES[signal])) + "; it has " + ", ".join(
            sorted(SIGNAL_GAUGES[signal]))
    if op is not None and op not in OPS:
        yield f"{at}op", f"must be one of {', '.join(OPS)}, got {op!r}"


def _compare(op: GaugeOp, value: float, threshold: float) -> bool:
    if op == ">":
        return value > threshold
    if op == ">=":
        return value >= threshold
    if op == "<":
        return value < threshold
    return value <= threshold


@dataclass(frozen=True, slots=True, kw_only=True)
class GaugeCondition:
    """A gauge comparison (an absence rule's ``when``), e.g. ``inflight > 0``."""

    signal: str
    field: str
    threshold: float
    op: GaugeOp = ">"

    def __post_init__(self) -> None:
        found = list(_check_gauge(self.signal, self.field, self.op, ""))
        if not math.isfinite(self.threshold):
            found.append(("threshold", f"must be a finite number, got {self.threshold!r}"))
        _raise_if(found, "when")

    def holds(self, value: float) -> bool:
        """Whether ``value`` satisfies the condition."""
        return _compare(self.op, value, self.threshold)


_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """What every rule has. Build one of the six subclasses; ``kind`` names it.

    ``signals`` are what the rule counts (for a ratio, numerator and denominator together;
    for a gauge, its one signal); :attr:`inputs` is every signal the engine must route to
    it. ``for_s`` is how long the condition must hold before the alert fires;
    ``keep_firing_for_s`` how long it keeps firing after the condition clears. ``source``
    is where the rule was defined, when it came from a file.
    """

    kind: ClassVar[Kind]

    name: str
    group_by: tuple[Label, ...] = ()
    for_s: float = 0.0
    keep_firing_for_s: float = 0.0
    severity: Severity = "warning"
    labels: Mapping[str, str] = dc_field(default_factory=dict, hash=False)
    annotations: Annotations = Annotations()
    source: Location | None = dc_field(default=None, compare=False)

    def __post_init__(self) -> None:
        if type(self) is Rule:
            raise TypeError("Rule is abstract: build a RateRule, RatioRule, SpikeRule, "
                            "AbsenceRule, GaugeRule or PoisonPillRule")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        _raise_if(list(self.check(values)), f"rules[{self.name!r}]")

    if TYPE_CHECKING:  # each kind defines it, as a field or a property

        @property
        def signals(self) -> tuple[str, ...]: ...

    @property
    def inputs(self) -> frozenset[str]:
        """Every signal this rule needs to see."""
        return frozenset(self.signals)

    def key(self, labels: Mapping[str, str]) -> Key:
        """The label set of ``labels`` for this rule (``unknown`` for a missing label)."""
        return tuple(labels.get(label, UNKNOWN) for label in self.group_by)

    @classmethod
    def check(cls, values: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """Problems with ``values`` (field name → value) as (YAML path, message).

        Only the fields present are checked, so a loader can check what it could read
        and still report everything at once.
        """
        if "name" in values and not _NAME_RE.match(values["name"]):
            yield "name", (f"must start with a letter and use letters, digits and _ . : - "
                           f"(at most 128), got {values['name']!r}")
        if "severity" in values and values["severity"] not in SEVERITIES:
            yield "severity", f"must be one of {', '.join(SEVERITIES)}, got " \
                              f"{values['severity']!r}" + _did_you_mean(
                                  str(values["severity"]), SEVERITIES)
        yield from _check_positive(values, "for_s", zero=True, limit=MAX_HORIZON_S, unit=" s")
        yield from _check_positive(values, "keep_firing_for_s", zero=True, limit=MAX_HORIZON_S,
                                   unit=" s")
        group_by: tuple[str, ...] = values.get("group_by", ())
        yield from cls._check_group_by(values, group_by)
        for name, value in values.get("labels", _EMPTY).items():
            if not _LABEL_NAME_RE.match(name) or name.startswith("__"):
                yield f"labels.{name}", "label names use letters, digits and _ and do not " \
                                        "start with __"
            elif name in _RESERVED_LABELS or name in group_by:
                yield f"labels.{name}", f"label {name!r} is set by the engine " \
                                        "(alertname, severity and the group_by labels)"
            elif not isinstance(value, str):
                yield f"labels.{name}", f"expected a string, got {value!r}"
        if "annotations" in values:
            allowed = PLACEHOLDERS[cls.kind] | (set(group_by) & set(LABELS))
            for name, template in values["annotations"].items():
                for placeholder in template.fields:
                    if placeholder not in allowed:
                        yield f"annotations.{name}", (
                            f"unknown placeholder {{{placeholder}}}"
                            + _did_you_mean(placeholder, sorted(allowed))
                            + f"; a {cls.kind} rule offers "
                            + ", ".join(f"{{{p}}}" for p in sorted(allowed)))
                if name.endswith("_url") and not template.text.startswith(
                        ("https://", "http://")):
                    yield f"annotations.{name}", "must be an http:// or https:// URL"
        yield from cls._check_kind(values)

    @classmethod
    def _check_group_by(cls, values: Mapping[str, Any], group_by: Sequence[str]) -> _Found:
        inputs = [(path, signal) for path, signal in cls._inputs(values)
                  if signal in SIGNAL_LABELS]
        seen: set[str] = set()
        for i, label in enumerate(group_by):
            if label not in LABELS:
                yield f"group_by[{i}]", f"unknown label {label!r}" + _did_you_mean(
                    label, LABELS) + f"; labels are {', '.join(LABELS)}"
            elif label in seen:
                yield f"group_by[{i}]", f"label {label!r} is listed twice"
            else:
                missing = [s for _, s in inputs if label not in SIGNAL_LABELS[s]]
                if missing:
                    carried = ", ".join(sorted(SIGNAL_LABELS[missing[0]]))
                    yield f"group_by[{i}]", (f"signal {missing[0]} does not carry label "
                                             f"{label!r} (it carries {carried})")
            seen.add(label)

    @classmethod
    def _inputs(cls, values: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        for i, signal in enumerate(values.get("signals", ())):
            yield f"signals[{i}]", signal

    @classmethod
    def _check_kind(cls, values: Mapping[str, Any]) -> _Found:
        return iter(())


def _check_window(values: Mapping[str, Any]) -> _Found:
    return _check_positive(values, "window_s", limit=MAX_WINDOW_S, unit=" s (24h)")


@dataclass(frozen=True, slots=True, kw_only=True)
class RateRule(Rule):
    """The count of ``signals`` over ``window_s`` is above ``threshold``."""

    kind: ClassVar[Kind] = "rate"
    signals: tuple[str, ...]
    window_s: float
    threshold: float

    @classmethod
    def _check_kind(cls, values: Mapping[str, Any]) -> _Found:
        yield from _check_signals(values, "signals", _COUNTABLE,
                                  "is a gauge carrier; use a gauge rule")
        yield from _check_window(values)
        yield from _check_threshold(values)

    def breached(self, count: int) -> bool:
        return count > self.threshold


@dataclass(frozen=True, slots=True, kw_only=True)
class RatioRule(Rule):
    """``numerator / denominator`` counts over ``window_s`` above ``threshold``.

    No breach while the denominator is below ``min_denominator``: three failures out of
    four attempts is not yet a failure rate.
    """

    kind: ClassVar[Kind] = "ratio"
    numerator: tuple[str, ...]
    denominator: tuple[str, ...]
    window_s: float
    threshold: float
    min_denominator: int = 1

    @property
    def signals(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.numerator + self.denominator))

    @classmethod
    def _inputs(cls, values: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        for side in ("numerator", "denominator"):
            for i, signal in enumerate(values.get(side, ())):
                yield f"{side}[{i}]", signal

    @classmethod
    def _check_kind(cls, values: Mapping[str, Any]) -> _Found:
        for side in ("numerator", "denominator"):
            yield from _check_signals(values, side, _COUNTABLE,
                                      "is a gauge carrier; use a gauge rule")
        yield from _check_window(values)
        yield from _check_threshold(values)
        yield from _check_int(values, "min_denominator", 1)

    def breached(self, numerator: int, denominator: int) -> bool:
        return denominator >= self.min_denominator and numerator > self.threshold * denominator


@dataclass(frozen=True, slots=True, kw_only=True)
class SpikeRule(Rule):
    """The count over ``window_s`` against the rule's own baseline over ``baseline_s``.

    Breached when the count is at least ``min_count`` (quiet queues do not page), the
    baseline has at least ``window_s`` of history behind it, and the count is above
    ``factor`` times the baseline's expected count for the same window. The baseline is
    the EWMA of :class:`~stem_observe.rules.windows.CountWindows` with horizon
    ``baseline_s``; it covers the time before the window, so a spike does not raise its
    own bar.
    """

    kind: ClassVar[Kind] = "spike"
    signals: tuple[str, ...]
    window_s: float
    baseline_s: float
    factor: float
    min_count: int = 1

    @classmethod
    def _check_kind(cls, values: Mapping[str, Any]) -> _Found:
        yield from _check_signals(values, "signals", _COUNTABLE,
                                  "is a gauge carrier; use a gauge rule")
        yield from _check_window(values)
        yield from _check_positive(values, "baseline_s", limit=MAX_HORIZON_S, unit=" s (7d)")
        if "factor" in values and not (math.isfinite(values["factor"]) and values["factor"] > 1):
            yield "factor", f"must be a number above 1, got {values['factor']!r}"
        yield from _check_int(values, "min_count", 1)
        window, baseline = values.get("window_s"), values.get("baseline_s")
        if window and baseline and baseline < 2 * window:
            yield "baseline", "must be at least twice the window " \
                              f"({_format_value(baseline)} s < 2 x {_format_value(window)} s)"

    def breached(self, count: int, expected: float, history_s: float) -> bool:
        return (count >= self.min_count and history_s >= self.window_s
                and count > self.factor * expected)


@dataclass(frozen=True, slots=True, kw_only=True)
class AbsenceRule(Rule):
    """Nothing of ``signals`` for ``absent_for_s``: a silent worker, a stalled queue.

    A label set is known once one of ``signals`` arrived for it (or, with ``when``, once the
    gauge condition held for it); absence cannot be judged for what was never seen.
    ``reset_on`` signals forget a label set at once (a worker that shut down cleanly is not
    down); one silent for ``forget_after_s`` is forgotten too, and its alert resolves —
    worker ids often carry a pid, and restarts must not leave alerts firing forever.
    With ``when``, only label sets whose gauge condition holds are judged, and silence
    counts from the later of the last event and the moment the condition began to hold.
    """

    kind: ClassVar[Kind] = "absence"
    signals: tuple[str, ...]
    absent_for_s: float
    reset_on: tuple[str, ...] = ()
    when: GaugeCondition | None = None
    forget_after_s: float = 3600.0

    @property
    def inputs(self) -> frozenset[str]:
        extra = () if self.when is None else (self.when.signal,)
        return frozenset(self.signals + self.reset_on + extra)

    @classmethod
    def _inputs(cls, values: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        for side in ("signals", "reset_on"):
            for i, signal in enumerate(values.get(side, ())):
                yield f"{side}[{i}]", signal
        if values.get("when") is not None:
            yield "when.signal", values["when"].signal

    @classmethod
    def _check_kind(cls, values: Mapping[str, Any]) -> _Found:
        yield from _check_signals(values, "signals", _COUNTABLE,
                                  "is a gauge carrier; use it in 'when'")
        yield from _check_signals(values, "reset_on", _COUNTABLE,
                                  "is a gauge carrier", required=False)
        yield from _check_positive(values, "absent_for_s", limit=MAX_HORIZON_S, unit=" s (7d)")
        yield from _check_positive(values, "forget_after_s", limit=30 * 86_400.0,
                                   unit=" s (30d)")
        absent, forget = values.get("absent_for_s"), values.get("forget_after_s")
        if absent and forget and forget <= absent:
            yield "forget_after", "must be longer than absent_for"

    def breached(self, silent_for_s: float) -> bool:
        return silent_for_s > self.absent_for_s


@dataclass(frozen=True, slots=True, kw_only=True)
class GaugeRule(Rule):
    """The last value of gauge ``field`` of ``signal`` compared to ``threshold`` by ``op``.

    Gauge thresholds on ``*_s`` fields are seconds (the YAML may write ``10m``).
    """

    kind: ClassVar[Kind] = "gauge"
    signal: str
    field: str
    threshold: float
    op: GaugeOp = ">"

    @property
    def signals(self) -> tuple[str, ...]:
        return (self.signal,)

    @classmethod
    def _inputs(cls, values: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        if "signal" in values:
            yield "signal", values["signal"]

    @classmethod
    def _check_kind(cls, values: Mapping[str, Any]) -> _Found:
        yield from _check_gauge(values.get("signal"), values.get("field"), values.get("op"), "")
        yield from _check_threshold(values, signed=True)

    def breached(self, value: float) -> bool:
        return _compare(self.op, value, self.threshold)


@dataclass(frozen=True, slots=True, kw_only=True)
class PoisonPillRule(Rule):
    """One task failing with one error fingerprint ``min_count`` times within ``window_s``.

    The fingerprint (error type and the message with numbers, ids and hex collapsed, see
    :func:`~stem_observe.rules.windows.fingerprint`) is an implicit extra key beside
    ``group_by``, which must include ``task``. Alerts carry it and up to ``max_samples``
    task ids.
    """

    kind: ClassVar[Kind] = "poison_pill"
    signals: tuple[str, ...] = ("task-failed",)
    window_s: float
    min_count: int
    max_samples: int = 5

    @classmethod
    def _check_kind(cls, values: Mapping[str, Any]) -> _Found:
        yield from _check_signals(values, "signals", _ERROR_SIGNALS,
                                  "carries no error; use task-failed, task-retry or "
                                  "task-dead-lettered")
        yield from _check_window(values)
        yield from _check_int(values, "min_count", 2)
        yield from _check_int(values, "max_samples", 1, _MAX_SAMPLES)
        if "group_by" in values and "task" not in values["group_by"]:
            yield "group_by", "a poison_pill rule must group by task"

    def breached(self, count: int) -> bool:
        return count >= self.min_count


#: The rule class of each kind.
RULE_CLASSES: Final[Mapping[Kind, type[Rule]]] = MappingProxyType({
    cls.kind: cls
    for cls in (RateRule, RatioRule, SpikeRule, AbsenceRule, GaugeRule, PoisonPillRule)
})


# --------------------------------------------------------------------------- events


def _known(value: str | None) -> str:
    return value if value else UNKNOWN


def _label_values(event: ev.Event) -> dict[str, str]:
    if isinstance(event, ev.TaskEvent):
        values = {"task": _known(event.task_name), "queue": _known(event.queue),
                  "worker": _known(event.worker_id)}
        if isinstance(event, ev.TaskFailed | ev.TaskRetry):
            values["error_type"] = _known(event.error_type)
        elif isinstance(event, ev.TaskRevoked | ev.TaskDeadLettered):
            values["reason"] = _known(event.reason)
        return values
    if isinstance(event, ev.WorkerEvent):
        values = {"worker": _known(event.worker_id)}
        if isinstance(event, ev.WorkerStopping | ev.WorkerShutdown):
            values["reason"] = _known(event.reason)
        return values
    if isinstance(event, ev.QueueSnapshot):
        return {"queue": _known(event.queue)}
    if isinstance(event, ev.ScheduleEntryEvent):
        values = {"task": _known(event.task_name), "queue": _known(event.queue)}
        if isinstance(event, ev.ScheduleEntryFailed):
            values["error_type"] = _known(event.error_type)
        return values
    return {}


def keys_of(event: ev.Event, group_by: Sequence[str]) -> tuple[Key, ...]:
    """The label sets ``event`` counts toward for a rule grouped by ``group_by``.

    One, except for a worker event grouped by ``queue``: one per queue the worker consumes
    (``unknown`` when it names none). Missing or empty values read ``unknown``.
    """
    values = _label_values(event)
    if isinstance(event, ev.WorkerEvent) and "queue" in group_by:
        return tuple(
            tuple(queue if label == "queue" else values.get(label, UNKNOWN)
                  for label in group_by)
            for queue in dict.fromkeys(event.queues or (UNKNOWN,))
        )
    return (tuple(values.get(label, UNKNOWN) for label in group_by),)


def gauge_value(event: ev.Event, field: str) -> float | None:
    """The gauge ``field`` of ``event`` (see :data:`SIGNAL_GAUGES`); ``None`` if unmeasured."""
    value = getattr(event, field, None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def error_of(event: ev.Event) -> tuple[str, str] | None:
    """(error type, message) of a failure, retry or dead letter; ``None`` for other events.

    A dead letter has no error type: its reason stands in for it.
    """
    if isinstance(event, ev.TaskFailed):
        return event.error_type or UNKNOWN, event.error_message or ""
    if isinstance(event, ev.TaskRetry):
        message = event.error_message if event.error_message is not None else event.reason
        return event.error_type or UNKNOWN, message or ""
    if isinstance(event, ev.TaskDeadLettered):
        return event.reason or UNKNOWN, event.error or ""
    return None


# --------------------------------------------------------------------------- routing

_MATCHER_RE: Final = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*\Z")
MatchOp = Literal["=", "!=", "=~", "!~"]


@dataclass(frozen=True, slots=True)
class Matcher:
    """One label matcher as Alertmanager writes it: ``severity = critical``,
    ``queue =~ "emails|sms"``. Regexes match the whole value; a missing label is ``""``."""

    name: str
    op: MatchOp
    value: str
    _regex: re.Pattern[str] | None = dc_field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        regex = None
        if self.op in ("=~", "!~"):
            try:
                regex = re.compile(self.value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {self.value!r}: {exc}") from None
        object.__setattr__(self, "_regex", regex)

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """``name op value``; the value may be double-quoted. Raises ``ValueError``."""
        match = _MATCHER_RE.match(text)
        if match is None:
            raise ValueError(f"expected a matcher such as 'severity = critical', got {text!r}")
        name, op, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        return cls(name, op, value)  # type: ignore[arg-type]

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self._regex is not None:
            return (self._regex.fullmatch(actual) is not None) == (self.op == "=~")
        return (actual == self.value) == (self.op == "=")

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.name}{self.op}"{escaped}"'


def _all_match(matchers: Sequence[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)


OptionValue = str | int | float | bool | tuple[str, ...] | Mapping[str, str]
#: The settings of each receiver kind and their types, as
#: :func:`stem_observe.notify.config.build_receiver` takes them, less the literal secrets
#: (see :data:`RECEIVER_SECRETS`): secrets are named by environment variable (``*_env``
#: holds a variable name, ``*_envs`` a list of them). Durations are held in seconds.
RECEIVER_OPTIONS: Final[Mapping[ReceiverKind, Mapping[str, str]]] = MappingProxyType({
    "console": {"send_resolved": "bool", "trace_url": "str", "formats": "list"},
    "slack": {"url_env": "env", "send_resolved": "bool", "trace_url": "str",
              "timeout": "duration", "rate_per_s": "number", "burst": "int"},
    "pagerduty": {"routing_key_env": "env", "url": "url", "send_resolved": "bool",
                  "source": "str", "severity": "str", "severity_label": "str",
                  "client_url": "url", "trace_url": "str", "timeout": "duration",
                  "throttle_wait": "duration", "rate_per_s": "number", "burst": "int"},
    "webhook": {"url_env": "env", "secret_envs": "envs", "max_alerts": "int",
                "send_resolved": "bool", "external_url": "url", "headers": "mapping",
                "timeout": "duration"},
    "alertmanager": {"url": "url", "bearer_token_env": "env", "send_resolved": "bool",
                     "firing_ttl": "duration", "timeout": "duration"},
})
#: Settings each kind requires.
RECEIVER_REQUIRED: Final[Mapping[ReceiverKind, frozenset[str]]] = MappingProxyType({
    "console": frozenset(),
    "slack": frozenset({"url_env"}),
    "pagerduty": frozenset({"routing_key_env"}),
    "webhook": frozenset({"url_env"}),
    "alertmanager": frozenset({"url"}),
})
#: Secrets a routing file may not hold literally, with the setting to use instead.
RECEIVER_SECRETS: Final[Mapping[ReceiverKind, Mapping[str, str]]] = MappingProxyType({
    "console": {},
    "slack": {"url": "url_env"},
    "pagerduty": {"routing_key": "routing_key_env"},
    "webhook": {"url": "url_env", "secrets": "secret_envs", "hub_secret": "secret_envs"},
    "alertmanager": {"bearer_token": "bearer_token_env"},
})


@dataclass(frozen=True, slots=True, kw_only=True)
class Receiver:
    """Where notifications go: a kind and its settings (:data:`RECEIVER_OPTIONS`).

    Secrets are held only as environment-variable names (``url_env: SLACK_WEBHOOK_URL``),
    so no secret sits in this object, its repr or an error built from it; the notifier
    reads the variables when it is built (:meth:`config` is what
    :func:`stem_observe.notify.config.build_receiver` takes).
    """

    name: str
    kind: ReceiverKind
    options: Mapping[str, OptionValue] = dc_field(default_factory=dict, hash=False)
    source: Location | None = dc_field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        found: list[tuple[str, str]] = []
        if self.kind not in RECEIVER_KINDS:
            found.append(("kind", f"must be one of {', '.join(RECEIVER_KINDS)}"))
        else:
            schema = RECEIVER_OPTIONS[self.kind]
            for key, value in self.options.items():
                if key in RECEIVER_SECRETS[self.kind]:
                    found.append((key, "is a secret: put it in an environment variable and "
                                       f"write {RECEIVER_SECRETS[self.kind][key]}: "
                                       "VARIABLE_NAME"))
                elif key not in schema:
                    found.append((key, f"a {self.kind} receiver has no setting {key!r}"))
                else:
                    found += [(f"{key}{where}", message)
                              for where, message in _check_option(schema[key], value)]
            for key in sorted(RECEIVER_REQUIRED[self.kind] - set(self.options)):
                found.append((key, "required: name the environment variable that holds it"
                              if schema[key] == "env" else "required"))
        _raise_if(found, f"receivers[{self.name!r}]")

    @property
    def env(self) -> dict[str, str]:
        """Every environment variable the receiver reads, by the setting that names it."""
        found: dict[str, str] = {}
        for key, value in self.options.items():
            if key.endswith("_env") and isinstance(value, str):
                found[key] = value
            elif key.endswith("_envs") and isinstance(value, tuple):
                found.update({f"{key}[{i}]": variable for i, variable in enumerate(value)})
        return found

    def config(self) -> dict[str, Any]:
        """The settings as ``stem_observe.notify.config.build_receiver(name, config)`` takes
        them."""
        return {"type": self.kind, **{
            key: dict(value) if isinstance(value, Mapping) else value
            for key, value in self.options.items()}}


def _check_option(kind: str, value: object) -> _Found:
    if kind in ("env", "envs"):
        names = value if isinstance(value, tuple) else (value,)
        for i, name in enumerate(names):
            if not isinstance(name, str) or not _ENV_RE.match(name):
                where = f"[{i}]" if kind == "envs" else ""
                yield where, "expected an environment variable name, such as SLACK_WEBHOOK_URL"
    elif kind == "url" and not str(value).startswith(("https://", "http://")):
        yield "", f"expected an http:// or https:// URL, got {value!r}"
    elif kind in ("number", "duration") and not (
            isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        yield "", f"must be a finite, non-negative number, got {value!r}"
    elif kind == "int" and isinstance(value, int) and value < 0:
        yield "", f"must not be negative, got {value!r}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """A node of the routing tree, with every setting resolved (children inherit).

    Alerts are grouped by ``group_by`` (``alertname`` is the rule's name); a new group
    waits ``group_wait_s`` before its first notification, changes go out at most every
    ``group_interval_s``, and an unchanged firing group is re-sent every
    ``repeat_interval_s``. Matching follows Alertmanager: see :meth:`match`.
    """

    receiver: str
    matchers: tuple[Matcher, ...] = ()
    group_by: tuple[str, ...] = ("alertname",)
    group_wait_s: float = 30.0
    group_interval_s: float = 300.0
    repeat_interval_s: float = 14_400.0
    send_resolved: bool = True
    continue_: bool = False
    routes: tuple[Route, ...] = ()
    source: Location | None = dc_field(default=None, compare=False)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return _all_match(self.matchers, labels)

    def match(self, labels: Mapping[str, str]) -> tuple[Route, ...]:
        """The routes an alert with ``labels`` goes to: the deepest matching children,
        depth first, stopping after the first match unless it has ``continue``; this route
        itself when no child matches; nothing when this route does not match."""
        if not self.matches(labels):
            return ()
        found: list[Route] = []
        for child in self.routes:
            matched = child.match(labels)
            if matched:
                found += matched
                if not child.continue_:
                    break
        return tuple(found) or (self,)


@dataclass(frozen=True, slots=True, kw_only=True)
class InhibitRule:
    """While an alert matching ``source_matchers`` fires, alerts matching
    ``target_matchers`` with the same values of the ``equal`` labels are muted."""

    source_matchers: tuple[Matcher, ...]
    target_matchers: tuple[Matcher, ...]
    equal: tuple[str, ...] = ()
    source: Location | None = dc_field(default=None, compare=False)

    def inhibits(self, source: Mapping[str, str], target: Mapping[str, str]) -> bool:
        """Whether a firing alert labelled ``source`` mutes one labelled ``target``.

        As in Alertmanager, a missing label equals an empty one, and an alert matching both
        sides is not muted by another alert that matches both sides.
        """
        if not (_all_match(self.source_matchers, source)
                and _all_match(self.target_matchers, target)):
            return False
        if any(source.get(label, "") != target.get(label, "") for label in self.equal):
            return False
        return not (_all_match(self.source_matchers, target)
                    and _all_match(self.target_matchers, source))


@dataclass(frozen=True, slots=True, kw_only=True)
class Routing:
    """Receivers by name, the routing tree and the inhibition rules."""

    receivers: Mapping[str, Receiver]
    route: Route
    inhibit: tuple[InhibitRule, ...] = ()
    source: Location | None = dc_field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "receivers", MappingProxyType(dict(self.receivers)))
        found = [(f"route{path}", f"unknown receiver {name!r}")
                 for path, name in _route_receivers(self.route, "")
                 if name not in self.receivers]
        _raise_if(found, "routing")

    @classmethod
    def default(cls) -> Routing:
        """Everything to one console receiver, grouped by alert name."""
        console = Receiver(name="console", kind="console")
        return cls(receivers={"console": console}, route=Route(receiver="console"))


def _route_receivers(route: Route, path: str) -> Iterator[tuple[str, str]]:
    yield path, route.receiver
    for i, child in enumerate(route.routes):
        yield from _route_receivers(child, f"{path}.routes[{i}]")


@dataclass(frozen=True, slots=True)
class RuleSet:
    """What the loader returns: rules in file order, and the routing if one was given."""

    rules: tuple[Rule, ...] = ()
    routing: Routing | None = None

    def __post_init__(self) -> None:
        names = [rule.name for rule in self.rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise RulesError([Problem(None, None, "rules", f"duplicate rule name {name!r}")
                              for name in duplicates])

    def __getitem__(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)

    def __len__(self) -> int:
        return len(self.rules)
