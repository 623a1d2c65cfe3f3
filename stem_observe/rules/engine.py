"""The rules engine: signals in, alert states and notifications out.

:meth:`Engine.install` connects one receiver per signal the rules need; each event is
counted at the time it is *received* (the engine's clock, not the worker's) into the
windows its rules read, shared by the rules that read the same thing (see
:mod:`._sources`). :meth:`Engine.evaluate` is one tick: every rule reads what changed in
its windows, and each (rule, label set) moves through its states (see :mod:`._instances`)::

    inactive ──breach──▶ pending ──breach lasted `for`──▶ firing ──clear lasted
       ▲                   │ (`for: 0`: straight to firing)     `keep_firing_for`──▶ resolved
       └──── clear ────────┘                                                    │
       └────────────────────────────────────────────────────────────────────────┘

A tick costs what changed — label sets with new events or with events leaving a window,
and the alerts whose timers run — not what is watched: a quiet label set costs nothing
once its last change was read, and neither does a firing alert whose breach goes on.

Firing and resolved alerts join the groups of their routes (``group_by``). A new group
waits ``group_wait`` before its first flush, then flushes every ``group_interval``; a flush
hands the group's unmuted alerts to :meth:`Dispatcher.notify
<stem_observe.notify.Dispatcher.notify>`, whose log sends one notification per change
(and a repeat after ``repeat_interval``). A group whose alert resolved before its first
flush sends nothing. Alerts matched by an active silence (:class:`~.store.Store`), or
inhibited by a firing alert (``routing.inhibit``), are left out of flushes.

**Restarts.** A tick that changes a state saves every state to the store
(:meth:`Store.save_states <.store.Store.save_states>`), and a new engine loads them back
(:mod:`._restore`): after a restart, or in a second ``serve`` sharing the store. Restored
pending and firing alerts keep their times and are listed by :meth:`alerts` at once. Each
is held in its state until a tick confirms the breach — a ``for`` timer then continues
from the saved ``active_at`` — or until its rule's windows, empty at start, have filled
enough to tell that it cleared (a rate rule's window, twice a spike rule's window, a
gauge's next reading); a firing alert that cleared then resolves after
``keep_firing_for``. A restored firing alert rejoins its groups, flushed ``group_wait``
after it fired (at once if that has passed), and keeps its start, so the notification
log sees the incident it already told of, not a new one.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from blinker import NamedSignal
from prometheus_client import REGISTRY, CollectorRegistry

from stem_observe import events as ev
from stem_observe import signals
from stem_observe.errors import ConfigError
from stem_observe.notify.clock import SYSTEM_CLOCK, Clock
from stem_observe.notify.dispatch import Dispatcher
from stem_observe.notify.model import Alert, TaskSample, check_trace_template
from stem_observe.rules._evaluate import Key, Observer, build_evaluators
from stem_observe.rules._instances import Changed, Instance, RuleStates, StateName
from stem_observe.rules._metrics import EngineMetrics
from stem_observe.rules._restore import restore
from stem_observe.rules.model import RuleSet
from stem_observe.rules.routing import Route, Routing
from stem_observe.rules.store import MemoryStore, Silence, Store

__all__ = ["AlertState", "Engine", "StateName"]

logger = logging.getLogger("stem_observe.rules.engine")



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


@dataclass(slots=True)
class _Group:
    route: Route
    key: str
    labels: dict[str, str]
    next_flush: float
    members: dict[tuple[str, Key], Instance] = field(default_factory=dict)


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
    by default), whose saved states the engine restores at once (see the module doc);
    ``max_label_sets`` bounds each window. Every receiver the routing names must be one of
    the dispatcher's (a :class:`ConfigError` otherwise). Without routing in ``rules``,
    every alert goes to all of the dispatcher's receivers, grouped by ``alertname`` with
    the route defaults.
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
        self._metrics = EngineMetrics.for_registry(registry)
        start = clock.time()
        evaluators, self._sources = build_evaluators(
            rules.rules, max_label_sets=max_label_sets, start=start)
        self._rules = {evaluator.rule.name: RuleStates(evaluator) for evaluator in evaluators}
        by_signal: dict[str, dict[Observer, None]] = {}
        for evaluator in evaluators:
            for signal, observer in sorted(evaluator.observers.items()):
                by_signal.setdefault(signal, {})[observer] = None
        self._by_signal = {name: tuple(found) for name, found in by_signal.items()}
        self._groups: dict[str, _Group] = {}
        self._silences: list[Silence] = []
        self._muted = -1  # alerts muted after the last tick (-1: not yet known)
        self._handlers: list[tuple[NamedSignal, Callable[..., None]]] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.restored: Mapping[str, int] = self._restore(start)
        """Saved states read at construction, by outcome (see :mod:`._restore`)."""
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
        errors = self._metrics.errors.labels("evaluate")
        with self._lock:
            now = self.clock.time() if now is None else now
            failed: set[int] = set()
            for source in self._sources:
                try:
                    source.refresh(now)
                except Exception:
                    failed.add(id(source))
                    errors.inc()
                    logger.exception("reading the windows of %s failed; its rules wait for "
                                     "the next tick", sorted(source.signals))
            changed: Changed = {}
            for states in self._rules.values():
                evaluator = states.evaluator
                if id(evaluator.source) in failed:
                    continue
                try:
                    scan = evaluator.scan(now)
                except Exception:
                    errors.inc()
                    logger.exception("rule %s could not be evaluated", evaluator.rule.name)
                    continue
                states.advance(scan, now, changed, self._fire)
            self._mute(now)
            if self.dispatcher is not None:
                self._flush(now)
            result = [self._snapshot(i) for i in changed.values()]
            if changed:
                try:
                    self.store.save_states(self._current())
                except Exception:
                    self._metrics.errors.labels("store").inc()
                    logger.exception("saving alert states failed")
            pending = firing = 0
            for states in self._rules.values():
                p, f = states.counts()
                pending, firing = pending + p, firing + f
        self._metrics.alerts.labels("pending").set(pending)
        self._metrics.alerts.labels("firing").set(firing)
        self._metrics.evaluation.observe(time.perf_counter() - started)
        return result

    def _fire(self, instance: Instance, now: float) -> None:
        self._join(instance, now, now)

    def _join(self, instance: Instance, now: float, fired_at: float) -> None:
        """Add ``instance`` to the groups of its routes; a new group flushes ``group_wait``
        after ``fired_at``, and not before ``now``."""
        if self.dispatcher is None:
            return
        labels = instance.match_labels
        for route in self.routing.route.match(labels):
            values = {name: labels.get(name, "") for name in route.group_by}
            pairs = ",".join(f'{k}="{v}"' for k, v in sorted(values.items()))
            key = f"{self._route_ids[id(route)]}:{{{pairs}}}"
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group(
                    route, key, values, max(now, fired_at + route.group_wait_s))
            group.members[(instance.rule.name, instance.key)] = instance

    def _mute(self, now: float) -> None:
        try:
            self._silences = self.store.silences(now)
        except Exception:  # keep applying the silences last read
            self._metrics.errors.labels("store").inc()
            logger.exception("reading silences failed; using the last known ones")
        silences, inhibit = self._silences, self.routing.inhibit
        ids = tuple(s.id for s in silences)
        if not ids and not inhibit and not self._muted:
            return  # nothing mutes, and nothing was muted
        live = [i for states in self._rules.values() for i in states.instances.values()]
        resolved = {id(i): i for g in self._groups.values()
                    for i in g.members.values() if i.state == "resolved"}
        firing = [i.match_labels for i in live if i.state == "firing"] if inhibit else []
        sources = [(rule, [labels for labels in firing
                           if all(m.matches(labels) for m in rule.source_matchers)])
                   for rule in inhibit]
        muted = 0
        for instance in [*live, *resolved.values()]:
            labels = instance.match_labels
            silenced_by = instance.silenced_by
            if instance.mute_key != ids:  # silences changed since this alert was matched
                silenced_by = tuple(s.id for s in silences if s.matches(labels))
                instance.mute_key = ids
            inhibited = instance.state == "firing" and any(
                rule.inhibits(source, labels) for rule, found in sources for source in found)
            instance.mute(silenced_by, inhibited)
            muted += instance.muted
        self._muted = muted

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

    # --- restoring ----------------------------------------------------------------------

    def _restore(self, now: float) -> dict[str, int]:
        try:
            saved = self.store.load_states()
        except Exception:
            self._metrics.errors.labels("store").inc()
            logger.exception("loading saved alert states failed; starting without them")
            return {}
        with self._lock:
            instances, outcomes = restore(saved, self._rules)
            for instance in instances:
                if instance.state != "pending" and instance.fired_at is not None:
                    self._join(instance, now, instance.fired_at)
        for outcome, count in outcomes.items():
            self._metrics.restored.labels(outcome).inc(count)
        skipped = {k: v for k, v in outcomes.items() if k != "restored"}
        if skipped:
            logger.warning("restored %d saved alert states; skipped %s", outcomes["restored"],
                           ", ".join(f"{count} {outcome.replace('_', ' ')}"
                                     for outcome, count in sorted(skipped.items())))
        elif instances:
            logger.info("restored %d saved alert states", len(instances))
        return dict(outcomes)

    # --- reading ------------------------------------------------------------------------

    def _snapshot(self, instance: Instance) -> AlertState:
        found = instance.snapshot
        if isinstance(found, AlertState):
            return found
        reading = instance.reading
        state = AlertState(
            name=instance.rule.name, labels=dict(instance.match_labels), state=instance.state,
            since=instance.since, active_at=instance.active_at, fired_at=instance.fired_at,
            resolved_at=instance.resolved_at, value=reading.value, threshold=reading.threshold,
            baseline=reading.baseline, annotations=instance.annotations,
            samples=reading.samples, cli_hint=instance.cli_hint,
            silenced_by=instance.silenced_by, inhibited=instance.inhibited)
        instance.snapshot = state
        return state

    def _current(self, *, ordered: bool = False) -> list[AlertState]:
        found: dict[int, Instance] = {id(i): i for states in self._rules.values()
                                      for i in states.instances.values()}
        for group in self._groups.values():
            found.update({id(i): i for i in group.members.values()})
        instances = found.values()
        if ordered:
            return [self._snapshot(i) for i in sorted(instances, key=attrgetter("order"))]
        return [self._snapshot(i) for i in instances]

    def alerts(self) -> list[AlertState]:
        """Pending and firing alerts, and resolved ones not yet notified, by name and
        labels."""
        with self._lock:
            return self._current(ordered=True)

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
