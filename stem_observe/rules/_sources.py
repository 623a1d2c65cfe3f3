"""The windows rules read, each shared by every rule that reads the same thing.

Rules of one kind over the same signals, grouping and window — forty ``rate`` rules on
``task-retry`` by ``[task, queue]`` over ``5m`` with different thresholds — read one
source: an event is counted once rather than once per rule, and a tick reads each changed
label set once rather than once per rule.

* :class:`CountSource` — event counts in :class:`~._tracked.TrackedCounts` (one series for
  rate and spike rules, numerator and denominator for ratio rules; spike sources keep a
  baseline) and the last few task samples per label set. :meth:`CountSource.refresh`
  reads the label sets whose counts changed since the previous tick into ``changed``, and
  those of them that could breach the least demanding of its rules into ``candidates``.
  A spike source also keeps ``hot``: every label set at or above its rules' lowest
  ``min_count``, with its baseline, read again on every tick since a baseline moves with
  time.
* :class:`GaugeSource` — the last value of one gauge per label set, and in ``changed`` the
  label sets set or dropped since the previous tick.

Threads: :meth:`observe` runs on the thread that sent the signal and only takes the stores'
short locks; :meth:`refresh` and everything read after it run on the tick thread.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterator, Sequence
from typing import Protocol

from stem_observe import events as ev
from stem_observe.notify.model import MAX_SAMPLES, TaskSample
from stem_observe.rules._tracked import TrackedCounts
from stem_observe.rules.signals_map import Key, gauge_value, keys_of
from stem_observe.rules.windows import Baseline, GaugeValues, Reading
from stem_observe.sinks._traceparent import sampled_trace_id

__all__ = ["CountSource", "GaugeSource", "Source", "Sources", "bucket_for"]

Counts = dict[Key, tuple[int, ...]]


def bucket_for(window_s: float) -> float:
    """Bucket width for a window: about 30 buckets, between 1 s and 60 s wide."""
    return min(60.0, max(1.0, window_s / 30.0))


class Source(Protocol):
    """What the engine feeds and refreshes: ``observe`` per event, ``refresh`` per tick."""

    signals: frozenset[str]
    generation: int

    def observe(self, signal: str, event: ev.Event, t: float) -> None: ...

    def refresh(self, now: float) -> None: ...


class Samples:
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
            return () if found is None else tuple([s for at, s in found if at >= t])


class CountSource:
    """Counts of ``series`` (one set of signals per series) per ``group_by`` label set over
    ``window_s``; with ``baseline_s``, a spike baseline. Subclasses pick ``candidates``."""

    def __init__(self, series: tuple[frozenset[str], ...], group_by: tuple[str, ...],
                 window_s: float, *, baseline_s: float | None = None, max_label_sets: int,
                 start: float) -> None:
        self.series = series
        self.group_by = group_by
        self.window_s = window_s
        self.signals: frozenset[str] = frozenset().union(*series)
        self.counts = TrackedCounts(
            window_s=window_s, span_s=window_s, bucket_s=bucket_for(window_s),
            series=len(series), baseline_horizon_s=baseline_s,
            max_label_sets=max_label_sets, start=start)
        self.samples = Samples(max_label_sets)
        self.generation = 0
        self.now = start
        self.complete = False
        """Whether ``changed`` names every label set (first tick, or a recount)."""
        self.changed: set[Key] = set()
        self.candidates: Counts = {}
        """Counts of the changed label sets that could breach the least demanding rule;
        a changed label set not among them breaches none of the source's rules."""

    def observe(self, signal: str, event: ev.Event, t: float) -> None:
        for key in keys_of(event, self.group_by):
            for s, names in enumerate(self.series):
                if signal in names:
                    used = self.counts.add(key, t, series=s)
                    if s == 0:
                        self.samples.add(used, event, t)

    def refresh(self, now: float) -> None:
        try:
            changed, candidates, complete = self.counts.changes(now, self._could_breach)
            self._refreshed(changed, candidates, complete, now)
        except BaseException:
            self.counts.recount_next()
            raise
        self.now, self.changed, self.candidates, self.complete = (
            now, changed, candidates, complete)
        self.generation += 1

    def _could_breach(self, counts: Sequence[int]) -> bool:
        return True

    def _refreshed(self, changed: set[Key], candidates: Counts, complete: bool,
                   now: float) -> None:
        """Called with what a refresh read, before it is published."""

    def everything(self) -> Counts:
        """Counts at the latest refresh of every label set held (a reader catching up)."""
        return self.counts.counts_at(self.now)

    def sample_since(self, key: Key, at: float) -> tuple[TaskSample, ...]:
        """Samples of the events in the window at ``at`` (those its buckets hold)."""
        return self.samples.since(key, self.counts.window_start(at))


class RateSource(CountSource):
    def __init__(self, series: tuple[frozenset[str], ...], group_by: tuple[str, ...],
                 window_s: float, *, baseline_s: float | None = None, max_label_sets: int,
                 start: float) -> None:
        super().__init__(series, group_by, window_s, baseline_s=baseline_s,
                         max_label_sets=max_label_sets, start=start)
        self.threshold = math.inf

    def admit(self, threshold: float) -> None:
        self.threshold = min(self.threshold, threshold)

    def _could_breach(self, counts: Sequence[int]) -> bool:
        return counts[0] > self.threshold


