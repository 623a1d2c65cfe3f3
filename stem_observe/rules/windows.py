"""Bounded, time-bucketed state per label set: what the rules engine counts and remembers.

Four stores, each keyed by a label set (a :data:`~.model.Key`: the values of a rule's
``group_by`` labels, in order):

* :class:`CountWindows` — event counts in a ring of fixed-width buckets per label set:
  windowed counts, ratios of two series, and an exponentially weighted baseline (spikes).
* :class:`FingerprintWindows` — counts per (label set, error fingerprint) with a few sample
  task ids (poison pills), fingerprints from :mod:`~stem_observe.rules.fingerprints`.
* :class:`LastSeen` — when each label set was last seen (absence).
* :class:`GaugeValues` — the last value of a gauge per label set (gauges, absence ``when``).

**Time.** Every method takes the time as an argument (epoch seconds: ``t`` for an event,
``now`` for a query); nothing here reads a clock, so the engine may use Redis server time.
Pass the time an event reached the engine rather than a worker's own ``occurred_at`` if
worker clocks may drift: an event older than a label set's ring is dropped and counted in
``late``.

**Buckets.** Bucket ``j`` holds events with ``floor(t / bucket_s) == j``. A window of ``W``
seconds at ``now`` covers ``k = ceil(W / bucket_s)`` buckets: the bucket of ``now``
(partial) and the ``k - 1`` before it, so it looks back between ``W - bucket_s`` and ``W``
seconds. A label set's ring holds the ``ceil(span_s / bucket_s)`` buckets ending at its
*head*, the newest bucket an event reached; queries never move it. A query at a time before
the head sees what the ring still holds.

**Baseline.** A :class:`CountWindows` built with ``baseline_horizon_s = H`` folds every
bucket into an exponentially weighted moving average as it leaves the ring, so the baseline
describes the time *before* the recent span, and a spike does not raise its own bar::

    e_j = (1 - a) * e_(j-1) + a * c_j        a = 2 / (N + 1),  N = H / bucket_s

— the smoothing pandas calls ``span=N``: the weights' centre of mass is that of a plain
average over ``H``; the half-life is ``ln 2 / -ln(1 - a)`` buckets, about ``0.35 H``.
``e`` starts at 0 at the store's *origin* (``start``, else the first event's bucket) and is
bias-corrected over the ``K`` buckets folded since, so a young baseline is not dragged to 0::

    per_bucket = e / (1 - (1 - a) ** K)       history_s = K * bucket_s
    expected = per_bucket * (k - 1 + now / bucket_s - floor(now / bucket_s))

``expected`` is for the time the window's buckets cover up to ``now`` (``k - 1`` whole
buckets and the elapsed part of the current one), so it compares fairly with the count.

A label set first seen after the origin had no events until then, and its baseline says so.

**Memory.** Each store keeps at most ``max_label_sets`` label sets plus one overflow set
(every label :data:`OVERFLOW`); events of label sets past the cap land there and are
counted in ``folded``. A label set with no event for ``expire_after_s`` is dropped by
:meth:`expire` (call it on each tick; when the store is full, an event for a new label set
first expires idle ones). Expiry goes in order of activity and stops at the first live set,
so with out-of-order times an idle set may outlive ``expire_after_s`` until those ahead of
it go. A dropped set forgets its baseline; if it returns it starts from zero again.

**Threads.** Every public method is thread-safe: each store holds one lock for the whole
call. Calls take at most O(buckets) (``over``, ``items``, ``silent`` and ``label_sets``
O(label sets)), never block on anything but that lock, and raise only for a window longer
than the span (times must be finite). Locks are re-created in a forked child.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

from stem_observe.rules.signals_map import Key

__all__ = [
    "OVERFLOW",
    "Baseline",
    "CountWindows",
    "FingerprintCount",
    "FingerprintWindows",
    "GaugeValues",
    "LastSeen",
    "Reading",
]

OVERFLOW: Final = "__overflow__"
"""Every label value of the overflow label set (the value the metrics use past a limit)."""
_EPSILON: Final = 1e-9


def _buckets(seconds: float, bucket_s: float) -> int:
    return max(1, math.ceil(seconds / bucket_s - _EPSILON))


# --------------------------------------------------------------------------- shared parts


class _Slot(Protocol):
    last: float


_S = TypeVar("_S", bound=_Slot)


class _Table(Generic[_S]):
    """Label set -> slot, at most ``limit`` of them plus one overflow, in activity order."""

    __slots__ = ("expire_after_s", "folded", "limit", "slots")

    def __init__(self, limit: int, expire_after_s: float) -> None:
        self.limit = limit
        self.expire_after_s = expire_after_s
        self.slots: OrderedDict[Key, _S] = OrderedDict()
        self.folded = 0

    def place(self, key: Key, t: float, make: Callable[[], _S]) -> tuple[Key, _S]:
        slot = self.slots.get(key)
        if slot is None:
            overflow = (OVERFLOW,) * len(key)
            if self._regular(overflow) >= self.limit:
                self.expire(t)
            if self._regular(overflow) >= self.limit:
                self.folded += 1
                key = overflow
                slot = self.slots.get(key)
            if slot is None:
                slot = self.slots[key] = make()
        if t >= slot.last:
            slot.last = t
            self.slots.move_to_end(key)
        return key, slot

    def _regular(self, overflow: Key) -> int:
        return len(self.slots) - (overflow in self.slots)

    def expire(self, now: float) -> list[Key]:
        cutoff = now - self.expire_after_s
        removed: list[Key] = []
        slots = self.slots
        while slots:
            key = next(iter(slots))
            if slots[key].last > cutoff:
                break
            del slots[key]
            removed.append(key)
        return removed


_stores: weakref.WeakSet[_Store[Any]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_stores):
        store._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Store(Generic[_S]):
    """The lock, the table and the methods every store shares."""

    def __init__(self, max_label_sets: int, expire_after_s: float) -> None:
        if max_label_sets < 1:
            raise ValueError(f"max_label_sets must be at least 1, got {max_label_sets}")
        if not expire_after_s > 0:
            raise ValueError(f"expire_after_s must be positive, got {expire_after_s}")
        self._table: _Table[_S] = _Table(max_label_sets, expire_after_s)
        self._lock = threading.Lock()
        _stores.add(self)

    @property
    def max_label_sets(self) -> int:
        return self._table.limit

    @property
    def expire_after_s(self) -> float:
        return self._table.expire_after_s

    @property
    def folded(self) -> int:
        """Events (or readings) of new label sets folded into the overflow set."""
        return self._table.folded

    def __len__(self) -> int:
        """Label sets held, the overflow set included."""
        return len(self._table.slots)

    def label_sets(self) -> list[Key]:
        """The label sets held, least recently active first."""
        with self._lock:
            return list(self._table.slots)

    def expire(self, now: float) -> list[Key]:
        """Drop label sets with nothing new for ``expire_after_s``; returns them."""
        with self._lock:
            return self._table.expire(now)

    def forget(self, labels: Key) -> bool:
        """Drop one label set now (a queue that is gone); whether it was held."""
        with self._lock:
            return self._table.slots.pop(labels, None) is not None


# --------------------------------------------------------------------------- counts


class _Ring:
    __slots__ = ("counts", "ewma", "head", "last", "samples")

    def __init__(self, head: int, size: int, series: int, last: float) -> None:
        self.head = head
        self.counts = [0] * size
        self.ewma = [0.0] * series
        self.last = last
        self.samples: list[str] = []


@dataclass(frozen=True, slots=True)
class Baseline:
    """A spike baseline: ``expected`` events in the window, from ``history_s`` of history."""

    expected: float
    history_s: float


class _Rings:
    """Ring arithmetic shared by the label sets of one store."""

    __slots__ = ("alpha", "bucket_s", "n", "origin", "series")

    def __init__(self, bucket_s: float, span_s: float, series: int,
                 horizon_s: float | None, start: float | None) -> None:
        if not (math.isfinite(bucket_s) and bucket_s > 0):
            raise ValueError(f"bucket_s must be positive, got {bucket_s}")
        if not (math.isfinite(span_s) and span_s > 0):
            raise ValueError(f"span_s must be positive, got {span_s}")
        if series < 1:
            raise ValueError(f"series must be at least 1, got {series}")
        self.bucket_s = bucket_s
        self.n = _buckets(span_s, bucket_s)
        self.series = series
        self.alpha = 0.0
        if horizon_s is not None:
            if not (math.isfinite(horizon_s) and horizon_s >= bucket_s):
                raise ValueError(f"baseline_horizon_s must be at least bucket_s, got {horizon_s}")
            self.alpha = 2.0 / (horizon_s / bucket_s + 1.0)
        self.origin: int | None = None if start is None else math.floor(start / bucket_s)

    def new(self, head: int, t: float) -> _Ring:
        return _Ring(head, self.n * self.series, self.series if self.alpha else 0, t)

    def window(self, window_s: float) -> int:
        k = _buckets(window_s, self.bucket_s)
        if k > self.n:
            raise ValueError(f"a window of {window_s} s is longer than the span "
                             f"({self.n * self.bucket_s} s)")
        return k

    def add(self, ring: _Ring, b: int, n: int, s: int) -> bool:
        if b > ring.head:
            self.advance(ring, b)
        elif b <= ring.head - self.n:
            return False
        ring.counts[(b % self.n) * self.series + s] += n
        return True

    def count(self, ring: _Ring, b: int, k: int, s: int) -> int:
        n, m, counts, head = self.n, self.series, ring.counts, ring.head
        low, high = max(b - k + 1, head - n + 1), min(b, head)
        if low > high:
            return 0
        start = low % n
        end = start + high - low + 1  # slots start..end-1, wrapping past n at most once
        if end <= n:
            return sum(counts[start * m + s:end * m:m])
        return sum(counts[start * m + s::m]) + sum(counts[s:(end - n) * m:m])

    def folded(self, ring: _Ring, s: int, b: int) -> float:
        """Series ``s`` of the EWMA once the ring's head moved to ``b``."""
        e, head = ring.ewma[s], ring.head
        if b <= head or self.origin is None:
            return e
        n, m, origin = self.n, self.series, self.origin
        keep = 1.0 - self.alpha
        for j in range(max(head - n + 1, origin), min(head, b - n) + 1):
            e = keep * e + self.alpha * ring.counts[(j % n) * m + s]
        zeros = (b - n) - max(head + 1, origin) + 1
        return e * keep ** zeros if zeros > 0 else e

    def advance(self, ring: _Ring, b: int) -> None:
        n, m, head = self.n, self.series, ring.head
        for s in range(len(ring.ewma)):
            ring.ewma[s] = self.folded(ring, s, b)
        if b - head >= n:
            ring.counts = [0] * (n * m)
        else:
            for j in range(head + 1, b + 1):
                base = (j % n) * m
                ring.counts[base:base + m] = [0] * m
        ring.head = b

    def baseline(self, ring: _Ring | None, now: float, k: int, s: int) -> Baseline:
        b = math.floor(now / self.bucket_s)
        if self.origin is None:
            return Baseline(0.0, 0.0)
        head = b if ring is None else max(b, ring.head)
        folds = (head - self.n) - self.origin + 1
        if folds <= 0:
            return Baseline(0.0, 0.0)
        history_s = folds * self.bucket_s
        if ring is None:
            return Baseline(0.0, history_s)
        weight = 1.0 - (1.0 - self.alpha) ** folds
        buckets = k - 1 + (now / self.bucket_s - b)
        return Baseline(self.folded(ring, s, head) / weight * buckets, history_s)


