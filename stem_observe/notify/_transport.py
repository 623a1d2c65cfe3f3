"""The HTTP transport of the receivers: a total deadline per request, and requests in flight
that another thread can abort.

httpx's timeouts bound each socket operation, so a server that sends one byte every few
seconds (in the status line, the headers or the body) keeps a request running forever.
:class:`DeadlineTransport` runs httpcore's connection pool on a :class:`DeadlineBackend`,
which wraps the default network backend and lets every connect, TLS handshake, read and
write wait at most ``min(operation timeout, time left before the request's deadline)``. A
request states its deadline in the extension :data:`DEADLINE_EXTENSION` (seconds for the
whole request: connect, send, status and headers, body), counted from when the transport
receives it; past it, the request fails with an :class:`httpx.TimeoutException`.

:meth:`DeadlineTransport.close` may be called from another thread while a request runs: it
shuts the live sockets down first, so the request fails at once (an
:class:`httpx.TransportError`) instead of waiting for its deadline, and no new connection
is made afterwards.

Proxies are taken from the environment as httpx's own transport takes them
(``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``; SOCKS needs ``socksio``),
unless ``trust_env`` is false. Not bounded by the deadline: resolving the host name (the
system resolver blocks; its own timeouts apply).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import httpcore
import httpx

from stem_observe.errors import ConfigError

__all__ = ["DEADLINE_EXTENSION", "Deadline", "DeadlineBackend", "DeadlineTransport"]

DEADLINE_EXTENSION: Final = "stem_observe.deadline_s"
"""The request extension holding the request's total time limit in seconds."""

WRITE_CHUNK: Final = 64 * 1024
"""Bytes written per operation, so a slowly read body also meets the deadline."""

_ABORTED: Final = "the connection was aborted: its client is closing"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Deadline:
    """When a request must be over: ``at`` on ``time.monotonic()``, ``seconds`` after it
    started."""

    at: float
    seconds: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds, seconds)

    def left(self) -> float:
        return self.at - time.monotonic()

    @property
    def message(self) -> str:
        return f"the request's deadline of {self.seconds:g}s passed"


class DeadlineBackend(httpcore.NetworkBackend):
    """A network backend (``inner``, by default httpcore's synchronous one) whose operations
    end by the deadline of the request that the calling thread runs, and whose live
    connections :meth:`abort` shuts down.

    httpcore's synchronous pool does a request's I/O on the thread that sends it, so the
    deadline is kept per thread (:meth:`bounded`). Thread-safe.
    """

    def __init__(self, inner: httpcore.NetworkBackend | None = None) -> None:
        self._inner = inner if inner is not None else httpcore.SyncBackend()
        self._local = threading.local()
        self._live: set[DeadlineStream] = set()
        self._lock = threading.Lock()
        self._aborted = False

    @property
    def live_connections(self) -> int:
        """Connections opened and not yet closed."""
        with self._lock:
            return len(self._live)

    @property
    def aborted(self) -> bool:
        return self._aborted

    @contextlib.contextmanager
    def bounded(self, deadline: Deadline | None) -> Iterator[None]:
        """Operations on this thread end by ``deadline`` (``None``: no total limit)."""
        previous = getattr(self._local, "deadline", None)
        self._local.deadline = deadline
        try:
            yield
        finally:
            self._local.deadline = previous

    def abort(self) -> None:
        """Shut every live connection down (a thread blocked on one wakes up and fails) and
        refuse new ones. Callable from any thread; the connections are still closed by
        their owner."""
        with self._lock:
            self._aborted = True
            live = list(self._live)
        for stream in live:
            stream.shutdown()

    def run(
        self, operation: Callable[[float | None], T], timeout: float | None, *,
        expired: type[httpcore.TimeoutException], failed: type[httpcore.NetworkError],
    ) -> T:
        """``operation(timeout)`` with ``timeout`` cut to what is left of the deadline;
        ``expired`` once it has passed, ``failed`` once aborted."""
        if self._aborted:
            raise failed(_ABORTED)
        deadline: Deadline | None = getattr(self._local, "deadline", None)
        if deadline is not None:
            left = deadline.left()
            if left <= 0:
                raise expired(deadline.message)
            timeout = left if timeout is None else min(timeout, left)
        try:
            return operation(timeout)
        except httpcore.TimeoutException:
            if deadline is not None and deadline.left() <= 0:
                raise expired(deadline.message) from None
            raise
        except httpcore.NetworkError:
            if self._aborted:
                raise failed(_ABORTED) from None
            raise

    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,
        local_address: str | None = None, socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        inner = self.run(
            lambda left: self._inner.connect_tcp(
                host, port, timeout=left, local_address=local_address,
                socket_options=socket_options),
            timeout, expired=httpcore.ConnectTimeout, failed=httpcore.ConnectError)
        return self.track(inner)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        inner = self.run(
            lambda left: self._inner.connect_unix_socket(
                path, timeout=left, socket_options=socket_options),
            timeout, expired=httpcore.ConnectTimeout, failed=httpcore.ConnectError)
        return self.track(inner)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)

    def track(self, inner: httpcore.NetworkStream) -> DeadlineStream:
        """Wrap and register a new connection; close it at once if aborted meanwhile."""
        stream = DeadlineStream(inner, self)
        with self._lock:
            if not self._aborted:
                self._live.add(stream)
                return stream
        inner.close()
        raise httpcore.ConnectError(_ABORTED)

    def forget(self, stream: DeadlineStream) -> None:
        with self._lock:
            self._live.discard(stream)


