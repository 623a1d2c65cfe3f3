"""Window arithmetic against brute-force models: counts, roll-over, bounds, the EWMA, pills."""

from __future__ import annotations

import math
import threading
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stem_observe import events as ev
from stem_observe.rules.fingerprints import event_fingerprint, fingerprint
from stem_observe.rules.windows import (
    OVERFLOW,
    CountWindows,
    FingerprintWindows,
    GaugeValues,
    LastSeen,
)

W = 10.0  # bucket width of every store below
KEYS = [("emails",), ("sms",), ("push",)]


def bucket(t: float) -> int:
    return math.floor(t / W)


def buckets_in(window_s: float) -> int:
    return max(1, math.ceil(window_s / W - 1e-9))


@dataclass
class RingModel:
    """Brute force: every accepted event kept; a ring holds the ``n`` buckets to its head."""

    n: int
    heads: dict[tuple[str, ...], int] = field(default_factory=dict)
    events: dict[tuple[str, ...], list[tuple[int, int, int]]] = field(
        default_factory=lambda: defaultdict(list))
    late: int = 0

    def add(self, key: tuple[str, ...], t: float, count: int, series: int) -> None:
        b = bucket(t)
        head = self.heads.get(key)
        if head is not None and b <= head - self.n:
            self.late += 1
            return
        self.heads[key] = b if head is None else max(head, b)
        self.events[key].append((b, count, series))

    def count(self, key: tuple[str, ...], now: float, window_s: float, series: int) -> int:
        head = self.heads.get(key)
        if head is None:
            return 0
        b, k = bucket(now), buckets_in(window_s)
        low, high = max(b - k + 1, head - self.n + 1), min(b, head)
        return sum(c for j, c, s in self.events[key] if s == series and low <= j <= high)


# An operation: (is_add, key index, time offset from a clock that only moves forward,
# count, series, window). Offsets reach back past the span, so some events are late.
operations = st.lists(
    st.tuples(
        st.booleans(),
        st.integers(0, len(KEYS) - 1),
        st.floats(-400.0, 20.0, allow_nan=False),
        st.integers(1, 5),
        st.integers(0, 1),
        st.sampled_from([5.0, 10.0, 30.0, 60.0, 95.0, 300.0]),
        st.floats(0.0, 40.0, allow_nan=False),
    ),
    max_size=120,
)


@settings(max_examples=200)
@given(operations, st.floats(-1e6, 1e6, allow_nan=False))
def test_counts_and_ratios_equal_a_brute_force_model(
    ops: list[tuple[bool, int, float, int, int, float, float]], start: float,
) -> None:
    store = CountWindows(span_s=300.0, bucket_s=W, series=2)
    model = RingModel(n=30)
    clock = start
    for is_add, index, offset, count, series, window_s, step in ops:
        clock += step
        key, t = KEYS[index], clock + offset
        if is_add:
            assert store.add(key, t, count, series) == key
            model.add(key, t, count, series)
        else:
            assert store.count(key, t, window_s, series) == model.count(key, t, window_s, series)
            assert store.ratio(key, t, window_s) == (
                model.count(key, t, window_s, 0), model.count(key, t, window_s, 1))
    assert store.late == model.late
    for key in KEYS:
        for window_s in (10.0, 300.0):
            assert store.count(key, clock, window_s) == model.count(key, clock, window_s, 0)


@given(st.lists(st.floats(0.0, 2000.0, allow_nan=False), max_size=80),
       st.floats(0.0, 2500.0, allow_nan=False), st.sampled_from([10.0, 60.0, 120.0]))
def test_in_order_counts_cover_the_window_to_bucket_boundaries(
    offsets: list[float], extra: float, window_s: float,
) -> None:
    """For events in time order, a count is every event from the start of the window's
    first bucket up to now: old buckets roll out, nothing in the window is lost."""
    times = sorted(offsets)
    store = CountWindows(span_s=120.0, bucket_s=W)
    for t in times:
        store.add(("q",), t)
    now = (times[-1] if times else 0.0) + extra
    first = (bucket(now) - buckets_in(window_s) + 1) * W
    assert store.count(("q",), now, window_s) == sum(1 for t in times if first <= t <= now)