class CountWindows(_Store[_Ring]):
    """Windowed event counts per label set, in ``series`` independent series.

    ``span_s`` is the longest window a query may ask for; a ratio rule uses two series
    (numerator 0, denominator 1); a spike rule passes ``baseline_horizon_s``. By default a
    label set expires after ``max(span_s, baseline_horizon_s)`` with no event.
    """

    def __init__(
        self, *, span_s: float, bucket_s: float = 10.0, series: int = 1,
        baseline_horizon_s: float | None = None, max_label_sets: int = 1000,
        expire_after_s: float | None = None, start: float | None = None,
    ) -> None:
        self._rings = _Rings(bucket_s, span_s, series, baseline_horizon_s, start)
        ring_s = self._rings.n * bucket_s
        if expire_after_s is None:
            expire_after_s = max(ring_s, baseline_horizon_s or 0.0)
        elif expire_after_s < ring_s:
            raise ValueError(f"expire_after_s ({expire_after_s}) must cover the span ({ring_s})")
        super().__init__(max_label_sets, expire_after_s)
        self.late = 0
        """Events dropped because they were older than their label set's ring."""

    @property
    def bucket_s(self) -> float:
        return self._rings.bucket_s

    @property
    def span_s(self) -> float:
        """The span the rings cover, rounded up to whole buckets."""
        return self._rings.n * self._rings.bucket_s

    @property
    def half_life_s(self) -> float | None:
        """The baseline's half-life (``None`` without a baseline)."""
        alpha = self._rings.alpha
        return math.log(2) / -math.log1p(-alpha) * self.bucket_s if alpha else None

    def add(self, labels: Key, t: float, n: int = 1, series: int = 0) -> Key:
        """Count ``n`` events at ``t``; returns the label set used (``labels`` or overflow)."""
        rings = self._rings
        b = math.floor(t / rings.bucket_s)
        with self._lock:
            if rings.origin is None:
                rings.origin = b
            key, ring = self._table.place(labels, t, lambda: rings.new(b, t))
            if not rings.add(ring, b, n, series):
                self.late += 1
            return key

    def count(self, labels: Key, now: float, window_s: float, series: int = 0) -> int:
        """Events of ``labels`` in the window of ``window_s`` ending at ``now``."""
        rings = self._rings
        k = rings.window(window_s)
        with self._lock:
            ring = self._table.slots.get(labels)
            return 0 if ring is None else rings.count(
                ring, math.floor(now / rings.bucket_s), k, series)

    def ratio(self, labels: Key, now: float, window_s: float,
              numerator: int = 0, denominator: int = 1) -> tuple[int, int]:
        """(numerator, denominator) counts over the same window, read together."""
        rings = self._rings
        k = rings.window(window_s)
        b = math.floor(now / rings.bucket_s)
        with self._lock:
            ring = self._table.slots.get(labels)
            if ring is None:
                return 0, 0
            return rings.count(ring, b, k, numerator), rings.count(ring, b, k, denominator)

    def baseline(self, labels: Key, now: float, window_s: float, series: int = 0) -> Baseline:
        """The expected count over ``window_s`` at ``now`` (see the module's formula)."""
        rings = self._rings
        if not rings.alpha:
            raise ValueError("this store keeps no baseline (no baseline_horizon_s)")
        k = rings.window(window_s)
        with self._lock:
            return rings.baseline(self._table.slots.get(labels), now, k, series)


