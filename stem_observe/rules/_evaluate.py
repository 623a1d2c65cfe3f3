"""What the engine keeps and computes per rule: the rule's windows, fed with events, and one
:class:`Breach` per breached label set on each tick.

One evaluator per rule kind. :meth:`_Evaluator.observe` runs on the thread that sent the
signal: it touches the rule's thread-safe windows and a small sample table under a short
lock, and never blocks otherwise. :meth:`_Evaluator.breaches` runs on the tick thread and
returns only breached label sets, so the engine's per-tick work beyond the windows grows
with what is wrong, not with what is watched.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from stem_observe import events as ev
from stem_observe.notify.model import MAX_SAMPLES, TaskSample
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
from stem_observe.rules.windows import (
    CountWindows,
    FingerprintWindows,
    GaugeValues,
    LastSeen,
)
from stem_observe.sinks._traceparent import sampled_trace_id

__all__ = ["Breach", "Key", "build_evaluator"]
_MAX_TRACES: Final = 10_000


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def bucket_for(window_s: float) -> float:
    """Bucket width for a window: about 30 buckets, between 1 s and 60 s wide."""
    return min(60.0, max(1.0, window_s / 30.0))


# --------------------------------------------------------------------------- readings


@dataclass(frozen=True, slots=True)
class Breach:
    """A breached label set on one tick: what was measured, against what, and the values
    the rule's annotations may use."""

    key: Key
    labels: Mapping[str, str]
    value: float
    threshold: float | None = None
    baseline: float | None = None
    values: Mapping[str, object] = field(default_factory=dict)
    samples: tuple[TaskSample, ...] = ()


class _Samples:
    """The last few task samples per label set, with their receive times (bounded)."""

    def __init__(self, max_label_sets: int) -> None:
        self._max = max_label_sets
        self._by_key: OrderedDict[Key, deque[tuple[float, TaskSample]]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, key: Key, event: ev.Event, t: float) -> None:
        if not isinstance(event, ev.TaskEvent):
            return
        sample = TaskSample(event.task_id, sampled_trace_id(event.headers))
        with self._lock:
            found = self._by_key.get(key)
            if found is None:
                found = self._by_key[key] = deque(maxlen=MAX_SAMPLES)
                if len(self._by_key) > self._max:
                    self._by_key.popitem(last=False)
            else:
                self._by_key.move_to_end(key)
            found.append((t, sample))

    def since(self, key: Key, t: float) -> tuple[TaskSample, ...]:
        with self._lock:
            found = self._by_key.get(key)
            return () if found is None else tuple(s for at, s in found if at >= t)


class _Evaluator:
    """Base: routes events to :meth:`_add` per label set, and the shared helpers."""

    def __init__(self, rule: Rule, max_label_sets: int) -> None:
        self.rule = rule
        self.max_label_sets = max_label_sets
        self.group_by: tuple[str, ...] = tuple(rule.group_by)

    def observe(self, signal: str, event: ev.Event, t: float) -> None:
        for key in keys_of(event, self.group_by):
            self._add(signal, key, event, t)

    def _add(self, signal: str, key: Key, event: ev.Event, t: float) -> None:
        raise NotImplementedError

    def breaches(self, now: float) -> list[Breach]:
        raise NotImplementedError

    def labels(self, key: Key) -> dict[str, str]:
        return dict(zip(self.group_by, key, strict=False))

    def common(self, value: float, threshold: float | None) -> dict[str, object]:
        return {"alertname": self.rule.name, "severity": self.rule.severity,
                "value": value, "threshold": threshold}


class _RateEvaluator(_Evaluator):
    rule: RateRule

    def __init__(self, rule: RateRule, max_label_sets: int) -> None:
        super().__init__(rule, max_label_sets)
        self.windows = CountWindows(span_s=rule.window_s, bucket_s=bucket_for(rule.window_s),
                                    max_label_sets=max_label_sets)
        self.samples = _Samples(max_label_sets)

    def _add(self, signal: str, key: Key, event: ev.Event, t: float) -> None:
        key = self.windows.add(key, t)
        self.samples.add(key, event, t)

    def breaches(self, now: float) -> list[Breach]:
        rule, windows, window_s = self.rule, self.windows, self.rule.window_s
        windows.expire(now)
        found: list[Breach] = []
        threshold = rule.threshold
        for key in windows.label_sets():
            count = windows.count(key, now, window_s)
            if count > threshold:
                values = self.common(count, threshold) | {
                    "window": format_duration(window_s)}
                found.append(Breach(key, self.labels(key), count, threshold, None, values,
                                     self.samples.since(key, now - window_s)))
        return found


