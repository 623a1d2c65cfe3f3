"""Connecting the sinks to the signals: ``install()`` / ``uninstall()``.

For each signal the bridge connects one receiver that calls the enabled sinks in a fixed
order: tracing first (it opens or ends the span and yields its trace id), then metrics
(which put that trace id in exemplars), then logs. Around them it keeps the scope of the
in-process task (``sinks/_scopes.py``): opened before the sinks see ``task-prerun``,
closed after they saw ``task-postrun``; the span is made current and log fields are read
within it. Each sink is guarded: an exception in
one is counted and logged (rate-limited) and never reaches the task or the other sinks.

Events sent by :data:`FORWARDED_SENDER` (re-emitted from the fleet stream) were traced in
the worker that produced them: tracing skips them, and metrics read the trace id from the
event's ``traceparent`` instead.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, Final

from opentelemetry.trace import TracerProvider
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from stem_observe import signals
from stem_observe.config import Settings
from stem_observe.errors import ConfigError, StemObserveError
from stem_observe.sinks._scopes import SCOPE_HOOKS, TASKS
from stem_observe.sinks.logs import LogsSink
from stem_observe.sinks.metrics import MetricsSink
from stem_observe.sinks.tracing import TracingSink

__all__ = ["FORWARDED_SENDER", "Bridge", "install", "installed", "uninstall"]

logger = logging.getLogger("stem_observe.bridge")

_TraceHandler = Callable[[Any], str | None]
_MetricsHandler = Callable[[Any, str | None], None]
_LogsHandler = Callable[[Any], None]

#: The sender of events forwarded from other processes, which traced them already.
FORWARDED_SENDER: Final = "fleet"


def _fanout(
    signal_name: str,
    tracing: _TraceHandler | None,
    metrics: _MetricsHandler | None,
    logs: _LogsHandler | None,
    *,
    before: Callable[[Any], None] | None = None,
    after: Callable[[Any], None] | None = None,
) -> Callable[..., None]:
    fail = signals._receiver_failed
    forwarded = FORWARDED_SENDER

    def receive(sender: object, *, event: Any) -> None:
        if before is not None:
            try:
                before(event)
            except Exception:
                fail(signal_name, before)
        trace_id = None
        if tracing is not None and sender != forwarded:
            try:
                trace_id = tracing(event)
            except Exception:
                fail(signal_name, tracing)
        if metrics is not None:
            try:
                metrics(event, trace_id)
            except Exception:
                fail(signal_name, metrics)
        if logs is not None:
            try:
                logs(event)
            except Exception:
                fail(signal_name, logs)
        if after is not None:
            try:
                after(event)
            except Exception:
                fail(signal_name, after)

    receive.__qualname__ = f"stem_observe.bridge[{signal_name}]"
    return receive


def _export_failures() -> int:
    """Spans the OTLP exporter of a bridge-built tracer provider failed to deliver."""
    import sys

    otlp = sys.modules.get("stem_observe._otlp")
    return int(otlp.CountingExporter.failed_total) if otlp else 0


class _SelfCollector(Collector):
    """The bridge's own health: receiver errors and spans ended early."""

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        errors = CounterMetricFamily(
            "stem_observe_receiver_errors",
            "Exceptions raised by signal receivers; the sending task was not affected.",
            labels=["signal"],
        )
        for name, count in sorted(signals.receiver_errors.items()):
            errors.add_metric([name], count)
        yield errors
        tracing = self._bridge.tracing
        if tracing is not None:
            evicted = CounterMetricFamily(
                "stem_observe_spans_dropped",
                "Spans the bridge ended early or could not record, by reason.",
                labels=["reason"],
            )
            evicted.add_metric(["open_span_limit"], tracing.evicted)
            evicted.add_metric(["late_outcome"], tracing.late_outcomes)
            evicted.add_metric(["export_failed"], _export_failures())
            yield evicted
            open_spans = GaugeMetricFamily(
                "stem_observe_open_spans", "Task spans started and not yet ended."
            )
            open_spans.add_metric([], tracing.open_spans())
            yield open_spans


