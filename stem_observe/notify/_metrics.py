"""The notify package's self-metrics, defined once per registry."""

from __future__ import annotations

import threading
import weakref
from typing import ClassVar, Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["OUTCOMES", "NotifyMetrics", "Outcome"]

Outcome = Literal["sent", "retried", "rate_limited", "failed", "dead_lettered", "handed_back"]
OUTCOMES: Final[tuple[Outcome, ...]] = (
    "sent", "retried", "rate_limited", "failed", "dead_lettered", "handed_back",
)

_LATENCY_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class NotifyMetrics:
    """``stem_observe_notifications_total{receiver,outcome}``,
    ``stem_observe_notification_latency_seconds{receiver}``,
    ``stem_observe_notification_queue_depth{receiver}`` and
    ``stem_observe_notifications_dropped_total{receiver}``.

    Use :meth:`for_registry`: a registry accepts each name once, so every delivery policy and
    dispatcher on one registry shares one instance.
    """

    _instances: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, NotifyMetrics]] = (
        weakref.WeakKeyDictionary()
    )
    _lock: ClassVar = threading.Lock()

    def __init__(self, registry: CollectorRegistry) -> None:
        self.notifications = Counter(
            "stem_observe_notifications",
            "Notification deliveries by receiver and outcome: sent, retried (an attempt "
            "failed and another follows), rate_limited (the receiver answered 429), failed "
            "(given up), dead_lettered (handed to the dead-letter handler) and handed_back "
            "(stopped unfinished at shutdown and given back to the shared outbox).",
            ["receiver", "outcome"], registry=registry,
        )
        self.latency = Histogram(
            "stem_observe_notification_latency_seconds",
            "Seconds from hand-over to a successful delivery, retries and waits included.",
            ["receiver"], registry=registry, buckets=_LATENCY_BUCKETS,
        )
        self.queue_depth = Gauge(
            "stem_observe_notification_queue_depth",
            "Notifications waiting for a receiver's delivery thread.",
            ["receiver"], registry=registry,
        )
        self.dropped = Counter(
            "stem_observe_notifications_dropped",
            "Notifications dropped because a receiver's queue was full.",
            ["receiver"], registry=registry,
        )

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> NotifyMetrics:
        with cls._lock:
            metrics = cls._instances.get(registry)
            if metrics is None:
                metrics = cls._instances[registry] = cls(registry)
            return metrics

    def declare(self, receiver: str) -> None:
        """Create ``receiver``'s series at zero so dashboards see them before any event."""
        for outcome in OUTCOMES:
            self.notifications.labels(receiver, outcome)
        self.latency.labels(receiver)
        self.queue_depth.labels(receiver)
        self.dropped.labels(receiver)

    def count(self, receiver: str, outcome: Outcome) -> None:
        self.notifications.labels(receiver, outcome).inc()
