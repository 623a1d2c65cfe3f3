"""Standard Webhooks signatures (v1, HMAC-SHA256) for sending and for checking.

The signed content is ``{webhook-id}.{webhook-timestamp}.{body}`` over the exact bytes
sent; a secret is ``whsec_`` and base64 of 24 to 64 random bytes; the header holds
``v1,<base64 signature>``, one per active secret, space-separated, so a secret can be
rotated without downtime. :class:`WebhookVerifier` is the receiving side: constant-time
comparison, a ±5 minute timestamp tolerance and a memory of recent ids so a replay inside
the window is reported as a duplicate. :func:`hub_signature_256` gives GitHub's
``X-Hub-Signature-256`` for consumers that expect that instead.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Final, Literal

from stem_observe.errors import ConfigError, StemObserveError
from stem_observe.notify.base import Secret
from stem_observe.notify.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "SignatureError",
    "WebhookSigner",
    "WebhookVerifier",
    "generate_secret",
    "hub_signature_256",
]

PREFIX: Final = "whsec_"
TOLERANCE_S: Final = 300.0


def generate_secret(size: int = 32) -> str:
    """A new ``whsec_`` secret of ``size`` random bytes."""
    return PREFIX + base64.b64encode(secrets.token_bytes(size)).decode()


def _key(secret: str | Secret, *, key: str) -> bytes:
    text = secret.reveal() if isinstance(secret, Secret) else secret
    if text.startswith(PREFIX):
        text = text[len(PREFIX):]
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(key, "a signing secret must be whsec_ followed by base64") from None
    if not raw:
        raise ConfigError(key, "a signing secret may not be empty")
    return raw


def _sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    content = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class WebhookSigner:
    """Signs with every secret in ``secrets`` (the newest first, by convention)."""

    def __init__(self, secrets: Sequence[str | Secret], *, key: str = "secrets") -> None:
        self._keys = [_key(secret, key=f"{key}[{i}]") for i, secret in enumerate(secrets)]
        if not self._keys:
            raise ConfigError(key, "at least one signing secret is needed")

    def signature(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """The ``webhook-signature`` value."""
        return " ".join(_sign(key, msg_id, timestamp, body) for key in self._keys)

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
                "webhook-signature": self.signature(msg_id, timestamp, body)}

    def __repr__(self) -> str:
        return f"WebhookSigner(<{len(self._keys)} secret(s)>)"


SignatureProblem = Literal["missing", "bad_timestamp", "too_old", "too_new", "mismatch",
                           "duplicate"]


class SignatureError(StemObserveError):
    """A signed request that must not be accepted; ``problem`` says why."""

    def __init__(self, problem: SignatureProblem, message: str) -> None:
        super().__init__(message)
        self.problem: SignatureProblem = problem


class WebhookVerifier:
    """Checks Standard Webhooks requests: signature, timestamp within ``tolerance_s``, and
    the id not seen in the last ``2 * tolerance_s`` (at most ``max_remembered`` ids kept).

    Thread-safe.
    """

    def __init__(
        self, secrets: Sequence[str | Secret], *, tolerance_s: float = TOLERANCE_S,
        clock: Clock = SYSTEM_CLOCK, max_remembered: int = 100_000,
    ) -> None:
        self._keys = [_key(secret, key=f"secrets[{i}]") for i, secret in enumerate(secrets)]
        if not self._keys:
            raise ConfigError("secrets", "at least one signing secret is needed")
        self.tolerance_s = tolerance_s
        self.clock = clock
        self.max_remembered = max_remembered
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, headers: Mapping[str, str], body: bytes) -> str:
        """The message id of a valid, first-seen request; else :class:`SignatureError`."""
        lower = {name.lower(): value for name, value in headers.items()}
        msg_id = lower.get("webhook-id")
        stamp = lower.get("webhook-timestamp")
        signature = lower.get("webhook-signature")
        if not (msg_id and stamp and signature):
            raise SignatureError("missing", "webhook-id, webhook-timestamp and "
                                            "webhook-signature are required")
        try:
            timestamp = int(stamp)
        except ValueError:
            raise SignatureError("bad_timestamp", "webhook-timestamp is not an integer") from None
        now = self.clock.time()
        if timestamp < now - self.tolerance_s:
            raise SignatureError("too_old", "message timestamp too old")
        if timestamp > now + self.tolerance_s:
            raise SignatureError("too_new", "message timestamp too new")
        offered = [part.split(",", 1)[1] for part in signature.split()
                   if part.startswith("v1,")]
        expected = [_sign(key, msg_id, timestamp, body).split(",", 1)[1] for key in self._keys]
        if not any(hmac.compare_digest(mine.encode(), theirs.encode())
                   for mine in expected for theirs in offered):
            raise SignatureError("mismatch", "no matching signature")
        with self._lock:
            self._forget(now)
            if msg_id in self._seen:
                raise SignatureError("duplicate", f"message {msg_id} was already received")
            self._seen[msg_id] = now
            while len(self._seen) > self.max_remembered:
                self._seen.popitem(last=False)
        return msg_id

    def _forget(self, now: float) -> None:
        horizon = now - 2 * self.tolerance_s
        while self._seen:
            first_id, seen_at = next(iter(self._seen.items()))
            if seen_at >= horizon:
                break
            del self._seen[first_id]

    def __repr__(self) -> str:
        return f"WebhookVerifier(<{len(self._keys)} secret(s)>)"


def hub_signature_256(secret: str | Secret | bytes, body: bytes) -> str:
    """GitHub's ``X-Hub-Signature-256`` value: ``sha256=`` and the hex HMAC of the body."""
    if isinstance(secret, Secret):
        secret = secret.reveal()
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
