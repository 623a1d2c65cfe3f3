"""What the engine computes per rule on each tick: the breached label sets, as a
:class:`Scan` that also says which of them changed.

One evaluator per rule kind. Rate, ratio and spike rules read a shared
:class:`~._sources.CountSource` and gauge rules a shared :class:`~._sources.GaugeSource`
(see that module); each keeps its breached label sets from tick to tick and updates them
from what its source says changed: a rate or ratio rule looks at the changed label sets
that could breach, a spike rule at the label sets over its ``min_count`` (its baseline
moves with time), a gauge rule at the gauges set since the last tick. Absence and poison
pill rules keep their own stores and judge every label set on every tick: an absence
breaches with no event at all.

A :class:`Breach` works out its labels, annotation values and samples only when asked:
most are never shown. Evaluators run on the tick thread; ``observe`` of the absence and
poison pill evaluators on the thread that sent the signal (their stores' locks only).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Protocol

from stem_observe import events as ev
from stem_observe.notify.model import MAX_SAMPLES, TaskSample
from stem_observe.rules._sources import (
    GaugeSource,
    RateSource,
    RatioSource,
    Source,
    Sources,
    SpikeSource,
    bucket_for,
)
from stem_observe.rules.fingerprints import event_fingerprint
from stem_observe.rules.model import (
    AbsenceRule,
    GaugeRule,
    PoisonPillRule,
    RateRule,
    RatioRule,
    Rule,
    SpikeRule,
)
from stem_observe.rules.signals_map import Key, gauge_value, keys_of
from stem_observe.rules.templates import format_duration
from stem_observe.rules.windows import FingerprintWindows, GaugeValues, LastSeen
from stem_observe.sinks._traceparent import sampled_trace_id

__all__ = ["Breach", "Evaluator", "Key", "Scan", "build_evaluators"]
_MAX_TRACES: Final = 10_000
Observer = Callable[[str, ev.Event, float], None]


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


class _Detail(Protocol):
    def labels(self, key: Key) -> dict[str, str]: ...

    def values(self, breach: Breach) -> dict[str, object]: ...

    def samples(self, breach: Breach) -> tuple[TaskSample, ...]: ...


class Breach:
    """A breached label set on one tick (``at``): what was measured, against what.

    ``labels``, ``values`` (what the rule's annotations may use) and ``samples`` are given,
    or worked out by ``detail`` on first use; ``data`` holds what that needs.
    """

    __slots__ = ("_labels", "_samples", "_values", "at", "baseline", "data", "detail", "key",
                 "threshold", "value")

    def __init__(
        self, key: Key, value: float, threshold: float | None = None,
        baseline: float | None = None, *, at: float = 0.0, data: object = None,
        detail: _Detail | None = None, labels: Mapping[str, str] | None = None,
        values: Mapping[str, object] | None = None, samples: tuple[TaskSample, ...] = (),
    ) -> None:
        self.key = key
        self.value = value
        self.threshold = threshold
        self.baseline = baseline
        self.at = at
        self.data = data
        self.detail = detail
        self._labels = labels
        self._values = values
        self._samples = samples if detail is None else None

    @property
    def labels(self) -> Mapping[str, str]:
        if self._labels is None:
            assert self.detail is not None
            self._labels = self.detail.labels(self.key)
        return self._labels

    @property
    def values(self) -> Mapping[str, object]:
        if self._values is None:
            self._values = {} if self.detail is None else self.detail.values(self)
        return self._values

    @property
    def samples(self) -> tuple[TaskSample, ...]:
        if self._samples is None:
            self._samples = () if self.detail is None else self.detail.samples(self)
        return self._samples


@dataclass(frozen=True, slots=True)
class Scan:
    """The breached label sets of a rule after a tick, and ``changed``: the label sets whose
    breach began, ended or has a new reading since the previous scan (``None``: any may)."""

    breaching: Mapping[Key, Breach]
    changed: Collection[Key] | None


class Evaluator:
    """Base: the rule, its signals' receivers, and what restoring a saved state needs.

    ``settle_s`` is how long after ``start`` a reading that does not breach is
    conclusive: windows that began empty at ``start`` need that long to hold what they
    describe, so an alert restored from a saved state is not cleared before.
    """

    settle_s: float = 0.0
    source: Source | None = None
    """The shared source read, if any (refreshed by the engine before :meth:`scan`)."""

    def __init__(self, rule: Rule, start: float) -> None:
        self.rule = rule
        self.start = start
        self.group_by: tuple[str, ...] = tuple(rule.group_by)
        self.observers: dict[str, Observer] = {}

    def scan(self, now: float) -> Scan:
        raise NotImplementedError

    def labels(self, key: Key) -> dict[str, str]:
        return dict(zip(self.group_by, key, strict=False))

    def values(self, breach: Breach) -> dict[str, object]:
        return self.common(breach.value, breach.threshold)

    def samples(self, breach: Breach) -> tuple[TaskSample, ...]:
        return ()

    def common(self, value: float, threshold: float | None) -> dict[str, object]:
        return {"alertname": self.rule.name, "severity": self.rule.severity,
                "value": value, "threshold": threshold}

    def key_of(self, labels: Mapping[str, object]) -> Key | None:
        """The label set named by an alert's ``labels``; ``None`` if one is missing."""
        found: list[str] = []
        for name in self.group_by:
            value = labels.get(name)
            if not isinstance(value, str):
                return None
            found.append(value)
        return tuple(found)

    def settled(self, key: Key, now: float) -> bool:
        """Whether a reading of ``key`` at ``now`` that does not breach is conclusive."""
        return now - self.start >= self.settle_s

    def seed(self, key: Key, active_at: float) -> None:
        """A restored alert of ``key`` began to breach at ``active_at``."""


class _CountEvaluator(Evaluator):
    """Rate and ratio rules: the breached set, updated from the changed label sets."""

    source: RateSource | RatioSource

    def __init__(self, rule: RateRule | RatioRule, source: RateSource | RatioSource,
                 start: float) -> None:
        super().__init__(rule, start)
        self.source = source
        self.settle_s = source.counts.span_s
        self.observers = dict.fromkeys(rule.inputs, source.observe)
        self._breaching: dict[Key, Breach] = {}
        self._seen = 0

    def scan(self, now: float) -> Scan:
        src = self.source
        missed = src.generation != self._seen + 1
        full = missed or src.complete
        changed: Collection[Key]
        if missed:  # a scan failed or was skipped: read everything again
            changed = candidates = src.everything()
        else:
            changed, candidates = src.changed, src.candidates
        breaching = self._breaching
        if full:
            breaching.clear()
        # a changed label set that is no candidate breaches none of the source's rules
        gone = [key for key in breaching.keys() & changed
                if key not in candidates or not self._breached(candidates[key])]
        for key in gone:
            del breaching[key]
        fresh = [key for key, counts in candidates.items() if self._breached(counts)]
        for key in fresh:
            breaching[key] = self._breach(key, candidates[key], now)
        self._seen = src.generation
        return Scan(breaching, None if full else gone + fresh)

    def _breached(self, counts: tuple[int, ...]) -> bool:
        raise NotImplementedError

    def _breach(self, key: Key, counts: tuple[int, ...], now: float) -> Breach:
        raise NotImplementedError

    def samples(self, breach: Breach) -> tuple[TaskSample, ...]:
        return self.source.sample_since(breach.key, breach.at)


class _RateEvaluator(_CountEvaluator):
    rule: RateRule

    def _breached(self, counts: tuple[int, ...]) -> bool:
        return counts[0] > self.rule.threshold

    def _breach(self, key: Key, counts: tuple[int, ...], now: float) -> Breach:
        return Breach(key, counts[0], self.rule.threshold, at=now, detail=self)

    def values(self, breach: Breach) -> dict[str, object]:
        return self.common(breach.value, breach.threshold) | {
            "window": format_duration(self.rule.window_s)}


class _RatioEvaluator(_CountEvaluator):
    rule: RatioRule

    def _breached(self, counts: tuple[int, ...]) -> bool:
        return self.rule.breached(counts[0], counts[1])

    def _breach(self, key: Key, counts: tuple[int, ...], now: float) -> Breach:
        return Breach(key, counts[0] / counts[1], self.rule.threshold, at=now, data=counts,
                      detail=self)

    def values(self, breach: Breach) -> dict[str, object]:
        rule = self.rule
        num, den = breach.data if isinstance(breach.data, tuple) else (None, None)
        return self.common(breach.value, rule.threshold) | {
            "window": format_duration(rule.window_s), "numerator": num, "denominator": den,
            "value_percent": round(breach.value * 100, 2),
            "threshold_percent": round(rule.threshold * 100, 2)}


class _SpikeEvaluator(Evaluator):
    """Judges every label set over ``min_count`` on every tick: its baseline moves."""

    rule: SpikeRule
    source: SpikeSource

    def __init__(self, rule: SpikeRule, source: SpikeSource, start: float) -> None:
        super().__init__(rule, start)
        self.source = source
        self.settle_s = source.counts.span_s + rule.window_s  # a baseline needs history
        self.observers = dict.fromkeys(rule.inputs, source.observe)
        self._breaching: dict[Key, Breach] = {}

    def scan(self, now: float) -> Scan:
        rule, before = self.rule, self._breaching
        found: dict[Key, Breach] = {}
        for key, (count, base) in self.source.hot.items():
            if rule.breached(count, base.expected, base.history_s):
                found[key] = Breach(key, count, rule.factor * base.expected, base.expected,
                                    at=now, detail=self)
        self._breaching = found
        return Scan(found, [*found, *(key for key in before if key not in found)])

    def values(self, breach: Breach) -> dict[str, object]:
        rule, expected = self.rule, breach.baseline or 0.0
        return self.common(breach.value, breach.threshold) | {
            "window": format_duration(rule.window_s), "baseline": round(expected, 2),
            "baseline_window": format_duration(rule.baseline_s), "factor": rule.factor}

    def samples(self, breach: Breach) -> tuple[TaskSample, ...]:
        return self.source.sample_since(breach.key, breach.at)


class _GaugeEvaluator(Evaluator):
    rule: GaugeRule
    source: GaugeSource

    def __init__(self, rule: GaugeRule, source: GaugeSource, start: float) -> None:
        super().__init__(rule, start)
        self.source = source
        self.settle_s = source.gauges.expire_after_s
        self.observers = {rule.signal: source.observe}
        self._breaching: dict[Key, Breach] = {}
        self._seen = 0

    def scan(self, now: float) -> Scan:
        rule, src, breaching = self.rule, self.source, self._breaching
        full = src.generation != self._seen + 1
        changed = src.everything() if full else src.changed
        if full:
            breaching.clear()
        delta: list[Key] = []
        for key, reading in changed.items():
            if reading is not None and rule.breached(reading.value):
                held = breaching.get(key)
                if held is None or held.value != reading.value:
                    breaching[key] = Breach(key, reading.value, rule.threshold, detail=self)
                    delta.append(key)
            elif breaching.pop(key, None) is not None:
                delta.append(key)
        self._seen = src.generation
        return Scan(breaching, None if full else delta)

    def values(self, breach: Breach) -> dict[str, object]:
        return self.common(breach.value, breach.threshold) | {"field": self.rule.field}

    def settled(self, key: Key, now: float) -> bool:
        return self.source.gauges.get(key) is not None or super().settled(key, now)


class _AbsenceEvaluator(Evaluator):
    """Silence since the last event (or since the ``when`` condition began to hold)."""

    rule: AbsenceRule

    def __init__(self, rule: AbsenceRule, max_label_sets: int, start: float) -> None:
        super().__init__(rule, start)
        self.seen = LastSeen(expire_after_s=rule.forget_after_s, max_label_sets=max_label_sets)
        self.signals = frozenset(rule.signals)
        self.reset_on = frozenset(rule.reset_on)
        self.gauges: GaugeValues | None = None
        if rule.when is not None:
            self.gauges = GaugeValues(expire_after_s=rule.forget_after_s,
                                      max_label_sets=max_label_sets)
            self.settle_s = rule.forget_after_s
        self.observers = dict.fromkeys(rule.inputs, self.observe)
        self._lock = threading.Lock()

    def observe(self, signal: str, event: ev.Event, t: float) -> None:
        when = self.rule.when
        for key in keys_of(event, self.group_by):
            if when is not None and self.gauges is not None and signal == when.signal:
                value = gauge_value(event, when.field)
                if value is not None:
                    with self._lock:  # read-then-set of the gauge must not interleave
                        before = self.gauges.get(key)
                        self.gauges.set(key, t, value)
                        if when.holds(value) and (before is None
                                                  or not when.holds(before.value)):
                            self.seen.touch(key, t)
            if signal in self.reset_on:
                self.seen.forget(key)
            elif signal in self.signals:
                self.seen.touch(key, t)

    def scan(self, now: float) -> Scan:
        rule, when = self.rule, self.rule.when
        self.seen.expire(now)
        if self.gauges is not None:
            self.gauges.expire(now)
        found: dict[Key, Breach] = {}
        for key, last in self.seen.silent(now, rule.absent_for_s):
            if when is not None and self.gauges is not None:
                reading = self.gauges.get(key)
                if reading is None or not when.holds(reading.value):
                    continue
            silent = now - last
            values = self.common(silent, rule.absent_for_s) | {
                "absent_for": format_duration(rule.absent_for_s),
                "silent_for": format_duration(silent), "last_seen": _iso(last)}
            found[key] = Breach(key, silent, rule.absent_for_s, labels=self.labels(key),
                                values=values)
        return Scan(found, None)

    def settled(self, key: Key, now: float) -> bool:
        if self.gauges is not None and self.gauges.get(key) is not None:
            return True
        return super().settled(key, now)

    def seed(self, key: Key, active_at: float) -> None:
        # the silence began absent_for before the breach did
        self.seen.touch(key, active_at - self.rule.absent_for_s)


class _PoisonPillEvaluator(Evaluator):
    """One reading per (label set, error fingerprint): the fingerprint joins the key."""

    rule: PoisonPillRule

    def __init__(self, rule: PoisonPillRule, max_label_sets: int, start: float) -> None:
        super().__init__(rule, start)
        self.windows = FingerprintWindows(
            span_s=rule.window_s, bucket_s=bucket_for(rule.window_s),
            max_label_sets=max_label_sets, max_samples=min(rule.max_samples, MAX_SAMPLES))
        bucket_s = bucket_for(rule.window_s)
        self.settle_s = math.ceil(rule.window_s / bucket_s - 1e-9) * bucket_s
        self.observers = dict.fromkeys(rule.inputs, self.observe)
        self._traces: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def observe(self, signal: str, event: ev.Event, t: float) -> None:
        found = event_fingerprint(event)
        if found is None or not isinstance(event, ev.TaskEvent):
            return
        for key in keys_of(event, self.group_by):
            self.windows.add(key, found, t, event.task_id)
        trace_id = sampled_trace_id(event.headers)
        if trace_id is not None:
            with self._lock:
                self._traces[event.task_id] = trace_id
                if len(self._traces) > _MAX_TRACES:
                    self._traces.popitem(last=False)

    def scan(self, now: float) -> Scan:
        rule = self.rule
        self.windows.expire(now)
        found: dict[Key, Breach] = {}
        for item in self.windows.over(now, rule.window_s, rule.min_count):
            with self._lock:
                samples = tuple(TaskSample(task_id, self._traces.get(task_id))
                                for task_id in item.samples)
            key = (*item.labels, item.fingerprint)
            values = self.common(item.count, rule.min_count) | {
                "window": format_duration(rule.window_s), "fingerprint": item.fingerprint,
                "sample_task_ids": [s.task_id for s in samples]}
            found[key] = Breach(key, item.count, rule.min_count, labels=self.labels(key),
                                values=values, samples=samples)
        return Scan(found, None)

    def labels(self, key: Key) -> dict[str, str]:
        return dict(zip(self.group_by, key[:-1], strict=True)) | {"fingerprint": key[-1]}

    def key_of(self, labels: Mapping[str, object]) -> Key | None:
        found = super().key_of(labels)
        fingerprint = labels.get("fingerprint")
        return None if found is None or not isinstance(fingerprint, str) else (
            *found, fingerprint)


def build_evaluators(rules: Collection[Rule], *, max_label_sets: int,
                     start: float) -> tuple[list[Evaluator], Sources]:
    """One evaluator per rule, in order, and the sources they share; ``start`` is when the
    engine began (windows are empty before it, spike baselines count history from it)."""
    sources = Sources(max_label_sets=max_label_sets, start=start)
    found: list[Evaluator] = []
    for rule in rules:
        group_by = tuple(rule.group_by)
        if isinstance(rule, RateRule):
            rate = sources.rate(frozenset(rule.signals), group_by, rule.window_s)
            rate.admit(rule.threshold)
            found.append(_RateEvaluator(rule, rate, start))
        elif isinstance(rule, RatioRule):
            ratio = sources.ratio(frozenset(rule.numerator), frozenset(rule.denominator),
                                  group_by, rule.window_s)
            ratio.admit(rule.threshold, rule.min_denominator)
            found.append(_RatioEvaluator(rule, ratio, start))
        elif isinstance(rule, SpikeRule):
            spike = sources.spike(frozenset(rule.signals), group_by, rule.window_s,
                                  rule.baseline_s)
            spike.admit(rule.min_count)
            found.append(_SpikeEvaluator(rule, spike, start))
        elif isinstance(rule, GaugeRule):
            gauge = sources.gauge(rule.signal, rule.field, group_by)
            found.append(_GaugeEvaluator(rule, gauge, start))
        elif isinstance(rule, AbsenceRule):
            found.append(_AbsenceEvaluator(rule, max_label_sets, start))
        elif isinstance(rule, PoisonPillRule):
            found.append(_PoisonPillEvaluator(rule, max_label_sets, start))
        else:
            raise TypeError(f"no evaluator for rule kind {rule.kind!r}")
    return found, sources

