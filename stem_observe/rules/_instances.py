"""The alert state of each (rule, label set), and how one tick's :class:`~._evaluate.Scan`
moves it::

    inactive ──breach──▶ pending ──breach lasted `for`──▶ firing ──clear lasted
       ▲                   │ (`for: 0`: straight to firing)     `keep_firing_for`──▶ resolved
       └──── clear ────────┘

:class:`RuleStates` keeps one rule's alerts and, per tick, looks only at what can move: the
label sets the scan says changed, the pending alerts (their ``for``), the alerts whose
breach cleared (their ``keep_firing_for``) and the *held* ones. A firing alert whose breach
goes on costs nothing.

*Held* alerts were restored from a saved state (a restart, or a second instance joining):
they keep their state and times until a scan confirms the breach — then they carry on
as if never interrupted — or until the rule's windows, empty at start, can tell that it
cleared (:meth:`Evaluator.settled <._evaluate.Evaluator.settled>`).

Everything here runs under the engine's lock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, Literal

from stem_observe.notify.model import Alert
from stem_observe.rules._evaluate import Breach, Evaluator, Scan
from stem_observe.rules.model import Rule
from stem_observe.rules.signals_map import Key

__all__ = ["Instance", "RuleStates", "StateName", "cli_hint"]

StateName = Literal["inactive", "pending", "firing", "resolved"]
_DEAD_LETTER_SIGNALS: Final = frozenset({"task-dead-lettered"})
_DEAD_LETTER_FIELDS: Final = frozenset({"dead_letters", "oldest_dead_letter_age_s"})


class Instance:
    """The mutable state of one (rule, label set). ``snapshot`` caches what the engine
    last made of it and is reset whenever anything shown changes."""

    __slots__ = (
        "_annotations",
        "_order",
        "active_at",
        "announced",
        "cleared_at",
        "cli_hint",
        "fired_at",
        "inhibited",
        "key",
        "labels",
        "match_labels",
        "mute_key",
        "reading",
        "resolved_at",
        "rule",
        "silenced_by",
        "since",
        "snapshot",
        "state",
        "states",
    )

    def __init__(self, states: RuleStates, reading: Breach, now: float) -> None:
        rule = self.rule = states.rule
        self.states = states
        self.key: Key = reading.key
        self.labels: dict[str, str] = {**states.static_labels, **reading.labels}
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
        self.mute_key: tuple[str, ...] | None = None
        self.snapshot: object = None
        self._annotations: dict[str, str] | None = None
        self._order: tuple[str, tuple[tuple[str, str], ...]] | None = None
        self.cli_hint = cli_hint(rule, self.labels, states.dead_letters)

    @property
    def order(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """Where the alert sorts: by name, then labels."""
        if self._order is None:
            self._order = self.rule.name, tuple(sorted(self.match_labels.items()))
        return self._order

    @property
    def muted(self) -> bool:
        return self.inhibited or bool(self.silenced_by)

    @property
    def annotations(self) -> dict[str, str]:
        if self._annotations is None:
            templates = self.states.templates
            values = self.values() if templates else {}
            self._annotations = {name: t.render(values) for name, t in templates}
        return self._annotations

    def restored(self, annotations: Mapping[str, str]) -> None:
        """Show ``annotations`` (as saved) until a fresh reading replaces them."""
        self._annotations = dict(annotations)

    def update(self, reading: Breach) -> None:
        self.reading = reading
        self._annotations = None
        self.snapshot = None

    def move(self, state: StateName, now: float) -> None:
        self.state, self.since, self.snapshot = state, now, None
        if state == "firing":
            self.fired_at = now
        elif state == "resolved":
            self.resolved_at = now

    def mute(self, silenced_by: tuple[str, ...], inhibited: bool) -> None:
        if silenced_by != self.silenced_by or inhibited != self.inhibited:
            self.silenced_by, self.inhibited, self.snapshot = silenced_by, inhibited, None

    def values(self) -> dict[str, object]:
        return {**self.reading.labels, **self.reading.values}

    def alert(self) -> Alert:
        reading, rendered = self.reading, self.annotations
        return Alert(
            name=self.rule.name, labels=self.labels, annotations=rendered,
            status="resolved" if self.state == "resolved" else "firing",
            starts_at=self.fired_at if self.fired_at is not None else self.active_at,
            ends_at=self.resolved_at, value=reading.value, threshold=reading.threshold,
            baseline=reading.baseline, samples=reading.samples,
            dashboard_url=rendered.get("dashboard_url"), runbook_url=rendered.get("runbook_url"),
            cli_hint=self.cli_hint)


def about_dead_letters(rule: Rule) -> bool:
    """Whether alerts of ``rule`` are about dead letters (a DLQ command helps)."""
    return (rule.kind == "poison_pill" or bool(_DEAD_LETTER_SIGNALS & rule.inputs)
            or getattr(rule, "field", None) in _DEAD_LETTER_FIELDS)


def cli_hint(rule: Rule, labels: Mapping[str, str], dead_letters: bool | None = None,
             ) -> str | None:
    """A command that shows what an alert of ``rule`` with ``labels`` is about."""
    queue = labels.get("queue")
    if not queue or queue == "unknown":
        return None
    if dead_letters if dead_letters is not None else about_dead_letters(rule):
        return f"stem-observe dlq list --queue {queue}"
    if "worker" in labels:
        return "stem-observe observe workers"
    return "stem-observe observe queues"


Changed = dict[int, Instance]
"""Instances whose state changed in a tick, by ``id``, in order of change."""


class RuleStates:
    """The pending and firing alerts of one rule (``instances``), with the subsets whose
    timers run (``pending``, ``clearing``) and those restored and not yet confirmed
    (``held``)."""

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator
        rule = self.rule = evaluator.rule
        self.static_labels: dict[str, str] = {"severity": rule.severity, **rule.labels}
        self.templates = tuple(rule.annotations.items())
        self.dead_letters = about_dead_letters(rule)
        self.instances: dict[Key, Instance] = {}
        self.pending: dict[Key, Instance] = {}
        self.clearing: dict[Key, Instance] = {}
        self.held: dict[Key, Instance] = {}

    def hold(self, instance: Instance) -> None:
        """Add a restored pending or firing alert, held until confirmed or cleared."""
        self.instances[instance.key] = instance
        self.held[instance.key] = instance

    def advance(self, scan: Scan, now: float, changed: Changed,
                fire: Callable[[Instance, float], None]) -> None:
        """Move the alerts by ``scan`` at ``now``; ``fire`` is called for each that fires."""
        breaching, instances = scan.breaching, self.instances
        keys = scan.changed
        if keys is None:
            keys = [*breaching, *(key for key in instances if key not in breaching)]
        for key in keys:
            reading = breaching.get(key)
            instance = instances.get(key)
            if reading is not None:
                if instance is None:
                    instance = instances[key] = self.pending[key] = Instance(
                        self, reading, now)
                    changed[id(instance)] = instance
                    continue
                if instance.reading is not reading:
                    instance.update(reading)
                if self.held.pop(key, None) is not None and instance.state == "pending":
                    self.pending[key] = instance
                if instance.cleared_at is not None:
                    instance.cleared_at = None
                    del self.clearing[key]
            elif instance is not None and key not in self.held:
                self._clear(instance, now, changed)
        if self.held:
            settled = self.evaluator.settled
            for instance in [i for k, i in self.held.items() if settled(k, now)]:
                del self.held[instance.key]
                self._clear(instance, now, changed)
        if self.pending:
            for_s = self.rule.for_s
            for instance in [i for i in self.pending.values() if now - i.active_at >= for_s]:
                del self.pending[instance.key]
                instance.move("firing", now)
                fire(instance, now)
                changed[id(instance)] = instance
        if self.clearing:
            keep_s = self.rule.keep_firing_for_s
            for instance in [i for i in self.clearing.values()
                             if i.cleared_at is not None and now - i.cleared_at >= keep_s]:
                del self.clearing[instance.key]
                del instances[instance.key]
                instance.move("resolved", now)
                changed[id(instance)] = instance

    def _clear(self, instance: Instance, now: float, changed: Changed) -> None:
        if instance.state == "pending":
            del self.instances[instance.key]
            self.pending.pop(instance.key, None)
            instance.move("inactive", now)
            changed[id(instance)] = instance
        elif instance.cleared_at is None:
            instance.cleared_at = now
            self.clearing[instance.key] = instance

    def counts(self) -> tuple[int, int]:
        """(pending, firing) alerts."""
        pending = len(self.pending) + sum(i.state == "pending" for i in self.held.values())
        return pending, len(self.instances) - pending