# --------------------------------------------------------------------------- poison pills


@dataclass(frozen=True, slots=True)
class FingerprintCount:
    """One (label set, fingerprint) over a window, with recent sample task ids."""

    labels: Key
    fingerprint: str
    count: int
    samples: tuple[str, ...]


class FingerprintWindows(_Store[_Ring]):
    """Counts per (label set, error fingerprint) with the most recent distinct task ids.

    The cap counts (label set, fingerprint) pairs: a task failing in ever new ways fills it,
    and the rest folds into one overflow pair. A label set expires after ``span_s`` idle.
    """

    def __init__(
        self, *, span_s: float, bucket_s: float = 10.0, max_label_sets: int = 1000,
        max_samples: int = 5, expire_after_s: float | None = None,
    ) -> None:
        self._rings = _Rings(bucket_s, span_s, 1, None, None)
        ring_s = self._rings.n * bucket_s
        if expire_after_s is not None and expire_after_s < ring_s:
            raise ValueError(f"expire_after_s ({expire_after_s}) must cover the span ({ring_s})")
        if max_samples < 0:
            raise ValueError(f"max_samples must not be negative, got {max_samples}")
        super().__init__(max_label_sets, ring_s if expire_after_s is None else expire_after_s)
        self.max_samples = max_samples
        self.late = 0

    def add(self, labels: Key, fingerprint: str, t: float, task_id: str | None = None) -> Key:
        """Count one failure; returns the key used (``labels + (fingerprint,)`` or overflow)."""
        rings = self._rings
        b = math.floor(t / rings.bucket_s)
        with self._lock:
            key, ring = self._table.place((*labels, fingerprint), t, lambda: rings.new(b, t))
            if not rings.add(ring, b, 1, 0):
                self.late += 1
            elif task_id is not None and self.max_samples:
                samples = ring.samples
                if task_id in samples:
                    samples.remove(task_id)
                elif len(samples) >= self.max_samples:
                    del samples[0]
                samples.append(task_id)
            return key

    def count(self, labels: Key, fingerprint: str, now: float, window_s: float) -> int:
        rings = self._rings
        k = rings.window(window_s)
        with self._lock:
            ring = self._table.slots.get((*labels, fingerprint))
            return 0 if ring is None else rings.count(
                ring, math.floor(now / rings.bucket_s), k, 0)

    def over(self, now: float, window_s: float, min_count: int) -> list[FingerprintCount]:
        """Every (label set, fingerprint) with at least ``min_count`` in the window, most
        frequent first; samples are the latest distinct task ids, oldest first."""
        rings = self._rings
        k = rings.window(window_s)
        b = math.floor(now / rings.bucket_s)
        found: list[FingerprintCount] = []
        with self._lock:
            for key, ring in self._table.slots.items():
                count = rings.count(ring, b, k, 0)
                if count >= min_count:
                    found.append(FingerprintCount(key[:-1], key[-1], count, tuple(ring.samples)))
        found.sort(key=lambda item: -item.count)
        return found


