"""Fixtures shared by the suite: a real Redis server and an installed bridge."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import stem_observe
from tests.support.redis_server import RedisServer

# Property tests judge behaviour, not speed: on a loaded 2-vCPU machine neither a slow
# example nor slow input generation is a failure.
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")

# A suite started in the background (``cmd &`` without job control) inherits an ignored
# SIGINT, and every command it starts would too: tests that stop the demo with Ctrl-C would
# wait for its end instead. A Python handler here is reset to the default in each child.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One ``redis-server`` per session on a free port; tests may stop/restart it."""
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL, running and empty."""
    redis_server.start()
    assert redis_server.command("FLUSHALL") == b"+OK"
    return redis_server.url


@dataclass
class Installed:
    bridge: stem_observe.Bridge
    registry: CollectorRegistry
    spans: InMemorySpanExporter
    provider: TracerProvider

    def value(self, name: str, **labels: str) -> float:
        """A sample's value, 0 when the series does not exist."""
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def installed() -> Iterator[Installed]:
    """The bridge installed with its own registry and an in-memory span exporter."""
    registry = CollectorRegistry()
    provider = TracerProvider()
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    bridge = stem_observe.install(registry=registry, tracer_provider=provider)
    try:
        yield Installed(bridge, registry, spans, provider)
    finally:
        stem_observe.uninstall()
        provider.shutdown()
