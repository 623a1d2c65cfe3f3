"""Alerts brought back from a saved snapshot (:meth:`Store.load_states
<stem_observe.rules.store.Store.load_states>`) when an engine starts.

A saved pending or firing alert comes back *held* (see :mod:`._instances`) with its
``active_at``, ``fired_at`` and ``since``, so a ``for`` timer continues and a firing alert
keeps its start; a saved resolved alert (resolved, its notification not yet flushed) comes
back for the engine to flush. What cannot come back is skipped and counted by reason:

* ``unknown_rule`` — no rule of that name any more;
* ``malformed`` — not a known state, times that are not finite numbers, labels that are not
  text, an ``alertname`` that is not the rule's, or a label of the rule's ``group_by``
  (or a poison pill's ``fingerprint``) missing;
* ``duplicate`` — a second state for the same rule and label set.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Final

from stem_observe.notify.model import TaskSample
from stem_observe.rules._evaluate import Breach
from stem_observe.rules._instances import Instance, RuleStates

if TYPE_CHECKING:
    from stem_observe.rules.engine import AlertState

__all__ = ["OUTCOMES", "restore"]

OUTCOMES: Final = ("restored", "unknown_rule", "malformed", "duplicate")


def _time(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _number(value: object) -> float | None:
    return None if value is None else _time(value)


def _text_labels(labels: object) -> Mapping[str, str] | None:
    if not isinstance(labels, Mapping):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        return None
    return labels


def _instance(state: AlertState, rules: Mapping[str, RuleStates]) -> Instance | str:
    """The instance ``state`` describes, or why there is none."""
    found = rules.get(state.name) if isinstance(state.name, str) else None
    if found is None:
        return "unknown_rule"
    evaluator = found.evaluator
    labels = _text_labels(state.labels)
    active_at, since = _time(state.active_at), _time(state.since)
    fired_at, resolved_at = _number(state.fired_at), _number(state.resolved_at)
    if (labels is None or labels.get("alertname", state.name) != state.name
            or state.state not in ("pending", "firing", "resolved")
            or active_at is None or since is None
            or (state.fired_at is not None and fired_at is None)
            or (state.resolved_at is not None and resolved_at is None)
            or (state.state != "pending" and fired_at is None)
            or (state.state == "resolved" and resolved_at is None)):
        return "malformed"
    key = evaluator.key_of(labels)
    if key is None:
        return "malformed"
    samples = tuple(s for s in state.samples if isinstance(s, TaskSample))
    value = _number(state.value)
    reading = Breach(key, 0.0 if value is None else value, _number(state.threshold),
                     _number(state.baseline), at=since, labels=evaluator.labels(key),
                     values={}, samples=samples)
    instance = Instance(found, reading, active_at)
    instance.state, instance.since = state.state, since
    instance.fired_at, instance.resolved_at = fired_at, resolved_at
    instance.announced = state.state != "pending"  # a receiver may have heard of it
    instance.silenced_by = tuple(s for s in state.silenced_by if isinstance(s, str))
    instance.inhibited = state.inhibited is True
    annotations = _text_labels(state.annotations)
    if annotations is not None:
        instance.restored(annotations)
    return instance


def restore(states: Iterable[AlertState], rules: Mapping[str, RuleStates],
            ) -> tuple[list[Instance], Counter[str]]:
    """Hold each saved pending or firing alert in its rule's states; return every instance
    restored (resolved ones included, for the engine's groups) and the count per outcome."""
    outcomes: Counter[str] = Counter()
    restored: list[Instance] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for state in states:
        try:
            found = _instance(state, rules)
        except Exception:  # whatever a store handed back, a bad state must not stop a start
            found = "malformed"
        if isinstance(found, str):
            outcomes[found] += 1
            continue
        if (found.rule.name, found.key) in seen:
            outcomes["duplicate"] += 1
            continue
        seen.add((found.rule.name, found.key))
        if found.state != "resolved":
            states_of = rules[found.rule.name]
            states_of.hold(found)
            states_of.evaluator.seed(found.key, found.active_at)
        restored.append(found)
        outcomes["restored"] += 1
    return restored, outcomes
