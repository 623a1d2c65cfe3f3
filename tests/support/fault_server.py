"""A real local HTTP receiver that answers as a test scripts it: statuses, bodies and headers,
hangs (never answers), dropped connections, answers trickled a byte at a time, and rate
limits, over HTTP or TLS; it records every request with the monotonic time it arrived."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal


@dataclass(frozen=True)
class Reply:
    """One answer. ``hang`` keeps the connection open without answering; ``drop`` reads the
    request and closes the connection without answering. ``trickle`` sends the answer one
    byte every ``trickle_every_s``: all of it (``"head"``: the status line and headers come
    slowly) or the body only (``"body"``: the head at once); make it long enough to outlast
    the test (a big body or header). A trickle stops when the client goes away or the server
    stops."""

    status: int = 200
    body: bytes | str = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    hang: bool = False
    drop: bool = False
    trickle: Literal["head", "body"] | None = None
    trickle_every_s: float = 0.05

    @property
    def payload(self) -> bytes:
        return self.body.encode() if isinstance(self.body, str) else self.body


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    """``time.monotonic()`` when the request had been read."""
    answered: int | None
    """The status answered; ``None`` for a hang, a drop or a trickle."""


Responder = Callable[[Request], Reply]


class FaultServer:
    """Answers with the scripted replies in order, then with ``default`` (or ``responder``,
    which sees each request and picks the reply). With ``tls`` (a server-side context) it
    speaks HTTPS."""

    def __init__(
        self, *replies: Reply, default: Reply | None = None, responder: Responder | None = None,
        hang_limit_s: float = 30.0, tls: ssl.SSLContext | None = None,
    ) -> None:
        self.default = default or Reply()
        self.responder = responder
        self.hang_limit_s = hang_limit_s
        self._script: deque[Reply] = deque(replies)
        self._requests: list[Request] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._trickled = 0
        self.tls = tls
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                payload = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                probe = Request(self.command, self.path, headers, payload, time.monotonic(), None)
                reply = server._next(probe)
                answered = None if (reply.hang or reply.drop or reply.trickle) else reply.status
                with server._lock:
                    server._requests.append(Request(
                        probe.method, probe.path, headers, payload, probe.at, answered))
                if reply.hang:
                    server._release.wait(server.hang_limit_s)
                    self.close_connection = True
                    return
                if reply.drop:
                    self.close_connection = True
                    return
                if reply.trickle:
                    self._trickle(reply)
                    return
                body = reply.payload
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if not any(name.lower() == "content-type" for name in reply.headers):
                    self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_PUT = do_GET = do_POST

            def _trickle(self, reply: Reply) -> None:
                self.close_connection = True
                body = reply.payload
                headers = {"Content-Type": "text/plain; charset=utf-8", **reply.headers,
                           "Content-Length": str(len(body))}
                lines = [f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}",
                         *(f"{name}: {value}" for name, value in headers.items()), "", ""]
                head = "\r\n".join(lines).encode("latin-1")
                slow = head + body if reply.trickle == "head" else body
                try:
                    if reply.trickle == "body":
                        self.wfile.write(head)
                    for index in range(len(slow)):
                        if server._release.wait(reply.trickle_every_s):  # server stopping
                            return
                        self.wfile.write(slow[index:index + 1])
                        with server._lock:
                            server._trickled += 1
                except OSError:  # the client gave up
                    return

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def get_request(self) -> tuple[socket.socket, Any]:
                sock, address = super().get_request()
                if tls is not None:  # handshake on the handler's thread, at its first read
                    sock = tls.wrap_socket(sock, server_side=True,
                                           do_handshake_on_connect=False)
                return sock, address

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def _next(self, request: Request) -> Reply:
        with self._lock:
            if self._script:
                return self._script.popleft()
        if self.responder is not None:
            return self.responder(request)
        return self.default

    def script(self, replies: Iterable[Reply]) -> None:
        with self._lock:
            self._script.extend(replies)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def trickled(self) -> int:
        """Bytes sent so far by trickled replies."""
        with self._lock:
            return self._trickled

    def answered(self, status: int | None = None) -> list[Request]:
        """Requests answered (with ``status``, or with any 2xx)."""
        return [r for r in self.requests() if r.answered is not None and (
            r.answered == status if status is not None else 200 <= r.answered < 300)]

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class RateGate:
    """A token bucket the server enforces: ``rate_per_s`` with ``burst``; over it, Slack's
    ``429`` with ``Retry-After: 1`` and its JSON body."""

    def __init__(self, rate_per_s: float, burst: int, ok: Reply | None = None) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.ok = ok or Reply(200, "ok")
        self._tokens = float(burst)
        self._updated = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, request: Request) -> Reply:
        with self._lock:
            now = request.at
            elapsed = max(0.0, now - self._updated)
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate_per_s)
            self._updated = max(now, self._updated)
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return self.ok
        return Reply(429, '{"retry_after":1,"ok":false,"error":"rate_limited"}',
                     {"Retry-After": "1", "Content-Type": "application/json"})


def slack_problem(body: bytes) -> str | None:
    """Why Slack would reject this webhook body (its documented limits), else ``None``."""
    try:
        message = json.loads(body)
    except ValueError:
        return "invalid_payload"
    if not isinstance(message, dict) or not message.get("text"):
        return "no_text"
    if len(message["text"]) > 40_000:
        return "text too long"
    blocks = message.get("blocks", [])
    if len(blocks) > 50:
        return "invalid_blocks: more than 50 blocks"
    for block in blocks:
        kind = block.get("type")
        if kind == "header" and len(block["text"]["text"]) > 150:
            return "invalid_blocks: header longer than 150"
        if kind == "section" and len(block["text"]["text"]) > 3000:
            return "invalid_blocks: must be less than 3001 characters"
        if kind == "context" and len(block["elements"]) > 10:
            return "invalid_blocks: more than 10 context elements"
    return None


def slack_validator(request: Request) -> Reply:
    """A Slack webhook that checks the limits: ``400 invalid_blocks`` or ``200 ok``."""
    problem = slack_problem(request.body)
    return Reply(400, problem) if problem else Reply(200, "ok")


PD_SEVERITIES = ("critical", "error", "warning", "info")


def pagerduty_problems(body: bytes) -> list[str]:
    """Schema violations of an Events v2 body (``PDS`` request and payload schema)."""
    if len(body) > 512_000:
        return ["event larger than 512 KB"]
    try:
        event = json.loads(body)
    except ValueError:
        return ["body is not JSON"]
    problems = []
    if not isinstance(event.get("routing_key"), str) or not event["routing_key"]:
        problems.append("routing_key is required")
    action = event.get("event_action")
    if action not in ("trigger", "acknowledge", "resolve"):
        problems.append("event_action must be trigger, acknowledge or resolve")
    key = event.get("dedup_key")
    if key is not None and (not isinstance(key, str) or len(key) > 255):
        problems.append("dedup_key must be a string of at most 255 characters")
    if action != "trigger" and not key:
        problems.append("dedup_key is required unless the event is a trigger")
    if action == "trigger":
        payload = event.get("payload") or {}
        summary = payload.get("summary")
        if not isinstance(summary, str) or not summary or len(summary) > 1024:
            problems.append("payload.summary must be 1 to 1024 characters")
        if not payload.get("source"):
            problems.append("payload.source is required")
        if payload.get("severity") not in PD_SEVERITIES:
            problems.append("payload.severity must be critical, error, warning or info")
        for link in event.get("links", []):
            if not link.get("href"):
                problems.append("links[].href is required")
    return problems


class PagerDutyMock:
    """Validates each event, answers ``202`` like PagerDuty, and tracks open alerts by
    ``dedup_key`` (a trigger opens or updates one, a resolve closes it)."""

    def __init__(self) -> None:
        self.open: dict[str, int] = {}
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, request: Request) -> Reply:
        problems = pagerduty_problems(request.body)
        if problems:
            return Reply(400, json.dumps({"status": "invalid event", "message":
                                          "Event object is invalid", "errors": problems}),
                         {"Content-Type": "application/json"})
        event = json.loads(request.body)
        key = event.get("dedup_key") or f"generated-{len(self.events)}"
        with self._lock:
            self.events.append(event)
            if event["event_action"] == "trigger":
                self.open[key] = self.open.get(key, 0) + 1
            elif event["event_action"] == "resolve":
                self.open.pop(key, None)
        return Reply(202, json.dumps({"status": "success", "message": "Event processed",
                                      "dedup_key": key}), {"Content-Type": "application/json"})