class _RatioEvaluator(_Evaluator):
    rule: RatioRule

    def __init__(self, rule: RatioRule, max_label_sets: int) -> None:
        super().__init__(rule, max_label_sets)
        self.windows = CountWindows(span_s=rule.window_s, bucket_s=bucket_for(rule.window_s),
                                    series=2, max_label_sets=max_label_sets)
        self.numerator = frozenset(rule.numerator)
        self.denominator = frozenset(rule.denominator)
        self.samples = _Samples(max_label_sets)

    def _add(self, signal: str, key: Key, event: ev.Event, t: float) -> None:
        if signal in self.numerator:
            key = self.windows.add(key, t, series=0)
            self.samples.add(key, event, t)
        if signal in self.denominator:
            self.windows.add(key, t, series=1)

    def breaches(self, now: float) -> list[Breach]:
        rule, windows, window_s = self.rule, self.windows, self.rule.window_s
        windows.expire(now)
        found: list[Breach] = []
        for key in windows.label_sets():
            num, den = windows.ratio(key, now, window_s)
            if rule.breached(num, den):
                ratio = num / den
                values = self.common(ratio, rule.threshold) | {
                    "window": format_duration(window_s), "numerator": num,
                    "denominator": den, "value_percent": round(ratio * 100, 2),
                    "threshold_percent": round(rule.threshold * 100, 2)}
                found.append(Breach(key, self.labels(key), ratio, rule.threshold, None,
                                     values, self.samples.since(key, now - window_s)))
        return found


class _SpikeEvaluator(_Evaluator):
    rule: SpikeRule

    def __init__(self, rule: SpikeRule, max_label_sets: int, start: float | None) -> None:
        super().__init__(rule, max_label_sets)
        self.windows = CountWindows(
            span_s=rule.window_s, bucket_s=bucket_for(rule.window_s),
            baseline_horizon_s=rule.baseline_s, max_label_sets=max_label_sets, start=start)
        self.samples = _Samples(max_label_sets)

    def _add(self, signal: str, key: Key, event: ev.Event, t: float) -> None:
        key = self.windows.add(key, t)
        self.samples.add(key, event, t)

    def breaches(self, now: float) -> list[Breach]:
        rule, windows, window_s = self.rule, self.windows, self.rule.window_s
        windows.expire(now)
        found: list[Breach] = []
        for key in windows.label_sets():
            count = windows.count(key, now, window_s)
            if count < rule.min_count:
                continue  # the cheap test first: most label sets are quiet
            base = windows.baseline(key, now, window_s)
            if rule.breached(count, base.expected, base.history_s):
                bar = rule.factor * base.expected
                values = self.common(count, bar) | {
                    "window": format_duration(window_s),
                    "baseline": round(base.expected, 2),
                    "baseline_window": format_duration(rule.baseline_s),
                    "factor": rule.factor}
                found.append(Breach(key, self.labels(key), count, bar, base.expected, values,
                                     self.samples.since(key, now - window_s)))
        return found


class _AbsenceEvaluator(_Evaluator):
    """Silence since the last event (or since the ``when`` condition began to hold)."""

    rule: AbsenceRule

    def __init__(self, rule: AbsenceRule, max_label_sets: int) -> None:
        super().__init__(rule, max_label_sets)
        self.seen = LastSeen(expire_after_s=rule.forget_after_s, max_label_sets=max_label_sets)
        self.signals = frozenset(rule.signals)
        self.reset_on = frozenset(rule.reset_on)
        self.gauges: GaugeValues | None = None
        if rule.when is not None:
            self.gauges = GaugeValues(expire_after_s=rule.forget_after_s,
                                      max_label_sets=max_label_sets)
        self._lock = threading.Lock()

    def _add(self, signal: str, key: Key, event: ev.Event, t: float) -> None:
        when = self.rule.when
        if when is not None and self.gauges is not None and signal == when.signal:
            value = gauge_value(event, when.field)
            if value is not None:
                with self._lock:  # read-then-set of the gauge must not interleave
                    before = self.gauges.get(key)
                    self.gauges.set(key, t, value)
                    if when.holds(value) and (before is None or not when.holds(before.value)):
                        self.seen.touch(key, t)
        if signal in self.reset_on:
            self.seen.forget(key)
        elif signal in self.signals:
            self.seen.touch(key, t)

    def breaches(self, now: float) -> list[Breach]:
        rule, when = self.rule, self.rule.when
        self.seen.expire(now)
        if self.gauges is not None:
            self.gauges.expire(now)
        found: list[Breach] = []
        for key, last in self.seen.silent(now, rule.absent_for_s):
            if when is not None and self.gauges is not None:
                reading = self.gauges.get(key)
                if reading is None or not when.holds(reading.value):
                    continue
            silent = now - last
            values = self.common(silent, rule.absent_for_s) | {
                "absent_for": format_duration(rule.absent_for_s),
                "silent_for": format_duration(silent), "last_seen": _iso(last)}
            found.append(Breach(key, self.labels(key), silent, rule.absent_for_s, None, values))
        return found