class DeadlineStream(httpcore.NetworkStream):
    """One connection of a :class:`DeadlineBackend`."""

    def __init__(self, inner: httpcore.NetworkStream, backend: DeadlineBackend) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._backend.run(functools.partial(self._inner.read, max_bytes), timeout,
                                 expired=httpcore.ReadTimeout, failed=httpcore.ReadError)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        for start in range(0, len(buffer), WRITE_CHUNK):
            chunk = buffer[start:start + WRITE_CHUNK]
            self._backend.run(functools.partial(self._inner.write, chunk), timeout,
                              expired=httpcore.WriteTimeout, failed=httpcore.WriteError)

    def close(self) -> None:
        self._backend.forget(self)
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        # The handshake is one operation: CPython bounds it by the socket timeout in total.
        try:
            inner = self._backend.run(
                lambda left: self._inner.start_tls(ssl_context, server_hostname, left),
                timeout, expired=httpcore.ConnectTimeout, failed=httpcore.ConnectError)
        except BaseException:
            self.close()
            raise
        self._backend.forget(self)  # the TLS stream now owns the socket
        return self._backend.track(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    def shutdown(self) -> None:
        """Wake up whoever waits on the socket; closing stays with the owner."""
        sock = self._inner.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                # socket.socket's own method: SSLSocket.shutdown would also drop its TLS
                # state under a thread that may be reading it.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


_ERRORS: Final[tuple[tuple[type[Exception], type[httpx.TransportError]], ...]] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)
"""httpcore's errors as httpx's, the most specific first."""


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for source, target in _ERRORS:
            if isinstance(exc, source):
                raise target(str(exc)) from exc
        raise


class _ResponseStream(httpx.SyncByteStream):
    """The body, read under the request's deadline."""

    def __init__(self, stream: Iterable[bytes], backend: DeadlineBackend,
                 deadline: Deadline | None) -> None:
        self._stream = stream
        self._backend = backend
        self._deadline = deadline

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self._stream)
        while True:
            with self._backend.bounded(self._deadline), _translated():
                chunk = next(chunks, None)
            if chunk is None:
                return
            yield chunk

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if callable(close):
            with _translated():
                close()


def _environment_proxies() -> dict[str, str]:
    """``{scheme: proxy URL}`` (and ``"no"``) from the environment, each URL validated."""
    found = {key: value for key, value in urllib.request.getproxies().items() if value}
    for scheme in ("http", "https", "all"):
        if scheme not in found:
            continue
        url = found[scheme] if "://" in found[scheme] else f"http://{found[scheme]}"
        key = f"{scheme.upper()}_PROXY"
        try:
            proxy = httpx.Proxy(url)
        except (ValueError, httpx.InvalidURL) as exc:
            raise ConfigError(key, f"not a usable proxy URL: {exc}") from None
        if proxy.url.scheme.startswith("socks") and importlib.util.find_spec("socksio") is None:
            raise ConfigError(key, "a SOCKS proxy needs the socksio package "
                                   "(pip install 'httpx[socks]')")
        found[scheme] = url
    return found


