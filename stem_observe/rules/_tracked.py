"""Count windows that say which label sets' counts changed since they were last read.

:class:`TrackedCounts` is a :class:`~.windows.CountWindows` read through one window length
by a tick: :meth:`TrackedCounts.changes` returns the counts at ``now`` of exactly the label
sets whose counts may differ from those of the previous call, so a tick costs what changed,
not what is held.

**Why that is exact.** A count is a sum of buckets, so between two reads at buckets
``c <= b`` it changes only when

1. an event is counted for the label set (it is marked *dirty*);
2. a bucket holding some of its events leaves the window (buckets ``c - k + 1 .. b - k``):
   an index from bucket to the label sets with events in it names them;
3. a bucket holding events stamped after bucket ``c`` enters it: such label sets are
   remembered (*ahead*) and read again until the read catches up with them;
4. the label set is dropped (expiry, or a full store making room).

A read at a time before the previous one recounts every label set, and so does the next.

**Running sums.** Each label set keeps, per series, the sum of its buckets after bucket
``c - k`` (``c`` the latest read): an event adds to it, a bucket leaving the ring or the
window subtracts. A read at ``b`` with nothing counted after ``b`` is that sum, O(1); a
label set *ahead* of the read is counted bucket by bucket as :class:`CountWindows` does.

**Threads.** :meth:`add` runs on senders' threads, :meth:`changes` on the tick thread, both
under the store's one lock; :meth:`changes` holds it for O(label sets changed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from stem_observe.rules.signals_map import Key
from stem_observe.rules.windows import Baseline, CountWindows, _Ring

__all__ = ["TrackedCounts"]


class _SumRing(_Ring):
    __slots__ = ("sums",)

    def __init__(self, head: int, size: int, ewma: int, series: int, last: float) -> None:
        super().__init__(head, size, ewma, last)
        self.sums = [0] * series


class TrackedCounts(CountWindows):
    """:class:`CountWindows` read through a window of ``window_s`` (at most ``span_s``) by
    :meth:`changes`; every other argument as for :class:`CountWindows`."""

    def __init__(
        self, *, window_s: float, span_s: float, bucket_s: float = 10.0, series: int = 1,
        baseline_horizon_s: float | None = None, max_label_sets: int = 1000,
        start: float | None = None,
    ) -> None:
        super().__init__(span_s=span_s, bucket_s=bucket_s, series=series,
                         baseline_horizon_s=baseline_horizon_s, max_label_sets=max_label_sets,
                         start=start)
        self.window_s = window_s
        self._k = self._rings.window(window_s)
        self._cursor: int | None = None  # the bucket of the latest read
        self._recount = False  # the next read reports every label set
        self._dirty: set[Key] = set()
        self._ahead: set[Key] = set()
        self._index: dict[int, set[Key]] = {}

    @property
    def series(self) -> int:
        return self._rings.series

    def window_start(self, now: float) -> float:
        """When the first bucket of the window at ``now`` begins."""
        bucket_s = self._rings.bucket_s
        return (math.floor(now / bucket_s) - self._k + 1) * bucket_s

    def _new(self, b: int, t: float) -> _SumRing:
        rings = self._rings
        return _SumRing(b, rings.n * rings.series, rings.series if rings.alpha else 0,
                        rings.series, t)

    def add(self, labels: Key, t: float, n: int = 1, series: int = 0) -> Key:
        rings = self._rings
        b = math.floor(t / rings.bucket_s)
        with self._lock:
            if rings.origin is None:
                rings.origin = b
            key, ring = self._table.place(labels, t, lambda: self._new(b, t))
            assert isinstance(ring, _SumRing)
            floor = None if self._cursor is None else self._cursor - self._k
            if b > ring.head:
                self._leave_ring(ring, b, floor)
            if not rings.add(ring, b, n, series):
                self.late += 1
                return key
            self._dirty.add(key)
            if floor is None or b > floor:  # inside the window of the latest read, or ahead
                ring.sums[series] += n
                found = self._index.get(b)
                if found is None:
                    found = self._index[b] = set()
                found.add(key)
            return key

    def _leave_ring(self, ring: _SumRing, b: int, floor: int | None) -> None:
        """Subtract the buckets the ring drops as its head moves to ``b`` (those still summed)."""
        n, m, counts, sums = self._rings.n, self._rings.series, ring.counts, ring.sums
        low = ring.head - n + 1 if floor is None else max(ring.head - n + 1, floor + 1)
        for j in range(low, min(ring.head, b - n) + 1):
            base = (j % n) * m
            for s in range(m):
                sums[s] -= counts[base + s]

    def changes(self, now: float, keep: Callable[[Sequence[int]], bool],
                ) -> tuple[set[Key], dict[Key, tuple[int, ...]], bool]:
        """What changed since the previous call, read at ``now``: the label sets whose counts
        may differ from the previous call's; the counts (one per series) of those of them
        for which ``keep(counts)`` holds (never for a dropped label set, whose counts are
        all zero); and whether the call is *complete*, naming every label set held. The
        first call is complete, and so are a call at a time before the previous one, the
        call after it, and the call after :meth:`recount_next`."""
        rings = self._rings
        b = math.floor(now / rings.bucket_s)
        k, n, m = self._k, rings.n, rings.series
        with self._lock:
            slots = self._table.slots
            changed, self._dirty = self._dirty, set()
            if self._cursor is not None and b < self._cursor:  # back in time: recount all
                self._recount = True
                found = {key: counts for key, ring in slots.items()
                         if keep(counts := tuple(rings.count(ring, b, k, s) for s in range(m)))}
                return set(slots), found, True
            floor = b - k
            index = self._index
            for j in sorted(j for j in index if j <= floor):
                for key in index.pop(j):
                    ring = slots.get(key)
                    if ring is None:
                        changed.add(key)  # dropped with events still in the window
                        continue
                    if not ring.head - n < j <= ring.head:
                        continue  # the ring dropped that bucket already
                    assert isinstance(ring, _SumRing)
                    base = (j % n) * m
                    for s in range(m):
                        c = ring.counts[base + s]
                        if c:
                            ring.sums[s] -= c
                            changed.add(key)
            complete = self._cursor is None or self._recount
            self._cursor = b
            changed |= self._ahead
            changed.update(self._table.expire(now))
            if self._recount:
                self._recount = False
                changed.update(slots)
            # label sets with events after ``now``: those in the index past its bucket
            ahead = set().union(*(keys for j, keys in index.items() if j > b))
            if complete:  # every label set: no need to look each one up
                found = {key: tuple(sums) for key, ring in slots.items()
                         if keep(sums := ring.sums)}  # type: ignore[attr-defined]
            else:
                get = slots.get
                found = {key: tuple(sums) for key in changed
                         if (ring := get(key)) is not None
                         and keep(sums := ring.sums)}  # type: ignore[attr-defined]
            for key in ahead:  # not all of their counts are in this window yet
                found.pop(key, None)
                ring = slots.get(key)
                if ring is not None:
                    counts = tuple(rings.count(ring, b, k, s) for s in range(m))
                    if keep(counts):
                        found[key] = counts
            self._ahead = ahead
            return changed, found, complete

    def expire(self, now: float) -> list[Key]:
        with self._lock:
            removed = self._table.expire(now)
            self._dirty.update(removed)
            return removed

    def forget(self, labels: Key) -> bool:
        with self._lock:
            if self._table.slots.pop(labels, None) is None:
                return False
            self._dirty.add(labels)
            return True

    def recount_next(self) -> None:
        """Make the next :meth:`changes` report every label set (after a failed reader)."""
        with self._lock:
            self._recount = True

    def counts_at(self, now: float) -> dict[Key, tuple[int, ...]]:
        """Counts at ``now`` of every label set held, bucket by bucket (a reader's resync)."""
        rings = self._rings
        b, k, m = math.floor(now / rings.bucket_s), self._k, rings.series
        with self._lock:
            return {key: tuple(rings.count(ring, b, k, s) for s in range(m))
                    for key, ring in self._table.slots.items()}

    def baselines(self, keys: Iterable[Key], now: float) -> dict[Key, Baseline]:
        """The series-0 baseline over the window at ``now`` of each of ``keys``."""
        rings, k = self._rings, self._k
        if not rings.alpha:
            raise ValueError("this store keeps no baseline (no baseline_horizon_s)")
        with self._lock:
            slots = self._table.slots
            return {key: rings.baseline(slots.get(key), now, k, 0) for key in keys}
