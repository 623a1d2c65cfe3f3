"""HTTP exposition: ``/metrics`` (Prometheus text or OpenMetrics by ``Accept``), ``/healthz``.

A small threaded server on the standard library, started on a daemon thread. More routes
(``/readyz``, ``/api/...``) are added with :meth:`HttpServer.route`.
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

__all__ = ["HttpServer", "Response"]

logger = logging.getLogger("stem_observe.server")

Response = tuple[int, str, bytes]
"""Status code, content type, body."""
Route = Callable[[dict[str, str]], Response]
"""A route handler: request headers (lower-case names) → response."""


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
        self._routes: dict[str, Route] = {
            "/metrics": self._metrics,
            "/healthz": lambda headers: json_response(200, {"status": "ok"}),
        }
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def route(self, path: str, handler: Route) -> None:
        """Serve ``handler`` on ``GET path``."""
        self._routes[path] = handler

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
                path = urlsplit(self.path).path
                handler = routes.get(path)
                headers = {k.lower(): v for k, v in self.headers.items()}
                if handler is None:
                    status, ctype, body = json_response(404, {"error": f"no route {path}"})
                else:
                    try:
                        status, ctype, body = handler(headers)
                    except Exception:
                        logger.exception("handler for %s failed", path)
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