def test_buckets_roll_over_at_their_boundaries() -> None:
    store = CountWindows(span_s=60.0, bucket_s=W)
    store.add(("q",), 5.0)  # bucket 0
    store.add(("q",), 9.999)  # bucket 0
    store.add(("q",), 10.0)  # bucket 1
    assert store.count(("q",), 10.0, 10.0) == 1
    assert store.count(("q",), 10.0, 20.0) == 3
    assert store.count(("q",), 59.9, 60.0) == 3  # buckets 0..5
    assert store.count(("q",), 60.0, 60.0) == 1  # bucket 0 left the window
    assert store.count(("q",), 70.0, 60.0) == 0
    store.add(("q",), 65.0)  # the head moves to bucket 6: bucket 0's slot is reused
    assert store.count(("q",), 65.0, 60.0) == 2
    store.add(("q",), 3.0)  # older than the ring now holds: dropped, counted
    assert store.late == 1
    store.add(("q",), 1000.0)  # a jump past the whole span clears every slot
    assert store.count(("q",), 1000.0, 60.0) == 1
    with pytest.raises(ValueError, match="longer than the span"):
        store.count(("q",), 1000.0, 61.0)


@settings(max_examples=100)
@given(st.lists(st.tuples(st.integers(0, 40), st.floats(0.0, 5.0, allow_nan=False)),
                max_size=200),
       st.integers(1, 6))
def test_memory_stays_bounded_and_overflow_is_counted(
    adds: list[tuple[int, float]], cap: int,
) -> None:
    store = CountWindows(span_s=60.0, bucket_s=W, max_label_sets=cap, expire_after_s=60.0)
    folded = 0
    times: list[float] = []
    clock = 0.0
    for name, step in adds:
        clock += step
        key = (f"task-{name}", "q")
        used = store.add(key, clock)
        times.append(clock)
        assert len(store) <= cap + 1
        if used != key:
            assert used == (OVERFLOW, OVERFLOW)
            folded += 1
    assert store.folded == folded
    # Every event in the window is counted, in its own label set or the overflow one:
    # expiry only drops label sets whose events have all left the window.
    in_window = sum(store.count(k, clock, 60.0) for k in store.label_sets())
    assert in_window == sum(1 for t in times if bucket(t) > bucket(clock) - 6)


def test_idle_label_sets_expire_and_free_their_slot() -> None:
    store = CountWindows(span_s=60.0, bucket_s=W, max_label_sets=2)
    store.add(("a",), 0.0)
    store.add(("b",), 30.0)
    assert store.add(("c",), 40.0) == (OVERFLOW,)  # full: c folds
    assert store.folded == 1
    assert store.expire(59.0) == []  # a was active 59 s ago: still within the span
    assert store.expire(60.0) == [("a",)]
    assert store.add(("c",), 61.0) == ("c",)  # a's slot is free again
    assert store.add(("d",), 100.0) == ("d",)  # full again: the add expires idle b first
    assert set(store.label_sets()) == {("c",), ("d",)}
    assert store.forget(("c",))
    assert not store.forget(("c",))
    with pytest.raises(ValueError, match="must cover the span"):
        CountWindows(span_s=60.0, expire_after_s=30.0)


def ewma_model(counts: dict[int, int], *, origin: int, head: int, n: int, alpha: float,
               now: float, window_s: float) -> tuple[float, float]:
    """The documented formula, summed directly instead of folded bucket by bucket."""
    last = head - n  # the newest bucket that has left the ring
    folds = last - origin + 1
    if folds <= 0:
        return 0.0, 0.0
    e = sum(alpha * (1 - alpha) ** (last - j) * c for j, c in counts.items() if origin <= j <= last)
    per_bucket = e / (1 - (1 - alpha) ** folds)
    k = buckets_in(window_s)
    return per_bucket * (k - 1 + now / W - bucket(now)), folds * W


@settings(max_examples=200)
@given(st.lists(st.tuples(st.floats(0.0, 30.0, allow_nan=False), st.integers(1, 4)),
                min_size=1, max_size=150),
       st.floats(0.0, 3000.0, allow_nan=False), st.sampled_from([300.0, 600.0, 3600.0]))
def test_the_baseline_follows_its_documented_formula(
    steps: list[tuple[float, int]], wait: float, horizon_s: float,
) -> None:
    store = CountWindows(span_s=60.0, bucket_s=W, baseline_horizon_s=horizon_s)
    counts: dict[int, int] = defaultdict(int)
    t = 1000.0
    for step, count in steps:
        t += step
        store.add(("q",), t, count)
        counts[bucket(t)] += count
    now = t + wait
    origin = bucket(1000.0 + steps[0][0])
    alpha = 2 / (horizon_s / W + 1)
    for window_s in (10.0, 60.0):
        expected, history_s = ewma_model(counts, origin=origin, head=max(bucket(now), bucket(t)),
                                         n=6, alpha=alpha, now=now, window_s=window_s)
        baseline = store.baseline(("q",), now, window_s)
        assert baseline.history_s == history_s
        assert baseline.expected == pytest.approx(expected, rel=1e-9, abs=1e-12)


