"""The deadline transport's rules without a network: how much time each operation gets,
what an abort refuses, and which proxy a URL takes."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx
import pytest

from stem_observe.errors import ConfigError
from stem_observe.notify._transport import (
    Deadline,
    DeadlineBackend,
    DeadlineTransport,
    _bypassed,
    _proxy_for,
)


class Stream(httpcore.NetworkStream):
    """Records the timeout of each operation."""

    def __init__(self, timeouts: list[float | None]) -> None:
        self.timeouts = timeouts
        self.closed = False

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.timeouts.append(timeout)
        return b"x"

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.timeouts.append(timeout)

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, info: str) -> Any:
        return None


class Backend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self.timeouts: list[float | None] = []
        self.streams: list[Stream] = []

    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,
        local_address: str | None = None, socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        self.timeouts.append(timeout)
        self.streams.append(Stream(self.timeouts))
        return self.streams[-1]


def test_each_operation_gets_the_smaller_of_its_timeout_and_the_time_left() -> None:
    inner = Backend()
    backend = DeadlineBackend(inner)
    with backend.bounded(Deadline.after(30.0)):
        stream = backend.connect_tcp("example.invalid", 80, timeout=5.0)
        stream.read(10, timeout=60.0)
        stream.write(b"x" * 200_000, timeout=None)
    stream.read(10, timeout=60.0)  # no deadline outside a request
    connect, read, *writes, unbounded = inner.timeouts
    assert connect == 5.0
    assert read is not None
    assert 29.0 < read <= 30.0
    assert len(writes) == 4  # written in chunks, each with what is left
    assert all(w is not None and w <= 30.0 for w in writes)
    assert unbounded == 60.0
    assert backend.live_connections == 1
    stream.close()
    assert backend.live_connections == 0


def test_past_the_deadline_nothing_is_attempted() -> None:
    inner = Backend()
    backend = DeadlineBackend(inner)
    with (backend.bounded(Deadline(time.monotonic() - 0.1, 2.0)),
          pytest.raises(httpcore.ConnectTimeout, match="deadline of 2s passed")):
        backend.connect_tcp("example.invalid", 80, timeout=5.0)
    assert inner.timeouts == []


def test_after_an_abort_no_connection_is_made_and_reads_fail() -> None:
    inner = Backend()
    backend = DeadlineBackend(inner)
    stream = backend.connect_tcp("example.invalid", 80)
    backend.abort()
    with pytest.raises(httpcore.ReadError, match="aborted"):
        stream.read(10)
    with pytest.raises(httpcore.ConnectError, match="aborted"):
        backend.connect_tcp("example.invalid", 80)
    assert len(inner.streams) == 1


def test_a_closed_transport_refuses_requests() -> None:
    transport = DeadlineTransport(trust_env=False)
    transport.close()
    transport.close()  # idempotent
    with httpx.Client(transport=transport) as client, pytest.raises(httpx.ConnectError):
        client.get("http://127.0.0.1:9/")


@pytest.mark.parametrize(("host", "no_proxy", "bypassed"), [
    ("hooks.slack.com", "", False),
    ("hooks.slack.com", "*", True),
    ("hooks.slack.com", "slack.com", True),
    ("hooks.slack.com", " .slack.com ,other", True),
    ("slack.com", ".slack.com", True),
    ("notslack.com", "slack.com", False),
    ("hooks.slack.com", "hooks.slack.com:443", True),
    ("10.0.0.7", "10.0.0.7", True),
    ("::1", "[::1]", True),
    ("::1", "::2", False),
    ("events.pagerduty.com", "http://events.pagerduty.com", True),
])
def test_no_proxy_names_hosts_and_domains(host: str, no_proxy: str, bypassed: bool) -> None:
    assert _bypassed(host, no_proxy) is bypassed


def test_the_proxy_follows_the_scheme_then_all() -> None:
    proxies = {"https": "http://proxy:3128", "all": "http://fallback:3128", "no": "internal"}
    assert _proxy_for(httpx.URL("https://hooks.slack.com/x"), proxies) == "http://proxy:3128"
    assert _proxy_for(httpx.URL("http://am:9093/"), proxies) == "http://fallback:3128"
    assert _proxy_for(httpx.URL("http://am.internal:9093/"), proxies) is None
    assert _proxy_for(httpx.URL("https://hooks.slack.com/x"), {}) is None


def test_an_unusable_proxy_in_the_environment_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "ftp://proxy.example:21")
    with pytest.raises(ConfigError, match="HTTPS_PROXY"):
        DeadlineTransport()
    DeadlineTransport(trust_env=False).close()  # the environment is not read
