"""HTTP exposition: ``/metrics`` (Prometheus text or OpenMetrics by ``Accept``), ``/healthz``.

A small threaded server on the standard library, started on a daemon thread. More routes
are added with :meth:`HttpServer.route` (``GET``, headers only: ``/readyz``) or
:meth:`HttpServer.route_request` (any method, with the body: ``/api/silences``).
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

__all__ = ["HttpServer", "Request", "Response", "json_response"]

logger = logging.getLogger("stem_observe.server")

Response = tuple[int, str, bytes]
"""Status code, content type, body."""
Route = Callable[[dict[str, str]], Response]
"""A route handler: request headers (lower-case names) → response."""
MAX_BODY = 1 << 20


@dataclass(frozen=True, slots=True)
class Request:
    """What a :meth:`HttpServer.route_request` handler gets."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


RequestRoute = Callable[[Request], Response]


def json_response(status: int, payload: Any) -> Response:
    return status, "application/json", json.dumps(payload).encode()


class HttpServer:
    """Serves ``registry`` on ``/metrics`` and liveness on ``/healthz``.

    ``port=0`` picks a free port; :attr:`port` and :attr:`url` tell which after :meth:`start`.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry = REGISTRY,
        host: str = "127.0.0.1",
        port: int = 9464,
    ) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._routes: dict[tuple[str, str], RequestRoute] = {}
        self.route("/metrics", self._metrics)
        self.route("/healthz", lambda headers: json_response(200, {"status": "ok"}))
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def route(self, path: str, handler: Route) -> None:
        """Serve ``handler`` on ``GET path``."""
        self._routes[("GET", path)] = lambda request: handler(request.headers)

    def route_request(
        self, path: str, handler: RequestRoute, *, methods: tuple[str, ...] = ("GET",)
    ) -> None:
        """Serve ``handler`` on ``path`` for ``methods``; it gets the whole request."""
        for method in methods:
            self._routes[(method, path)] = handler

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> HttpServer:
        """Bind and serve on a daemon thread; raises ``OSError`` if the address is taken."""
        routes = self._routes

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

            def _handle(self, method: str) -> None:
                parts = urlsplit(self.path)
                path = parts.path
                headers = {k.lower(): v for k, v in self.headers.items()}
                handler = routes.get((method, path))
                try:
                    length = int(headers.get("content-length") or 0)
                except ValueError:
                    length = -1
                if handler is None:
                    allowed = any(p == path for _, p in routes)
                    status, ctype, body = json_response(
                        405 if allowed else 404,
                        {"error": f"{method} not allowed on {path}" if allowed
                         else f"no route {path}"})
                elif not 0 <= length <= MAX_BODY:
                    status, ctype, body = json_response(413, {"error": "body too large"})
                    self.close_connection = True  # the unread body must not be parsed
                else:
                    request = Request(
                        method, path, dict(parse_qsl(parts.query)), headers,
                        self.rfile.read(length) if length else b"",
                    )
                    try:
                        status, ctype, body = handler(request)
                    except Exception:
                        logger.exception("handler for %s %s failed", method, path)
                        status, ctype, body = json_response(500, {"error": "internal error"})
                gzipped = "gzip" in headers.get("accept-encoding", "") and len(body) > 1024
                if gzipped:
                    body = gzip.compress(body, compresslevel=5)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if gzipped:
                    self.send_header("Content-Encoding", "gzip")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("%s " + format, self.address_string(), *args)

        httpd = ThreadingHTTPServer((self.host, self.port), Handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(
            target=httpd.serve_forever, name="stem-observe-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _metrics(self, headers: dict[str, str]) -> Response:
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        return 200, content_type, encoder(self.registry)