@given(st.integers(1, 50), st.integers(7, 400), st.sampled_from([600.0, 3600.0]))
def test_a_steady_rate_is_its_own_baseline(per_bucket: int, buckets: int, horizon_s: float) -> None:
    """Bias correction makes a constant series' baseline exact, however young."""
    store = CountWindows(span_s=60.0, bucket_s=W, baseline_horizon_s=horizon_s)
    for j in range(buckets):
        store.add(("q",), j * W, per_bucket)
    now = (buckets - 1) * W + W / 2  # halfway through the newest bucket
    baseline = store.baseline(("q",), now, 60.0)
    assert baseline.history_s == (buckets - 1 - 6 + 1) * W
    if baseline.history_s:
        assert baseline.expected == pytest.approx(per_bucket * 5.5)
    assert store.baseline(("other",), now, 60.0).expected == 0.0  # never seen: zero, with history


def test_the_baseline_half_life_and_decay() -> None:
    store = CountWindows(span_s=300.0, bucket_s=W, baseline_horizon_s=3600.0)
    half_life = store.half_life_s
    assert half_life is not None
    alpha = 2 / (3600.0 / W + 1)
    assert (1 - alpha) ** (half_life / W) == pytest.approx(0.5)
    assert 0.3 * 3600 < half_life < 0.4 * 3600
    with pytest.raises(ValueError, match="no baseline"):
        CountWindows(span_s=60.0).baseline(("q",), 0.0, 60.0)


def test_a_spike_does_not_raise_its_own_baseline() -> None:
    store = CountWindows(span_s=300.0, bucket_s=W, baseline_horizon_s=3600.0, start=0.0)
    for j in range(360):  # one event per bucket for an hour
        store.add(("q",), j * W)
    before = store.baseline(("q",), 3600.0 - 0.001, 300.0).expected
    for j in range(360, 390):  # then 20 per bucket for five minutes
        store.add(("q",), j * W, 20)
    now = 390 * W - 0.001
    assert store.count(("q",), now, 300.0) == 600
    assert store.baseline(("q",), now, 300.0).expected == pytest.approx(before, rel=0.01)


# --------------------------------------------------------------------------- poison pills

# Each kind of varying value, drawn twice: the two must share a fingerprint.
ID_KINDS = [
    st.integers(0, 10**12).map(str),
    st.floats(0, 1e6, allow_nan=False).map(lambda f: f"{f:.2f}"),
    st.uuids().map(str),
    st.binary(min_size=4, max_size=16).map(lambda b: "f" + b.hex()),
    st.integers(0, 2**64).map(hex),
    st.integers(10**7, 10**12).map(lambda n: f"ORD{n}X"),
]
pairs = st.sampled_from(ID_KINDS).flatmap(lambda kind: st.tuples(kind, kind))


@given(pairs, pairs)
def test_fingerprints_collapse_numbers_and_ids(
    first: tuple[str, str], second: tuple[str, str],
) -> None:
    def message(a: str, b: str) -> str:
        return f"Timeout after {a}s  fetching order {b}\n from shard_{a}"

    one = fingerprint("TimeoutError", message(first[0], second[0]))
    assert one == fingerprint("TimeoutError", message(first[1], second[1]))
    assert one != fingerprint("KeyError", message(first[0], second[0]))
    assert not any(char.isdigit() for char in one)


@pytest.mark.parametrize(("message", "expected"), [
    ("user 42 not found", "E: user <n> not found"),
    ("id 550e8400-e29b-41d4-a716-446655440000 gone", "E: id <id> gone"),
    ("at 0x7f3a9c2e11 and deadbeef01", "E: at <id> and <id>"),
    ("order ORD000123XYZ failed", "E: order <id> failed"),
    ("user_12345 on v2 after 1500ms", "E: user_<n> on v<n> after <n>ms"),
    ("", "E"),
])
def test_fingerprint_normalisation(message: str, expected: str) -> None:
    assert fingerprint("E", message) == expected
    assert len(fingerprint("E", "x" * 1000)) <= 240