class Bridge:
    """The enabled sinks and their receivers. Build with :func:`install`."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: MetricsSink | None,
        tracing: TracingSink | None,
        logs: LogsSink | None,
        owned_provider: Any = None,
        log_record_factory: bool = True,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.tracing = tracing
        self.logs = logs
        self._owned_provider = owned_provider
        self._log_record_factory = log_record_factory
        self._receivers: list[tuple[Any, Callable[..., None]]] = []
        self._collector: _SelfCollector | None = None

    def connect(self) -> None:
        trace_h = self.tracing.handlers() if self.tracing else {}
        metric_h = self.metrics.handlers() if self.metrics else {}
        log_h = self.logs.handlers() if self.logs else {}
        # The in-process task's scope (current span, log fields) matters to tracing and logs.
        scoped = self.tracing is not None or self.logs is not None
        for event_type, sig in signals.SIGNALS.items():
            t, m, lg = trace_h.get(event_type), metric_h.get(event_type), log_h.get(event_type)
            before, after = SCOPE_HOOKS.get(event_type, (None, None)) if scoped else (None, None)
            if t is None and m is None and lg is None and before is None and after is None:
                continue
            receiver = _fanout(sig.name, t, m, lg, before=before, after=after)
            sig.connect(receiver, weak=False)
            self._receivers.append((sig, receiver))
        if self.metrics is not None:
            self._collector = _SelfCollector(self)
            self.metrics.registry.register(self._collector)
        if self.logs is not None and self._log_record_factory:
            self.logs.install_record_factory()

    def disconnect(self) -> None:
        for sig, receiver in self._receivers:
            sig.disconnect(receiver)
        self._receivers.clear()
        if self.logs is not None:
            self.logs.uninstall_record_factory()
        TASKS.clear()
        if self.tracing is not None:
            self.tracing.close()
        if self.metrics is not None:
            if self._collector is not None:
                self.metrics.registry.unregister(self._collector)
                self._collector = None
            self.metrics.close()
        if self._owned_provider is not None:
            self._owned_provider.shutdown()

    def after_fork(self) -> None:
        if self.metrics is not None:
            self.metrics.after_fork()
        if self.tracing is not None:
            self.tracing.after_fork()
        TASKS.reset_after_fork()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Export what the bridge's own tracer provider holds (no-op for an injected one)."""
        if self._owned_provider is None:
            return True
        return bool(self._owned_provider.force_flush(int(timeout_s * 1000)))


_installed: Bridge | None = None
_installed_args: tuple[Any, ...] | None = None
_install_lock = threading.Lock()


def install(
    *,
    metrics: bool = True,
    tracing: bool = True,
    logs: bool = True,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
    settings: Settings | None = None,
    log_record_factory: bool = True,
    **overrides: Any,
) -> Bridge:
    """Connect the chosen sinks to the signals and return the bridge.

    Idempotent: calling it again with the same arguments returns the installed bridge;
    with different ones it raises :class:`StemObserveError` (call :func:`uninstall` first).
    ``overrides`` are :class:`Settings` fields (``metrics_profile="celery-exporter"`` …),
    applied over ``STEM_OBSERVE_*`` environment variables. Without ``tracer_provider`` the
    global provider is used, unless ``otlp_endpoint`` is set: then the bridge builds a
    provider that exports there (the ``otlp`` extra) and shuts it down at uninstall.
    ``log_record_factory=False`` leaves the logging record factory alone: add
    :class:`~stem_observe.TaskContextFilter` to your handlers instead.
    """
    global _installed, _installed_args
    if settings is not None and overrides:
        raise ConfigError(
            next(iter(overrides)), "pass settings either as Settings or as keywords, not both"
        )
    args = (metrics, tracing, logs, id(registry or REGISTRY), id(tracer_provider), settings,
            log_record_factory, tuple(sorted(overrides.items())))
    with _install_lock:
        if _installed is not None:
            if args == _installed_args:
                return _installed
            raise StemObserveError(
                "stem_observe is already installed with other arguments; call uninstall() first"
            )
        resolved = settings if settings is not None else Settings.resolve(**overrides)
        owned = None
        if tracing and tracer_provider is None and resolved.otlp_endpoint:
            from stem_observe._otlp import build_tracer_provider

            owned = tracer_provider = build_tracer_provider(resolved)
        bridge = Bridge(
            resolved,
            metrics=MetricsSink(resolved, registry=registry or REGISTRY) if metrics else None,
            tracing=TracingSink(resolved, tracer_provider=tracer_provider) if tracing else None,
            logs=LogsSink() if logs else None,
            owned_provider=owned,
            log_record_factory=log_record_factory,
        )
        bridge.connect()
        _installed, _installed_args = bridge, args
        return bridge


def uninstall() -> None:
    """Disconnect the installed bridge, unregister its metrics and restore logging."""
    global _installed, _installed_args
    with _install_lock:
        bridge, _installed, _installed_args = _installed, None, None
    if bridge is not None:
        bridge.disconnect()


def installed() -> Bridge | None:
    """The installed bridge, if any."""
    return _installed


def _after_fork_in_child() -> None:
    global _install_lock  # noqa: PLW0603 - a lock held at fork time must be replaced
    _install_lock = threading.Lock()
    if _installed is not None:
        _installed.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
