"""The Celery worker plugin (the ``celery`` extra).

In the module that defines your Celery app::

    import stem_observe.celery

    app = Celery("proj")
    app.steps["worker"].add(stem_observe.celery.StemObserveStep)   # workers only

or call ``stem_observe.celery.install(app)`` where the app is configured (workers and
producers alike: producers then inject trace context and a publish timestamp into the
messages they publish). ``install`` installs the bridge (:func:`stem_observe.install`,
with any of its keyword arguments) unless one is installed, and connects Celery's signals;
see :mod:`stem_observe.sources.celery` for what each becomes. Spans go to the global
tracer provider, the one passed as ``tracer_provider=``, or an OTLP endpoint
(``otlp_endpoint=`` / ``STEM_OBSERVE_OTLP_ENDPOINT``).

``fleet`` (default ``$STEM_OBSERVE_FLEET_REDIS``) is a Redis URL: every worker process then
forwards its events to that Redis for ``stem-observe serve`` to aggregate, so metrics of
all prefork children come from one place. The worker itself then records no task metrics
(``serve`` exports them for the fleet; pass ``metrics=True`` to keep them in the worker's
registry as well); its spans, log correlation and fleet drop counter stay.
``fleet_options`` go to each process's
:class:`~stem_observe.sinks.fleet.FleetForwarder` (``flush_interval_s``, ``batch_max``,
``queue_max``, ``maxlen``, ``stream`` …).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from opentelemetry import trace

import stem_observe
from stem_observe.bridge import Bridge
from stem_observe.errors import ConfigError
from stem_observe.sources.celery import PUBLISHED_AT, RECEIVED_AT, CeleryPlugin

if TYPE_CHECKING:
    from stem_observe.sinks.fleet import FleetForwarder

try:
    from celery import bootsteps
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "stem_observe.celery needs Celery: pip install 'stem-observe[celery]'"
    ) from exc

__all__ = [
    "PUBLISHED_AT",
    "RECEIVED_AT",
    "StemObserveStep",
    "fleet_forwarder",
    "install",
    "installed_plugin",
    "uninstall",
]

logger = logging.getLogger("stem_observe.celery")

FLEET_ENV = "STEM_OBSERVE_FLEET_REDIS"


class _Installation:
    """What ``install`` set up in this process (one per process)."""

    def __init__(self, plugin: CeleryPlugin, bridge: Bridge, owns_bridge: bool,
                 tracer_provider: Any, fleet_url: str | None, *,
                 fleet_options: Mapping[str, Any]) -> None:
        self.plugin = plugin
        self.bridge = bridge
        self.owns_bridge = owns_bridge
        self.tracer_provider = tracer_provider
        self.fleet_url = fleet_url
        self.fleet_options = dict(fleet_options)
        self.fleet: FleetForwarder | None = None
        self.apps: list[Any] = []

    def start_fleet(self) -> None:
        if self.fleet_url is None:
            return
        from stem_observe.sinks.fleet import FleetForwarder

        try:
            fleet = FleetForwarder(self.fleet_url, **self.fleet_options)
        except TypeError as exc:  # an option FleetForwarder does not take
            raise ConfigError("fleet_options", str(exc)) from None
        self.fleet = fleet.start()

    def child_init(self) -> None:
        """In a freshly forked pool child: forwarding of its own."""
        self._child_fleet()
        self.name_fleet(self.plugin.hostname)

    def _child_fleet(self) -> None:
        inherited = self.fleet
        if inherited is None:
            self.start_fleet()
            return
        after_fork = getattr(inherited, "after_fork", None)
        if callable(after_fork):  # re-creates its thread and connection; idempotent
            after_fork()
            return
        self.fleet = None
        try:  # the parent's forwarder: its thread did not survive the fork
            inherited.close()
        except Exception:
            logger.warning("closing the inherited fleet forwarder failed", exc_info=True)
        self.start_fleet()

    def name_fleet(self, hostname: str | None) -> None:
        """Drop reports name the worker's node (``celery@host``), as its other metrics do,
        unless ``fleet_options`` named it."""
        if self.fleet is not None and hostname and "worker" not in self.fleet_options:
            self.fleet.worker = hostname

    def flush(self, timeout_s: float) -> None:
        try:
            self.bridge.flush(timeout_s)
            provider = self.tracer_provider or trace.get_tracer_provider()
            force_flush = getattr(provider, "force_flush", None)
            if force_flush is not None:
                force_flush(int(timeout_s * 1000))
        except Exception:
            logger.warning("flushing spans failed", exc_info=True)
        if self.fleet is not None:
            try:
                self.fleet.flush(timeout_s)
            except Exception:
                logger.warning("flushing the fleet forwarder failed", exc_info=True)


_installation: _Installation | None = None
_lock = threading.Lock()


def install(app: Any, *, fleet: str | None = None, heartbeat_interval_s: float | None = None,
            fleet_options: Mapping[str, Any] | None = None, **bridge_options: Any) -> Bridge:
    """Observe ``app``'s tasks and workers; idempotent. Returns the bridge.

    ``bridge_options`` go to :func:`stem_observe.install` when the bridge is not installed
    yet (``registry=``, ``tracer_provider=``, ``metrics_profile="celery-exporter"`` …);
    with a bridge already installed they must match it. ``heartbeat_interval_s`` is how
    often the worker's main process sends ``worker-heartbeat`` (default: the bridge's
    ``worker_heartbeat_interval_s``; 0 turns the plugin's own heartbeats off).
    """
    global _installation  # noqa: PLW0603 - one installation per process
    fleet_url = fleet if fleet is not None else os.environ.get(FLEET_ENV) or None
    if fleet_options and fleet_url is None:
        raise ConfigError("fleet_options", f"given without fleet= (or ${FLEET_ENV})")
    if fleet_url is not None and not fleet_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("fleet", f"expected a redis:// URL, got {fleet_url.split('@')[-1]!r}")
    with _lock:
        if _installation is not None:
            if fleet is not None and fleet_url != _installation.fleet_url:
                raise ConfigError("fleet", "the Celery plugin is already installed with "
                                  "another fleet setting; call uninstall() first")
            if fleet_options is not None and dict(fleet_options) != _installation.fleet_options:
                raise ConfigError("fleet_options", "the Celery plugin is already installed "
                                  "with other fleet options; call uninstall() first")
            if bridge_options:  # same arguments return the installed bridge; others raise
                options = bridge_options
                if _installation.owns_bridge:
                    options = _resolve_bridge_options(bridge_options, _installation.fleet_url)
                stem_observe.install(**options)
            if app is not None and app not in _installation.apps:
                _installation.apps.append(app)
            return _installation.bridge
        if fleet_url is not None:
            try:
                importlib.import_module("stem_observe.sinks.fleet")
            except ImportError as exc:
                raise ConfigError("fleet", "fleet forwarding is not available in this "
                                  "version of stem-observe") from exc
        existing = stem_observe.installed()
        owns = existing is None
        if existing is None:
            bridge = stem_observe.install(**_resolve_bridge_options(bridge_options, fleet_url))
        elif bridge_options:  # must match the installed bridge (else this raises)
            bridge = stem_observe.install(**bridge_options)
        else:
            bridge = existing
        interval = (heartbeat_interval_s if heartbeat_interval_s is not None
                    else bridge.settings.worker_heartbeat_interval_s)
        installation = _Installation(
            CeleryPlugin(heartbeat_interval_s=interval), bridge, owns,
            bridge_options.get("tracer_provider"), fleet_url, fleet_options=fleet_options or {},
        )
        plugin = installation.plugin
        plugin._flush = installation.flush
        plugin._child_init = installation.child_init
        plugin.connect()
        try:
            installation.start_fleet()
        except Exception:
            plugin.disconnect()
            if owns:
                stem_observe.uninstall()
            raise
        if app is not None:
            installation.apps.append(app)
        _installation = installation
        return bridge


def _resolve_bridge_options(options: dict[str, Any], fleet_url: str | None) -> dict[str, Any]:
    resolved = dict(options)
    if fleet_url is not None:
        # serve counts the fleet's tasks from the forwarded events; a worker counting them
        # too is work nobody scrapes (prefork children) or counted twice (scraped beside serve)
        resolved.setdefault("metrics", False)
    if ("messaging_system" not in resolved and "settings" not in resolved
            and "STEM_OBSERVE_MESSAGING_SYSTEM" not in os.environ):
        resolved["messaging_system"] = "celery"
    return resolved


def uninstall() -> None:
    """Disconnect from Celery's signals, close fleet forwarding and, if ``install`` installed
    the bridge, uninstall it too."""
    global _installation
    with _lock:
        installation, _installation = _installation, None
    if installation is None:
        return
    installation.plugin.disconnect()
    if installation.fleet is not None:
        try:
            installation.fleet.close()
        except Exception:
            logger.warning("closing the fleet forwarder failed", exc_info=True)
    if installation.owns_bridge:
        stem_observe.uninstall()


def installed_plugin() -> CeleryPlugin | None:
    """The plugin connected in this process, if any."""
    installation = _installation
    return installation.plugin if installation is not None else None


def fleet_forwarder() -> FleetForwarder | None:
    """This process's fleet forwarder, if the plugin forwards (its ``forwarded``,
    ``dropped`` and ``flush`` tell how forwarding goes)."""
    installation = _installation
    return installation.fleet if installation is not None else None


class StemObserveStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """A worker bootstep that calls :func:`install` as the worker starts.

    ``app.steps["worker"].add(StemObserveStep)``; for options,
    ``app.steps["worker"].add(StemObserveStep.with_options(metrics_profile="celery-exporter"))``.
    """

    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        install(parent.app, **self.options)
        plugin = installed_plugin()
        hostname = getattr(parent, "hostname", None)
        if plugin is not None and isinstance(hostname, str):
            plugin.hostname = hostname
            installation = _installation
            if installation is not None:
                installation.name_fleet(hostname)

    @classmethod
    def with_options(cls, **options: Any) -> type[StemObserveStep]:
        """A subclass whose ``install`` call gets ``options``."""
        return type("StemObserveStep", (cls,), {"options": dict(options)})