def test_event_fingerprints_come_from_errors() -> None:
    failed = ev.TaskFailed(task_id="t", task_name="a", error_type="KeyError",
                           error_message="'user-17'")
    retry = ev.TaskRetry(task_id="t", task_name="a", reason="KeyError: 'user-18'",
                         error_type="KeyError", error_message="'user-18'")
    dead = ev.TaskDeadLettered(task_id="t", task_name="a", reason="max-retries-exhausted")
    assert event_fingerprint(failed) == event_fingerprint(retry) == "KeyError: 'user-<n>'"
    assert event_fingerprint(dead) == "max-retries-exhausted"
    assert event_fingerprint(ev.TaskSucceeded(task_id="t", task_name="a")) is None


@settings(max_examples=100)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["F1", "F2"]),
                          st.integers(0, 9), st.floats(0.0, 20.0, allow_nan=False)),
                max_size=120),
       st.integers(1, 4))
def test_poison_pill_counts_and_samples(
    failures: list[tuple[str, str, int, float]], max_samples: int,
) -> None:
    store = FingerprintWindows(span_s=300.0, bucket_s=W, max_samples=max_samples)
    model = RingModel(n=30)
    recent: dict[tuple[str, ...], list[str]] = defaultdict(list)
    clock = 0.0
    for task, fp, task_number, step in failures:
        clock += step
        key = (task, "q", fp)
        store.add((task, "q"), fp, clock, f"id-{task_number}")
        model.add(key, clock, 1, 0)
        ids_ = recent[key]
        if f"id-{task_number}" in ids_:
            ids_.remove(f"id-{task_number}")
        ids_.append(f"id-{task_number}")
    for window_s in (60.0, 300.0):
        found = {(*item.labels, item.fingerprint): item
                 for item in store.over(clock, window_s, min_count=1)}
        for held in model.heads:
            count = model.count(held, clock, window_s, 0)
            assert store.count(held[:2], held[2], clock, window_s) == count
            if count:
                assert found[held].count == count
                assert found[held].samples == tuple(recent[held][-max_samples:])
                assert len(found[held].samples) <= max_samples
        counts = [item.count for item in store.over(clock, window_s, 1)]
        assert counts == sorted(counts, reverse=True)


# --------------------------------------------------------------------------- last seen, gauges


@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0.0, 1000.0, allow_nan=False)),
                max_size=60),
       st.floats(0.0, 1200.0, allow_nan=False), st.floats(1.0, 500.0, allow_nan=False))
def test_last_seen_and_silence_are_exact_with_out_of_order_times(
    touches: list[tuple[int, float]], now: float, silence: float,
) -> None:
    store = LastSeen(expire_after_s=10_000.0)
    latest: dict[tuple[str, ...], float] = {}
    for worker, t in touches:
        key = (f"w{worker}",)
        store.touch(key, t)
        latest[key] = max(latest.get(key, t), t)
    assert dict(store.items()) == latest
    assert {k: store.last_seen(k) for k in latest} == latest
    assert dict(store.silent(now, silence)) == {
        k: t for k, t in latest.items() if t < now - silence}


def test_last_seen_forgets_idle_label_sets() -> None:
    store = LastSeen(expire_after_s=600.0, max_label_sets=10)
    store.touch(("w1",), 0.0)
    store.touch(("w2",), 500.0)
    assert store.expire(700.0) == [("w1",)]
    assert store.last_seen(("w1",)) is None
    assert store.forget(("w2",))
    assert len(store) == 0


def test_gauges_keep_the_latest_reading() -> None:
    store = GaugeValues(max_label_sets=1)
    store.set(("emails",), 10.0, 5.0)
    store.set(("emails",), 5.0, 99.0)  # older than what is held: ignored
    reading = store.get(("emails",))
    assert reading is not None
    assert (reading.value, reading.at) == (5.0, 10.0)
    store.set(("emails",), 20.0, 7.0)
    assert store.set(("sms",), 21.0, 1.0) == (OVERFLOW,)
    assert [(k, r.value) for k, r in store.items()] == [(("emails",), 7.0), ((OVERFLOW,), 1.0)]
    assert store.folded == 1
    assert store.get(("sms",)) is None


def test_concurrent_adds_are_all_counted() -> None:
    store = CountWindows(span_s=60.0, bucket_s=W, max_label_sets=5)
    keys = [(uuid.uuid4().hex,) for _ in range(8)]

    def work(key: tuple[str, ...]) -> None:
        for i in range(2000):
            store.add(key, float(i % 50))

    threads = [threading.Thread(target=work, args=(key,)) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(store.count(k, 49.0, 60.0) for k in store.label_sets()) == 8 * 2000
    assert len(store) == 6


def test_overflow_matches_the_metrics_overflow_label() -> None:
    from stem_observe.sinks._labels import OVERFLOW as METRICS_OVERFLOW

    assert OVERFLOW == METRICS_OVERFLOW
