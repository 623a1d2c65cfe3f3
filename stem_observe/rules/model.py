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
job). Annotations are :class:`.templates.Template` s with ``{name}`` placeholders and nothing else.

Validation speaks the YAML's language: problems name keys as the rules file spells them
(``window``, not ``window_s``), so :mod:`.loader` can point each one at a line.
Constructing a rule in Python validates it the same way and raises
:class:`~stem_observe.errors.RulesError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from dataclasses import field as dc_field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from stem_observe.errors import Problem, RulesError
from stem_observe.rules._checks import (
    MAX_HORIZON_S,
    MAX_WINDOW_S,
    Found,
    Location,
    check_int,
    check_positive,
    check_signals,
    check_threshold,
    did_you_mean,
    raise_if,
)
from stem_observe.rules.routing import Routing
from stem_observe.rules.signals_map import (
    COUNTABLE,
    ERROR_SIGNALS,
    LABELS,
    SIGNAL_GAUGES,
    SIGNAL_LABELS,
    UNKNOWN,
    Key,
    Label,
)
from stem_observe.rules.templates import Annotations, format_value

__all__ = [
    "KINDS",
    "OPS",
    "PLACEHOLDERS",
    "RULE_CLASSES",
    "SEVERITIES",
    "AbsenceRule",
    "GaugeCondition",
    "GaugeOp",
    "GaugeRule",
    "Kind",
    "PoisonPillRule",
    "RateRule",
    "RatioRule",
    "Rule",
    "RuleSet",
    "Severity",
    "SpikeRule",
]

Kind = Literal["rate", "ratio", "spike", "absence", "gauge", "poison_pill"]
Severity = Literal["critical", "error", "warning", "info"]
GaugeOp = Literal[">", ">=", "<", "<="]

KINDS: Final[tuple[Kind, ...]] = ("rate", "ratio", "spike", "absence", "gauge", "poison_pill")
SEVERITIES: Final[tuple[Severity, ...]] = ("critical", "error", "warning", "info")
OPS: Final[tuple[GaugeOp, ...]] = (">", ">=", "<", "<=")

_COMMON_PLACEHOLDERS: Final = frozenset({"alertname", "severity", "value", "threshold"})
#: The placeholders each kind's annotations may use, besides the rule's ``group_by`` labels.
#: What each means (what the engine passes): ``alertname`` the rule's name; ``severity``;
#: ``value`` what was measured (a count, a ratio, seconds of silence, a gauge's value);
#: ``threshold`` what it was compared with (a spike's ``factor`` times ``baseline``, an
#: absence's ``absent_for`` in seconds, a poison pill's ``min_count``); ``baseline`` the
#: expected count; ``numerator`` and ``denominator`` counts; ``value_percent`` and
#: ``threshold_percent`` a ratio times 100; ``window``, ``baseline_window``, ``absent_for``
#: and ``silent_for`` durations as :func:`.templates.format_duration` writes them; ``last_seen`` an
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

_MAX_SAMPLES: Final = 20
_NAME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,127}\Z")
_LABEL_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_RESERVED_LABELS: Final = frozenset({"alertname", "severity"})


def _check_gauge(signal: str | None, field: str | None, op: str | None, at: str) -> Found:
    if signal is not None and signal not in SIGNAL_GAUGES:
        hint = (did_you_mean(signal, sorted(SIGNAL_GAUGES)) if signal not in SIGNAL_LABELS
                else f"; gauges come from {' or '.join(sorted(SIGNAL_GAUGES))}")
        yield f"{at}signal", f"signal {signal!r} carries no gauge{hint}"
    elif signal is not None and field is not None and field not in SIGNAL_GAUGES[signal]:
        yield f"{at}field", f"{signal} has no gauge {field!r}" + did_you_mean(
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
        raise_if(found, "when")

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
    annotations: Annotations = Annotations()  # noqa: RUF009 (frozen, so shareable)
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
        raise_if(list(self.check(values)), f"rules[{self.name!r}]")

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
                              f"{values['severity']!r}" + did_you_mean(
                                  str(values["severity"]), SEVERITIES)
        yield from check_positive(values, "for_s", zero=True, limit=MAX_HORIZON_S, unit=" s")
        yield from check_positive(values, "keep_firing_for_s", zero=True, limit=MAX_HORIZON_S,
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
                            + did_you_mean(placeholder, sorted(allowed))
                            + f"; a {cls.kind} rule offers "
                            + ", ".join(f"{{{p}}}" for p in sorted(allowed)))
                if name.endswith("_url") and not template.text.startswith(
                        ("https://", "http://")):
                    yield f"annotations.{name}", "must be an http:// or https:// URL"
        yield from cls._check_kind(values)

    @classmethod
    def _check_group_by(cls, values: Mapping[str, Any], group_by: Sequence[str]) -> Found:
        inputs = [(path, signal) for path, signal in cls._inputs(values)
                  if signal in SIGNAL_LABELS]
        seen: set[str] = set()
        for i, label in enumerate(group_by):
            if label not in LABELS:
                yield f"group_by[{i}]", f"unknown label {label!r}" + did_you_mean(
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
    def _check_kind(cls, values: Mapping[str, Any]) -> Found:
        return iter(())


def _check_window(values: Mapping[str, Any]) -> Found:
    return check_positive(values, "window_s", limit=MAX_WINDOW_S, unit=" s (24h)")


@dataclass(frozen=True, slots=True, kw_only=True)
class RateRule(Rule):
    """The count of ``signals`` over ``window_s`` is above ``threshold``."""

    kind: ClassVar[Kind] = "rate"
    signals: tuple[str, ...]
    window_s: float
    threshold: float

    @classmethod
    def _check_kind(cls, values: Mapping[str, Any]) -> Found:
        yield from check_signals(values, "signals", COUNTABLE,
                                  "is a gauge carrier; use a gauge rule")
        yield from _check_window(values)
        yield from check_threshold(values)

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
    def _check_kind(cls, values: Mapping[str, Any]) -> Found:
        for side in ("numerator", "denominator"):
            yield from check_signals(values, side, COUNTABLE,
                                      "is a gauge carrier; use a gauge rule")
        yield from _check_window(values)
        yield from check_threshold(values)
        yield from check_int(values, "min_denominator", 1)

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
    def _check_kind(cls, values: Mapping[str, Any]) -> Found:
        yield from check_signals(values, "signals", COUNTABLE,
                                  "is a gauge carrier; use a gauge rule")
        yield from _check_window(values)
        yield from check_positive(values, "baseline_s", limit=MAX_HORIZON_S, unit=" s (7d)")
        if "factor" in values and not (math.isfinite(values["factor"]) and values["factor"] > 1):
            yield "factor", f"must be a number above 1, got {values['factor']!r}"
        yield from check_int(values, "min_count", 1)
        window, baseline = values.get("window_s"), values.get("baseline_s")
        if window and baseline and baseline < 2 * window:
            yield "baseline", "must be at least twice the window " \
                              f"({format_value(baseline)} s < 2 x {format_value(window)} s)"

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
    def _check_kind(cls, values: Mapping[str, Any]) -> Found:
        yield from check_signals(values, "signals", COUNTABLE,
                                  "is a gauge carrier; use it in 'when'")
        yield from check_signals(values, "reset_on", COUNTABLE,
                                  "is a gauge carrier", required=False)
        yield from check_positive(values, "absent_for_s", limit=MAX_HORIZON_S, unit=" s (7d)")
        yield from check_positive(values, "forget_after_s", limit=30 * 86_400.0,
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
    def _check_kind(cls, values: Mapping[str, Any]) -> Found:
        yield from _check_gauge(values.get("signal"), values.get("field"), values.get("op"), "")
        yield from check_threshold(values, signed=True)

    def breached(self, value: float) -> bool:
        return _compare(self.op, value, self.threshold)


@dataclass(frozen=True, slots=True, kw_only=True)
class PoisonPillRule(Rule):
    """One task failing with one error fingerprint ``min_count`` times within ``window_s``.

    The fingerprint (error type and the message with numbers, ids and hex collapsed, see
    :func:`~stem_observe.rules.fingerprints.fingerprint`) is an implicit extra key beside
    ``group_by``, which must include ``task``. Alerts carry it and up to ``max_samples``
    task ids.
    """

    kind: ClassVar[Kind] = "poison_pill"
    signals: tuple[str, ...] = ("task-failed",)
    window_s: float
    min_count: int
    max_samples: int = 5

    @classmethod
    def _check_kind(cls, values: Mapping[str, Any]) -> Found:
        yield from check_signals(values, "signals", ERROR_SIGNALS,
                                  "carries no error; use task-failed, task-retry or "
                                  "task-dead-lettered")
        yield from _check_window(values)
        yield from check_int(values, "min_count", 2)
        yield from check_int(values, "max_samples", 1, _MAX_SAMPLES)
        if "group_by" in values and "task" not in values["group_by"]:
            yield "group_by", "a poison_pill rule must group by task"

    def breached(self, count: int) -> bool:
        return count >= self.min_count


#: The rule class of each kind.
RULE_CLASSES: Final[Mapping[Kind, type[Rule]]] = MappingProxyType({
    cls.kind: cls
    for cls in (RateRule, RatioRule, SpikeRule, AbsenceRule, GaugeRule, PoisonPillRule)
})


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
