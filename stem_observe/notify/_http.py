"""What every HTTP receiver shares: one client per receiver (on a
:class:`~stem_observe.notify._transport.DeadlineTransport`, so ``timeout_s`` bounds each
request in total and :meth:`HttpReceiver.close` aborts one in flight), error translation,
status classification, ``Retry-After`` parsing and the redaction of secret URLs from httpx's
logs."""

from __future__ import annotations

import email.utils
import json
import logging
import threading
from collections.abc import Collection, Mapping
from typing import Final, Self

import httpx

from stem_observe.config import to_seconds
from stem_observe.errors import ConfigError
from stem_observe.notify._transport import DEADLINE_EXTENSION, DeadlineTransport
from stem_observe.notify.base import DeliveryError, ErrorKind, Receipt
from stem_observe.notify.clock import Clock
from stem_observe.notify.model import Notification
from stem_observe.notify.pacing import Pacer
from stem_observe.notify.secret import Secret, redact, register_secret_text

__all__ = [
    "BODY_LIMIT",
    "HttpReceiver",
    "check_url",
    "classify",
    "make_client",
    "parse_retry_after",
    "post",
    "snippet",
]

BODY_LIMIT: Final = 512
"""Characters of a response body kept in an error."""

class _RedactSecrets(logging.Filter):
    """Rewrites records of the ``httpx`` logger (which logs full request URLs at INFO) so
    secret URLs never reach a handler. Installed once; it changes no level or handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


_REDACTION: Final = _RedactSecrets()


def _install_redaction() -> None:
    logging.getLogger("httpx").addFilter(_REDACTION)  # a no-op when already there


def check_url(url: str | Secret, *, key: str, secret: bool) -> httpx.URL:
    """Parse an http(s) URL; the error names ``key`` and never shows a secret URL."""
    text = url.reveal() if isinstance(url, Secret) else url
    shown = "the URL" if secret else repr(text)
    try:
        parsed = httpx.URL(text)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigError(key, f"{shown} is not a valid URL") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(key, f"{shown} is not an http(s) URL")
    if secret:
        register_secret_text(str(parsed))
        path = parsed.raw_path.decode("ascii", "replace")
        if len(path) >= 16:  # a token-bearing path (Slack's); short ones would over-redact
            register_secret_text(path)
    return parsed


def make_client(
    timeout_s: float, transport: httpx.BaseTransport | None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Client:
    """The receiver's one client: ``timeout_s`` per operation, no redirects, on a
    :class:`DeadlineTransport` unless ``transport`` is given (a test double, say)."""
    _install_redaction()
    return httpx.Client(
        timeout=httpx.Timeout(timeout_s),
        transport=transport if transport is not None else DeadlineTransport(),
        follow_redirects=False,
        headers={"User-Agent": "stem-observe", **(headers or {})},
    )


def post(
    client: httpx.Client, url: httpx.URL | Secret, *, integration: str, content: bytes,
    headers: Mapping[str, str], deadline_s: float | None = None,
) -> httpx.Response:
    """POST once, within ``deadline_s`` in total when the transport honours it; transport
    failures become retryable :class:`DeliveryError`. A secret URL is revealed only here."""
    target = url.reveal() if isinstance(url, Secret) else url
    extensions = {} if deadline_s is None else {DEADLINE_EXTENSION: deadline_s}
    try:
        response = client.post(target, content=content, headers=dict(headers),
                               extensions=extensions)
    except httpx.TimeoutException as exc:
        detail = f": {exc}" if str(exc) else ""
        raise DeliveryError(
            f"{integration}: request timed out ({type(exc).__name__}{detail})",
            kind="timeout", retryable=True) from None
    except httpx.TransportError as exc:
        raise DeliveryError(
            f"{integration}: {type(exc).__name__}: {exc}", kind="transport",
            retryable=True) from None
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{integration}: {type(exc).__name__}: {exc}",
                            kind="client", retryable=False) from None
    return response


def snippet(response: httpx.Response) -> str:
    """The body as text, cut to :data:`BODY_LIMIT` characters."""
    try:
        text = response.text
    except (UnicodeDecodeError, LookupError, httpx.HTTPError):
        text = response.content.decode("utf-8", "replace")
    text = " ".join(text.split())
    if len(text) > BODY_LIMIT:
        text = text[: BODY_LIMIT - 1] + "…"
    return text


def parse_retry_after(response: httpx.Response, clock: Clock) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date), else Slack's body
    ``retry_after``; ``None`` when neither is there or readable."""
    header = response.headers.get("Retry-After")
    if header:
        header = header.strip()
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
        try:
            moment = email.utils.parsedate_to_datetime(header)
        except (TypeError, ValueError):
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return max(0.0, moment.timestamp() - clock.time())
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    if isinstance(body, dict):
        value = body.get("retry_after")
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
    return None


