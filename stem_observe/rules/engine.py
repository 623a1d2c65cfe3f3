"""The rules engine: signals in, alert states and notifications out.

:meth:`Engine.install` connects one receiver per signal the rules need; each event is
counted into the rule's windows at the time it is *received* (the engine's clock, not the
worker's). :meth:`Engine.evaluate` is one tick: every rule reads its windows, and each
(rule, label set) moves through its states::

    inactive ──breach──▶ pending ──breach lasted `for`──▶ firing ──clear lasted
       ▲                   │ (`for: 0`: straight to firing)     `keep_firing_for`──▶ resolved
       └──── clear ────────┘                                                    │
       └────────────────────────────────────────────────────────────────────────┘

Firing and resolved alerts join the groups of their routes (``group_by``). A new group
waits ``group_wait`` before its first flush, then flushes every ``group_interval``; a flush
hands the group's unmuted alerts to :meth:`Dispatcher.notify
<stem_observe.notify.Dispatcher.notify>`, whose log sends one notification per change
(and a repeat after ``repeat_interval``). A group whose alert resolved before its first
flush sends nothing. Alerts matched by an active silence (:class:`~.store.Store`), or
inhibited by a firing alert (``routing.inhibit``), are left out of flushes.

Threads: receivers run on the sender's thread and only touch the windows (never block on
I/O, never raise into the sender). :meth:`evaluate` runs on the tick thread
(:meth:`start`) or the caller's; it calls the store and the dispatcher's ``notify``, which
only queues. :meth:`alerts` may be called from any thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal

from blinker import NamedSignal
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from stem_observe import events as ev
from stem_observe import signals
from stem_observe.errors import ConfigError
from stem_observe.notify.clock import SYSTEM_CLOCK, Clock
from stem_observe.notify.dispatch import Dispatcher
from stem_observe.notify.model import Alert, TaskSample, check_trace_template
from stem_observe.rules._evaluate import Breach, Key, build_evaluator
from stem_observe.rules.model import Rule, RuleSet
from stem_observe.rules.routing import Route, Routing
from stem_observe.rules.store import MemoryStore, Silence, Store

__all__ = ["AlertState", "Engine", "StateName"]

logger = logging.getLogger("stem_observe.rules.engine")

StateName = Literal["inactive", "pending", "firing", "resolved"]
_DEAD_LETTER_SIGNALS: Final = frozenset({"task-dead-lettered"})
_DEAD_LETTER_FIELDS: Final = frozenset({"dead_letters", "oldest_dead_letter_age_s"})


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertState:
    """One (rule, label set) as the engine sees it; what ``/api/alerts`` lists.

    ``labels`` include ``alertname`` and ``severity``. ``since`` is when the current state
    began; ``active_at`` when the breach began; ``value`` against ``threshold`` (and
    ``baseline`` for spikes) is the latest breached reading. ``silenced_by`` lists the
    silences that mute it; ``inhibited`` says a firing alert mutes it.
    """

    name: str
    labels: Mapping[str, str]
    state: StateName
    since: float
    active_at: float
    fired_at: float | None = None
    resolved_at: float | None = None
    value: float | None = None
    threshold: float | None = None
    baseline: float | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    samples: tuple[TaskSample, ...] = ()
    cli_hint: str | None = None
    silenced_by: tuple[str, ...] = ()
    inhibited: bool = False

    def to_json(self, trace_url_template: str | None = None) -> dict[str, Any]:
        """A JSON-ready dict; sample trace links use ``trace_url_template``."""
        return {
            "name": self.name, "labels": dict(self.labels), "state": self.state,
            "since": self.since, "active_at": self.active_at, "fired_at": self.fired_at,
            "resolved_at": self.resolved_at, "value": self.value,
            "threshold": self.threshold, "baseline": self.baseline,
            "annotations": dict(self.annotations), "cli_hint": self.cli_hint,
            "samples": [{"task_id": s.task_id, "trace_id": s.trace_id,
                         "trace_url": s.trace_url(trace_url_template)} for s in self.samples],
            "silenced_by": list(self.silenced_by), "inhibited": self.inhibited,
        }


class _Instance:
    """The mutable state of one (rule, label set)."""

    __slots__ = (
        "active_at",
        "announced",
        "cleared_at",
        "fired_at",
        "inhibited",
        "key",
        "labels",
        "match_labels",
        "reading",
        "resolved_at",
        "rule",
        "silenced_by",
        "since",
        "state",
    )

    def __init__(self, rule: Rule, reading: Breach, now: float) -> None:
        self.rule = rule
        self.key: Key = reading.key
        self.labels: dict[str, str] = {"severity": rule.severity, **rule.labels,
                                       **reading.labels}
        self.match_labels: dict[str, str] = {"alertname": rule.name, **self.labels}
        self.reading = reading
        self.state: StateName = "pending"
        self.since = self.active_at = now
        self.fired_at: float | None = None
        self.resolved_at: float | None = None
        self.cleared_at: float | None = None
        self.announced = False
        self.silenced_by: tuple[str, ...] = ()
        self.inhibited = False

    @property
    def muted(self) -> bool:
        return self.inhibited or bool(self.silenced_by)

    def values(self) -> dict[str, object]:
        return {**self.reading.labels, **self.reading.values}

    def alert(self) -> Alert:
        rule, reading = self.rule, self.reading
        rendered = rule.annotations.render(self.values())
        return Alert(
            name=rule.name, labels=self.labels, annotations=rendered,
            status="resolved" if self.state == "resolved" else "firing",
            starts_at=self.fired_at if self.fired_at is not None else self.active_at,
            ends_at=self.resolved_at, value=reading.value, threshold=reading.threshold,
            baseline=reading.baseline, samples=reading.samples,
            dashboard_url=rendered.get("dashboard_url"), runbook_url=rendered.get("runbook_url"),
            cli_hint=_cli_hint(rule, self.labels))

    def snapshot(self) -> AlertState:
        reading = self.reading
        return AlertState(
            name=self.rule.name, labels=dict(self.match_labels), state=self.state,
            since=self.since, active_at=self.active_at, fired_at=self.fired_at,
            resolved_at=self.resolved_at, value=reading.value, threshold=reading.threshold,
            baseline=reading.baseline, annotations=self.rule.annotations.render(self.values()),
            samples=reading.samples, cli_hint=_cli_hint(self.rule, self.labels),
            silenced_by=self.silenced_by, inhibited=self.inhibited)


def _cli_hint(rule: Rule, labels: Mapping[str, str]) -> str | None:
    queue = labels.get("queue")
    if not queue or queue == "unknown":
        return None
    field_name = getattr(rule, "field", None)
    if (rule.kind == "poison_pill" or _DEAD_LETTER_SIGNALS & rule.inputs
            or field_name in _DEAD_LETTER_FIELDS):
        return f"stem-observe dlq list --queue {queue}"
    if "worker" in labels:
        return "stem-observe observe workers"
    return "stem-observe observe queues"


@dataclass(slots=True)
class _Group:
    route: Route
    key: str
    labels: dict[str, str]
    next_flush: float
    members: dict[tuple[str, Key], _Instance] = field(default_factory=dict)


class _Metrics:
    """``stem_observe_rule_evaluation_seconds``, ``stem_observe_alerts{state}`` and
    ``stem_observe_rule_errors_total{stage}``, defined once per registry."""

    _instances: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, _Metrics]] = (
        weakref.WeakKeyDictionary())
    _lock: ClassVar = threading.Lock()

    def __init__(self, registry: CollectorRegistry) -> None:
        self.evaluation = Histogram(
            "stem_observe_rule_evaluation_seconds", "Seconds one tick of the rules engine took.",
            registry=registry, buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0))
        self.alerts = Gauge("stem_observe_alerts", "Alerts of the rules engine by state.",
                            ["state"], registry=registry)
        self.errors = Counter(
            "stem_observe_rule_errors", "Errors the rules engine caught, by stage: observe "
            "(counting an event), evaluate (a rule), store, dispatch.", ["stage"],
            registry=registry)
        for stage in ("observe", "evaluate", "store", "dispatch"):
            self.errors.labels(stage)

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> _Metrics:
        with cls._lock:
            found = cls._instances.get(registry)
            if found is None:
                found = cls._instances[registry] = cls(registry)
            return found


_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for engine in list(_engines):
        engine._lock = threading.RLock()
        engine._thread = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Engine:
    """Evaluates ``rules`` and hands alerts to ``dispatcher`` (``None``: states only).

    ``clock.time()`` stamps received events and ticks; ``tick_s`` is the tick thread's
    period; ``store`` holds silences and the state snapshot (:class:`~.store.MemoryStore`
    by default); ``max_label_sets`` bounds each rule's windows. Every receiver the routing
    names must be one of the dispatcher's (a :class:`ConfigError` otherwise). Without
    routing in ``rules``, every alert goes to all of the dispatcher's receivers, grouped by
    ``alertname`` with the route defaults.
    """

    def __init__(
        self, rules: RuleSet, dispatcher: Dispatcher | None = None, *,
        clock: Clock = SYSTEM_CLOCK, registry: CollectorRegistry = REGISTRY,
        tick_s: float = 5.0, store: Store | None = None,
        trace_url_template: str | None = None, max_label_sets: int = 10_000,
    ) -> None:
        if not tick_s > 0:
            raise ConfigError("tick_s", f"must be positive, got {tick_s!r}")
        if max_label_sets < 1:
            raise ConfigError("max_label_sets", f"must be at least 1, got {max_label_sets!r}")
        self.rules = rules
        self.dispatcher = dispatcher
        self.clock = clock
        self.tick_s = float(tick_s)
        self.store: Store = store if store is not None else MemoryStore(clock=clock)
        self.trace_url_template = check_trace_template(trace_url_template)
        self.routing: Routing = rules.routing or Routing.default()
        self._all_receivers = rules.routing is None
        if dispatcher is not None and not self._all_receivers:
            known = set(dispatcher.receivers)
            for route in _walk(self.routing.route):
                if route.receiver not in known:
                    raise ConfigError(f"routing.receivers.{route.receiver}",
                                      "the dispatcher has no such receiver")
        self._route_ids = {id(route): str(i) for i, route in enumerate(_walk(self.routing.route))}
        self._metrics = _Metrics.for_registry(registry)
        start = clock.time()
        self._evaluators = [build_evaluator(rule, max_label_sets=max_label_sets, start=start)
                            for rule in rules.rules]
        by_signal: dict[str, list[Callable[[str, ev.Event, float], None]]] = {}
        for evaluator in self._evaluators:
            for signal in sorted(evaluator.rule.inputs):
                by_signal.setdefault(signal, []).append(evaluator.observe)
        self._by_signal = {name: tuple(found) for name, found in by_signal.items()}
        self._states: dict[str, dict[Key, _Instance]] = {r.name: {} for r in rules.rules}
        self._groups: dict[str, _Group] = {}
        self._silences: list[Silence] = []
        self._handlers: list[tuple[NamedSignal, Callable[..., None]]] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        _engines.add(self)

    # --- ingestion ----------------------------------------------------------------------

    @property
    def signals(self) -> frozenset[str]:
        """The signals the rules need."""
        return frozenset(self._by_signal)

    def install(self) -> None:
        """Connect one receiver per needed signal (idempotent)."""
        with self._lock:
            if self._handlers:
                return
            for name in sorted(self._by_signal):
                sig = signals.namespace.signal(name)
                handler = self._handler(name)
                sig.connect(handler, weak=False)
                self._handlers.append((sig, handler))

    def uninstall(self) -> None:
        """Disconnect the receivers (idempotent)."""
        with self._lock:
            handlers, self._handlers = self._handlers, []
        for sig, handler in handlers:
            sig.disconnect(handler)

    def _handler(self, name: str) -> Callable[..., None]:
        observers = self._by_signal[name]
        clock, errors = self.clock, self._metrics.errors.labels("observe")

        def receive(sender: object, *, event: ev.Event, **_: object) -> None:
            try:
                t = clock.time()
                for observe in observers:
                    observe(name, event, t)
            except Exception:  # never into the sender: counted and logged
                errors.inc()
                logger.debug("rules engine: counting a %s event failed", name, exc_info=True)

        return receive

    def observe(self, event: ev.Event, *, at: float | None = None) -> None:
        """Count ``event`` as if received at ``at`` (default: now), without the signal bus:
        replays (``rules test``) and tests."""
        name = signals.signal_for(type(event)).name
        t = self.clock.time() if at is None else at
        for observe in self._by_signal.get(name, ()):
            observe(name, event, t)

    # --- evaluation ---------------------------------------------------------------------

    def evaluate(self, now: float | None = None) -> list[AlertState]:
        """One tick at ``now`` (default: the clock's time): evaluate every rule, advance the
        states, apply silences and inhibition, flush the groups that are due. Returns the
        states that changed in this tick (a pending alert that cleared reads ``inactive``)."""
        started = time.perf_counter()
        with self._lock:
            now = self.clock.time() if now is None else now
            changed: list[_Instance] = []
            for evaluator in self._evaluators:
                try:
                    readings = evaluator.breaches(now)
                except Exception:
                    self._metrics.errors.labels("evaluate").inc()
                    logger.exception("rule %s could not be evaluated", evaluator.rule.name)
                    continue
                self._advance(evaluator.rule, readings, now, changed)
            self._mute(now)
            if self.dispatcher is not None:
                self._flush(now)
            states = [i.snapshot() for i in changed]
            if changed:
                try:
                    self.store.save_states(self._current())
                except Exception:
                    self._metrics.errors.labels("store").inc()
                    logger.exception("saving alert states failed")
            counts = {"pending": 0, "firing": 0}
            for by_key in self._states.values():
                for instance in by_key.values():
                    counts[instance.state] += 1
        for state, count in counts.items():
            self._metrics.alerts.labels(state).set(count)
        self._metrics.evaluation.observe(time.perf_counter() - started)
        return states

    def _advance(self, rule: Rule, readings: Sequence[Breach], now: float,
                 changed: list[_Instance]) -> None:
        by_key = self._states[rule.name]
        breached: set[Key] = set()
        for reading in readings:
            breached.add(reading.key)
            instance = by_key.get(reading.key)
            if instance is None:
                instance = by_key[reading.key] = _Instance(rule, reading, now)
                changed.append(instance)
            else:
                instance.reading = reading
                instance.cleared_at = None
            if instance.state == "pending" and now - instance.active_at >= rule.for_s:
                self._fire(instance, now)
                if instance not in changed:
                    changed.append(instance)
        for key in [k for k in by_key if k not in breached]:
            instance = by_key[key]
            if instance.state == "pending":
                instance.state, instance.since = "inactive", now
                del by_key[key]
                changed.append(instance)
                continue
            if instance.cleared_at is None:
                instance.cleared_at = now
            if now - instance.cleared_at >= rule.keep_firing_for_s:
                instance.state, instance.since, instance.resolved_at = "resolved", now, now
                del by_key[key]
                changed.append(instance)

    def _fire(self, instance: _Instance, now: float) -> None:
        instance.state, instance.since, instance.fired_at = "firing", now, now
        if self.dispatcher is None:
            return
        labels = instance.match_labels
        for route in self.routing.route.match(labels):
            values = {name: labels.get(name, "") for name in route.group_by}
            pairs = ",".join(f'{k}="{v}"' for k, v in sorted(values.items()))
            key = f"{self._route_ids[id(route)]}:{{{pairs}}}"
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group(route, key, values, now + route.group_wait_s)
            group.members[(instance.rule.name, instance.key)] = instance

    def _mute(self, now: float) -> None:
        try:
            self._silences = self.store.silences(now)
        except Exception:  # keep applying the silences last read
            self._metrics.errors.labels("store").inc()
            logger.exception("reading silences failed; using the last known ones")
        live = [i for by_key in self._states.values() for i in by_key.values()]
        pending_resolved = {id(i): i for g in self._groups.values()
                            for i in g.members.values() if i.state == "resolved"}
        targets = live + list(pending_resolved.values())
        firing = [i.match_labels for i in live if i.state == "firing"]
        sources = [(rule, [labels for labels in firing
                           if all(m.matches(labels) for m in rule.source_matchers)])
                   for rule in self.routing.inhibit]
        for instance in targets:
            labels = instance.match_labels
            instance.silenced_by = tuple(s.id for s in self._silences if s.matches(labels))
            instance.inhibited = instance.state == "firing" and any(
                rule.inhibits(source, labels) for rule, found in sources for source in found)

    def _flush(self, now: float) -> None:
        assert self.dispatcher is not None
        for key in [k for k, g in self._groups.items() if now >= g.next_flush]:
            group = self._groups[key]
            route = group.route
            alerts: list[Alert] = []
            for instance in group.members.values():
                if instance.muted:
                    continue
                if instance.state == "firing":
                    alerts.append(instance.alert())
                    instance.announced = True
                elif instance.announced and route.send_resolved:
                    alerts.append(instance.alert())
            repeat = route.repeat_interval_s if route.repeat_interval_s > 0 else None
            try:
                self.dispatcher.notify(
                    key, alerts, group_labels=group.labels, repeat_interval_s=repeat,
                    receivers=None if self._all_receivers else [route.receiver])
            except Exception:
                self._metrics.errors.labels("dispatch").inc()
                logger.exception("handing group %s to the dispatcher failed", key)
            for member in [k for k, i in group.members.items() if i.state == "resolved"]:
                del group.members[member]
            if group.members:
                group.next_flush = now + route.group_interval_s
            else:
                del self._groups[key]

    # --- reading ------------------------------------------------------------------------

    def _current(self) -> list[AlertState]:
        found: dict[int, _Instance] = {id(i): i for by_key in self._states.values()
                                       for i in by_key.values()}
        for group in self._groups.values():
            found.update({id(i): i for i in group.members.values()})
        states = [i.snapshot() for i in found.values()]
        states.sort(key=lambda s: (s.name, sorted(s.labels.items())))
        return states

    def alerts(self) -> list[AlertState]:
        """Pending and firing alerts, and resolved ones not yet notified, by name."""
        with self._lock:
            return self._current()

    # --- the tick thread ----------------------------------------------------------------

    def start(self) -> None:
        """Run :meth:`evaluate` every ``tick_s`` on a daemon thread (idempotent)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="stem-observe-rules",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the tick thread, waiting up to ``timeout_s`` for a tick in progress."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        self._thread = None

    def _run(self) -> None:
        deadline = time.monotonic() + self.tick_s
        while not self._stop.wait(max(0.0, deadline - time.monotonic())):
            deadline = max(deadline + self.tick_s, time.monotonic())
            try:
                self.evaluate()
            except Exception:  # the thread must survive a bad tick
                logger.exception("a rules engine tick failed")

    def __enter__(self) -> Engine:
        self.install()
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self.uninstall()

    def __repr__(self) -> str:
        return f"Engine(rules={len(self.rules)}, tick_s={self.tick_s})"


def _walk(route: Route) -> list[Route]:
    found = [route]
    for child in route.routes:
        found += _walk(child)
    return found