class _GaugeEvaluator(_Evaluator):
    rule: GaugeRule

    def __init__(self, rule: GaugeRule, max_label_sets: int) -> None:
        super().__init__(rule, max_label_sets)
        self.gauges = GaugeValues(max_label_sets=max_label_sets)

    def _add(self, signal: str, key: Key, event: ev.Event, t: float) -> None:
        value = gauge_value(event, self.rule.field)
        if value is not None:
            self.gauges.set(key, t, value)

    def breaches(self, now: float) -> list[Breach]:
        rule = self.rule
        self.gauges.expire(now)
        return [Breach(key, self.labels(key), reading.value, rule.threshold, None,
                        self.common(reading.value, rule.threshold) | {"field": rule.field})
                for key, reading in self.gauges.items() if rule.breached(reading.value)]


class _PoisonPillEvaluator(_Evaluator):
    """One reading per (label set, error fingerprint): the fingerprint joins the key."""

    rule: PoisonPillRule

    def __init__(self, rule: PoisonPillRule, max_label_sets: int) -> None:
        super().__init__(rule, max_label_sets)
        self.windows = FingerprintWindows(
            span_s=rule.window_s, bucket_s=bucket_for(rule.window_s),
            max_label_sets=max_label_sets, max_samples=min(rule.max_samples, MAX_SAMPLES))
        self._traces: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def _add(self, signal: str, key: Key, event: ev.Event, t: float) -> None:
        found = event_fingerprint(event)
        if found is None or not isinstance(event, ev.TaskEvent):
            return
        self.windows.add(key, found, t, event.task_id)
        trace_id = sampled_trace_id(event.headers)
        if trace_id is not None:
            with self._lock:
                self._traces[event.task_id] = trace_id
                if len(self._traces) > _MAX_TRACES:
                    self._traces.popitem(last=False)

    def breaches(self, now: float) -> list[Breach]:
        rule = self.rule
        self.windows.expire(now)
        found: list[Breach] = []
        for item in self.windows.over(now, rule.window_s, rule.min_count):
            with self._lock:
                samples = tuple(TaskSample(task_id, self._traces.get(task_id))
                                for task_id in item.samples)
            labels = self.labels(item.labels) | {"fingerprint": item.fingerprint}
            values = self.common(item.count, rule.min_count) | {
                "window": format_duration(rule.window_s), "fingerprint": item.fingerprint,
                "sample_task_ids": [s.task_id for s in samples]}
            found.append(Breach((*item.labels, item.fingerprint), labels, item.count,
                                 rule.min_count, None, values, samples))
        return found


def build_evaluator(rule: Rule, *, max_label_sets: int, start: float | None) -> _Evaluator:
    """The evaluator of ``rule``'s kind; ``start`` is when the engine began (spike
    baselines count their history from it)."""
    if isinstance(rule, RateRule):
        return _RateEvaluator(rule, max_label_sets)
    if isinstance(rule, RatioRule):
        return _RatioEvaluator(rule, max_label_sets)
    if isinstance(rule, SpikeRule):
        return _SpikeEvaluator(rule, max_label_sets, start)
    if isinstance(rule, AbsenceRule):
        return _AbsenceEvaluator(rule, max_label_sets)
    if isinstance(rule, GaugeRule):
        return _GaugeEvaluator(rule, max_label_sets)
    if isinstance(rule, PoisonPillRule):
        return _PoisonPillEvaluator(rule, max_label_sets)
    raise TypeError(f"no evaluator for rule kind {rule.kind!r}")