class RatioSource(CountSource):
    def __init__(self, series: tuple[frozenset[str], ...], group_by: tuple[str, ...],
                 window_s: float, *, baseline_s: float | None = None, max_label_sets: int,
                 start: float) -> None:
        super().__init__(series, group_by, window_s, baseline_s=baseline_s,
                         max_label_sets=max_label_sets, start=start)
        self.threshold = math.inf
        self.min_denominator = 2**62

    def admit(self, threshold: float, min_denominator: int) -> None:
        self.threshold = min(self.threshold, threshold)
        self.min_denominator = min(self.min_denominator, min_denominator)

    def _could_breach(self, counts: Sequence[int]) -> bool:
        return counts[1] >= self.min_denominator and counts[0] > self.threshold * counts[1]


class SpikeSource(CountSource):
    def __init__(self, series: tuple[frozenset[str], ...], group_by: tuple[str, ...],
                 window_s: float, *, baseline_s: float | None = None, max_label_sets: int,
                 start: float) -> None:
        super().__init__(series, group_by, window_s, baseline_s=baseline_s,
                         max_label_sets=max_label_sets, start=start)
        self.min_count = 2**62
        self._over: dict[Key, int] = {}
        self.hot: dict[Key, tuple[int, Baseline]] = {}

    def admit(self, min_count: int) -> None:
        self.min_count = min(self.min_count, min_count)

    def _could_breach(self, counts: Sequence[int]) -> bool:
        return counts[0] >= self.min_count

    def _refreshed(self, changed: set[Key], candidates: Counts, complete: bool,
                   now: float) -> None:
        over = {} if complete else {k: c for k, c in self._over.items() if k not in changed}
        over.update((key, counts[0]) for key, counts in candidates.items())
        baselines = self.counts.baselines(over, now)
        self._over = over
        self.hot = {key: (count, baselines[key]) for key, count in over.items()}


class GaugeSource:
    """The last value of gauge ``field`` of ``signal`` per ``group_by`` label set."""

    def __init__(self, signal: str, field: str, group_by: tuple[str, ...], *,
                 max_label_sets: int) -> None:
        self.field = field
        self.group_by = group_by
        self.signals = frozenset({signal})
        self.gauges = GaugeValues(max_label_sets=max_label_sets)
        self.generation = 0
        self.changed: dict[Key, Reading | None] = {}
        self._dirty: set[Key] = set()
        self._lock = threading.Lock()

    def observe(self, signal: str, event: ev.Event, t: float) -> None:
        value = gauge_value(event, self.field)
        if value is None:
            return
        for key in keys_of(event, self.group_by):
            used = self.gauges.set(key, t, value)
            with self._lock:
                self._dirty.add(used)

    def refresh(self, now: float) -> None:
        removed = self.gauges.expire(now)
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        dirty.update(removed)
        self.changed = {key: self.gauges.get(key) for key in dirty}
        self.generation += 1

    def everything(self) -> dict[Key, Reading | None]:
        return dict(self.gauges.items())


class Sources:
    """Builds each source once per distinct (kind, signals, grouping, window) and hands the
    same one to every rule that reads it."""

    def __init__(self, *, max_label_sets: int, start: float) -> None:
        self.max_label_sets = max_label_sets
        self.start = start
        self._found: dict[Hashable, Source] = {}

    def rate(self, signals: frozenset[str], group_by: tuple[str, ...],
             window_s: float) -> RateSource:
        key = ("rate", signals, group_by, window_s)
        found = self._found.get(key)
        if found is None:
            found = self._found[key] = RateSource(
                (signals,), group_by, window_s, max_label_sets=self.max_label_sets,
                start=self.start)
        assert isinstance(found, RateSource)
        return found

    def ratio(self, numerator: frozenset[str], denominator: frozenset[str],
              group_by: tuple[str, ...], window_s: float) -> RatioSource:
        key = ("ratio", numerator, denominator, group_by, window_s)
        found = self._found.get(key)
        if found is None:
            found = self._found[key] = RatioSource(
                (numerator, denominator), group_by, window_s,
                max_label_sets=self.max_label_sets, start=self.start)
        assert isinstance(found, RatioSource)
        return found

    def spike(self, signals: frozenset[str], group_by: tuple[str, ...], window_s: float,
              baseline_s: float) -> SpikeSource:
        key = ("spike", signals, group_by, window_s, baseline_s)
        found = self._found.get(key)
        if found is None:
            found = self._found[key] = SpikeSource(
                (signals,), group_by, window_s, baseline_s=baseline_s,
                max_label_sets=self.max_label_sets, start=self.start)
        assert isinstance(found, SpikeSource)
        return found

    def gauge(self, signal: str, field: str, group_by: tuple[str, ...]) -> GaugeSource:
        key = ("gauge", signal, field, group_by)
        found = self._found.get(key)
        if found is None:
            found = self._found[key] = GaugeSource(signal, field, group_by,
                                                   max_label_sets=self.max_label_sets)
        assert isinstance(found, GaugeSource)
        return found

    def __iter__(self) -> Iterator[Source]:
        return iter(list(self._found.values()))

    def __len__(self) -> int:
        return len(self._found)