# --------------------------------------------------------------------------- last seen, gauges


class _Seen:
    __slots__ = ("last",)

    def __init__(self, last: float) -> None:
        self.last = last


class LastSeen(_Store[_Seen]):
    """When each label set was last seen. A set unseen for ``expire_after_s`` is forgotten
    by :meth:`expire` (an absence rule's ``forget_after``).

    For an absence rule with ``when``, also :meth:`touch` a label set when its gauge
    condition begins to hold: silence then counts from that moment, not from a completion
    long before the work arrived.
    """

    def __init__(self, *, expire_after_s: float, max_label_sets: int = 1000) -> None:
        super().__init__(max_label_sets, expire_after_s)

    def touch(self, labels: Key, t: float) -> Key:
        """``labels`` was seen at ``t`` (an earlier time than the last one changes nothing)."""
        with self._lock:
            return self._table.place(labels, t, lambda: _Seen(t))[0]

    def last_seen(self, labels: Key) -> float | None:
        with self._lock:
            slot = self._table.slots.get(labels)
            return None if slot is None else slot.last

    def items(self) -> list[tuple[Key, float]]:
        """Every label set with its last time, least recently seen first."""
        with self._lock:
            return [(key, slot.last) for key, slot in self._table.slots.items()]

    def silent(self, now: float, longer_than_s: float) -> list[tuple[Key, float]]:
        """Label sets not seen for more than ``longer_than_s`` at ``now``, with their time."""
        cutoff = now - longer_than_s
        with self._lock:  # a full scan: with out-of-order times, activity order is not time order
            return [(key, slot.last) for key, slot in self._table.slots.items()
                    if slot.last < cutoff]


@dataclass(frozen=True, slots=True)
class Reading:
    """A gauge value and when it was read."""

    value: float
    at: float


class _Gauge:
    __slots__ = ("last", "value")

    def __init__(self, value: float, last: float) -> None:
        self.value = value
        self.last = last


class GaugeValues(_Store[_Gauge]):
    """The last value of a gauge per label set. Readings older than the one held are
    ignored; the overflow set holds the latest reading of any set folded into it. A set
    with no reading for ``expire_after_s`` is dropped by :meth:`expire`."""

    def __init__(self, *, expire_after_s: float = 900.0, max_label_sets: int = 1000) -> None:
        super().__init__(max_label_sets, expire_after_s)

    def set(self, labels: Key, t: float, value: float) -> Key:
        with self._lock:
            key, slot = self._table.place(labels, t, lambda: _Gauge(value, t))
            if slot.last == t:
                slot.value = value
            return key

    def get(self, labels: Key) -> Reading | None:
        with self._lock:
            slot = self._table.slots.get(labels)
            return None if slot is None else Reading(slot.value, slot.last)

    def items(self) -> list[tuple[Key, Reading]]:
        with self._lock:
            return [(key, Reading(slot.value, slot.last))
                    for key, slot in self._table.slots.items()]
