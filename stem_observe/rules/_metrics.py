"""The rules engine's own metrics, defined once per registry."""

from __future__ import annotations

import threading
import weakref
from typing import ClassVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stem_observe.rules._restore import OUTCOMES

__all__ = ["EngineMetrics"]


class EngineMetrics:
    """``stem_observe_rule_evaluation_seconds``, ``stem_observe_alerts{state}``,
    ``stem_observe_rule_errors_total{stage}`` and
    ``stem_observe_alert_states_restored_total{outcome}``, defined once per registry."""

    _instances: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, EngineMetrics]] = (
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
            "(counting an event), evaluate (a rule or its windows), store, dispatch.", ["stage"],
            registry=registry)
        for stage in ("observe", "evaluate", "store", "dispatch"):
            self.errors.labels(stage)
        self.restored = Counter(
            "stem_observe_alert_states_restored", "Saved alert states read when an engine "
            "started, by outcome: restored, or skipped as unknown_rule (no such rule any "
            "more), malformed (a bad state, time or label) or duplicate.", ["outcome"],
            registry=registry)
        for outcome in OUTCOMES:
            self.restored.labels(outcome)

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> EngineMetrics:
        with cls._lock:
            found = cls._instances.get(registry)
            if found is None:
                found = cls._instances[registry] = cls(registry)
            return found