_KIND_BY_STATUS: Final[Mapping[int, ErrorKind]] = {
    401: "auth", 403: "auth", 404: "not_found", 410: "gone", 429: "rate_limited",
}


def classify(
    response: httpx.Response, *, integration: str, clock: Clock,
    retry_codes: Collection[int] = (), detail: str | None = None,
) -> DeliveryError:
    """The error for a non-2xx answer: 5xx and ``retry_codes`` retryable, everything else
    (1xx, 3xx, 4xx) permanent; the body (or ``detail``) is in the message."""
    status = response.status_code
    body = snippet(response)
    if 300 <= status < 400:
        kind: ErrorKind = "redirect"
    elif status >= 500:
        kind = "server"
    else:
        kind = _KIND_BY_STATUS.get(status, "client")
    retryable = status >= 500 or status in retry_codes
    retry_after = parse_retry_after(response, clock) if retryable and status in (
        429, 503) else None
    shown = detail if detail is not None else body
    message = f"{integration}: unexpected status code {status}"
    if shown:
        message += f": {shown}"
    if kind == "redirect":
        message += " (redirects are not followed)"
    return DeliveryError(message, kind=kind, retryable=retryable, status_code=status,
                         body=body, retry_after_s=retry_after)


class HttpReceiver:
    """Shared state of the HTTP receivers: name, one :class:`httpx.Client`, the pacer.

    ``timeout_s`` bounds each request in total: connect, send, the status line and headers,
    and the body (with the default transport; a given ``transport`` keeps its own rules).
    Subclasses implement ``send`` and POST with :meth:`_post`. ``repr`` shows the name only:
    URLs may be secrets.
    """

    integration: str = "http"

    def __init__(
        self, name: str, *, send_resolved: bool, timeout_s: float | str,
        transport: httpx.BaseTransport | None, pacer: Pacer | None, clock: Clock,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not name:
            raise ConfigError("name", "a receiver needs a name")
        self.name = name
        self.send_resolved = send_resolved
        self.timeout_s = to_seconds(timeout_s, key=f"receivers.{name}.timeout")
        if self.timeout_s <= 0:
            raise ConfigError(f"receivers.{name}.timeout", "must be positive")
        self.pacer = pacer
        self.clock = clock
        self._closed = threading.Event()
        self._client = make_client(self.timeout_s, transport, headers)

    def send(self, notification: Notification) -> Receipt:
        raise NotImplementedError

    def close(self) -> None:
        """Close the client. A request in flight on another thread fails at once (its
        connection is shut down) as ``cancelled``, and no new one starts. Idempotent;
        callable from any thread."""
        self._closed.set()
        self._client.close()

    def _post(
        self, url: httpx.URL | Secret, *, content: bytes, headers: Mapping[str, str],
    ) -> httpx.Response:
        """:func:`post` within :attr:`timeout_s`; after :meth:`close`, or cut short by it,
        a non-retryable ``cancelled`` error."""
        if self._closed.is_set():
            raise self._cancelled()
        try:
            return post(self._client, url, integration=self.integration, content=content,
                        headers=headers, deadline_s=self.timeout_s)
        except Exception:
            if self._closed.is_set():  # whatever the abort made of the request
                raise self._cancelled() from None
            raise

    def _cancelled(self) -> DeliveryError:
        return DeliveryError(f"{self.integration}: the receiver was closed; request abandoned",
                             kind="cancelled", retryable=False)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