def _bypassed(host: str, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` names ``host``: ``*``, the host itself, or a domain above it
    (``example.com`` and ``.example.com`` both cover ``www.example.com``)."""
    host = host.lower().strip("[]")
    for entry in no_proxy.split(","):
        name = entry.strip().lower().split("://", 1)[-1]
        if name.count(":") == 1:  # host:port (an IPv6 address has more colons)
            name = name.split(":", 1)[0]
        name = name.strip("[]").lstrip(".")
        if name == "*" or (name and (host == name or host.endswith("." + name))):
            return True
    return False


def _proxy_for(url: httpx.URL, proxies: dict[str, str]) -> str | None:
    """The proxy URL for ``url`` under ``proxies`` (as :func:`urllib.request.getproxies`
    gives them), or ``None`` to connect directly."""
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy or _bypassed(url.host, proxies.get("no", "")):
        return None
    return proxy


class DeadlineTransport(httpx.BaseTransport):
    """An :class:`httpx.HTTPTransport` equivalent (HTTP/1.1, ``verify``, ``limits``,
    environment proxies) whose requests honour :data:`DEADLINE_EXTENSION` and whose
    :meth:`close` aborts requests in flight. ``backend`` is the network backend wrapped."""

    def __init__(
        self, *, verify: ssl.SSLContext | bool = True, trust_env: bool = True,
        limits: httpx.Limits | None = None, backend: httpcore.NetworkBackend | None = None,
    ) -> None:
        self.backend = DeadlineBackend(backend)
        self._verify = verify
        self._trust_env = trust_env
        self._limits = limits or httpx.Limits(max_connections=100,
                                              max_keepalive_connections=20,
                                              keepalive_expiry=5.0)
        self._proxies = _environment_proxies() if trust_env else {}
        self._ssl_context: ssl.SSLContext | None = None
        self._pools: dict[str | None, httpcore.ConnectionPool] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def live_connections(self) -> int:
        """Open connections, idle ones in the pool included."""
        return self.backend.live_connections

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        seconds = request.extensions.get(DEADLINE_EXTENSION)
        deadline = None if seconds is None else Deadline.after(seconds)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host,
                             port=request.url.port, target=request.url.raw_path),
            headers=request.headers.raw, content=request.stream,
            extensions=request.extensions)
        with self.backend.bounded(deadline), _translated():
            response = self._pool_for(request.url).handle_request(core)
        assert isinstance(response.stream, Iterable)
        return httpx.Response(
            status_code=response.status, headers=response.headers,
            stream=_ResponseStream(response.stream, self.backend, deadline),
            extensions=response.extensions)

    def close(self) -> None:
        """Abort what is in flight, then close every connection. Idempotent; callable
        from any thread."""
        self.backend.abort()
        with self._lock:
            self._closed = True
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.close()

    def _pool_for(self, url: httpx.URL) -> httpcore.ConnectionPool:
        proxy = _proxy_for(url, self._proxies)
        with self._lock:
            if self._closed:
                raise httpcore.ConnectError(_ABORTED)
            pool = self._pools.get(proxy)
            if pool is None:
                pool = self._pools[proxy] = self._new_pool(proxy)
            return pool

    def _new_pool(self, proxy: str | None) -> httpcore.ConnectionPool:
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context(verify=self._verify,
                                                         trust_env=self._trust_env)
        limits = self._limits
        options: dict[str, Any] = {
            "ssl_context": self._ssl_context, "max_connections": limits.max_connections,
            "max_keepalive_connections": limits.max_keepalive_connections,
            "keepalive_expiry": limits.keepalive_expiry, "network_backend": self.backend,
        }
        if proxy is None:
            return httpcore.ConnectionPool(**options)
        parsed = httpx.Proxy(proxy)
        target = httpcore.URL(scheme=parsed.url.raw_scheme, host=parsed.url.raw_host,
                              port=parsed.url.port, target=parsed.url.raw_path)
        if parsed.url.scheme in ("http", "https"):
            return httpcore.HTTPProxy(proxy_url=target, proxy_auth=parsed.raw_auth,
                                      proxy_headers=parsed.headers.raw, **options)
        return httpcore.SOCKSProxy(proxy_url=target, proxy_auth=parsed.raw_auth, **options)
