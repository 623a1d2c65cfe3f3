"""The receiver plug-in point and the delivery policy every receiver shares.

A :class:`Receiver` sends one notification once. :class:`DeliveryPolicy` (and the
:func:`deliver` shortcut) decide everything around that one attempt: pacing, bounded and
jittered exponential backoff, ``Retry-After``, a total deadline, the self-metrics and the
dead-letter hand-off, so that a notification is either delivered or handed over as failed,
and never retried forever.

Secrets (webhook URLs, routing keys, signing keys) are held in :class:`Secret`, whose
``repr`` and ``str`` are ``***``; every error text passes through :func:`redact`.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from prometheus_client import REGISTRY, CollectorRegistry

from stem_observe._throttle import Throttle
from stem_observe.config import to_seconds
from stem_observe.errors import ConfigError, StemObserveError
from stem_observe.notify._metrics import NotifyMetrics
from stem_observe.notify.clock import SYSTEM_CLOCK, Clock
from stem_observe.notify.model import Notification
from stem_observe.notify.pacing import Pacer
from stem_observe.notify.secret import Secret, redact

__all__ = [
    "DeadLetter",
    "DeadLetterHandler",
    "DeliveryError",
    "DeliveryPolicy",
    "DeliveryResult",
    "ErrorKind",
    "Receipt",
    "Receiver",
    "RetryPolicy",
    "Secret",
    "deliver",
    "redact",
]

logger = logging.getLogger("stem_observe.notify")

ErrorKind = Literal[
    "rate_limited", "server", "timeout", "transport", "client", "auth", "not_found", "gone",
    "redirect", "invalid_response", "disabled", "bug", "deadline", "cancelled", "queue_full",
]
"""Why a delivery failed. ``auth``, ``not_found`` and ``gone`` mean misconfigured."""


# --- errors and results ----------------------------------------------------------------------

class DeliveryError(StemObserveError):
    """One attempt failed. ``retryable`` tells the policy whether another may follow;
    ``retry_after_s`` is the wait the receiver asked for. The text is redacted."""

    def __init__(
        self, message: str, *, kind: ErrorKind, retryable: bool,
        status_code: int | None = None, body: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(redact(message))
        self.kind: ErrorKind = kind
        self.retryable = retryable
        self.status_code = status_code
        self.body = redact(body) if body is not None else None
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a successful attempt returned: the status and details (PagerDuty's dedup_key)."""

    status_code: int | None = None
    detail: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """The outcome of one notification to one receiver, all attempts included."""

    receiver: str
    notification_id: str
    delivered: bool
    attempts: int
    elapsed_s: float
    status_code: int | None = None
    error: str | None = None
    error_kind: ErrorKind | None = None
    dead_lettered: bool = False
    detail: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A notification given up on, and why (``result.error``)."""

    notification: Notification
    result: DeliveryResult


DeadLetterHandler = Callable[[DeadLetter], None]
"""Called on the delivery thread for each notification given up on; must not block long.
An exception it raises is logged and swallowed."""


# --- the plug-in point -----------------------------------------------------------------------

@runtime_checkable
class Receiver(Protocol):
    """Sends a notification to one destination, once.

    Called from a delivery thread (one per receiver under
    :class:`~stem_observe.notify.dispatch.Dispatcher`, else the thread calling
    :func:`deliver`), never from a task's hot path, and never concurrently for one receiver
    under a dispatcher. :meth:`send` may block on network I/O but must return or raise
    within ``timeout_s`` (its per-request timeout). It raises :class:`DeliveryError` for a
    failed attempt, retryable or not; any other exception is treated as a permanent failure.
    It must not retry by itself: the policy does. ``pacer`` (or ``None``) paces requests to
    the destination. Secrets must never reach ``repr``, logs or errors.
    """

    @property
    def name(self) -> str: ...

    @property
    def send_resolved(self) -> bool: ...

    @property
    def pacer(self) -> Pacer | None: ...

    def send(self, notification: Notification) -> Receipt: ...

    def close(self) -> None: ...


# --- the policy ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter.

    The wait before attempt ``n + 1`` is ``initial_backoff_s * multiplier**(n-1)``, capped at
    ``max_backoff_s``, times a random factor in ``[1, 1 + jitter]`` (never shorter than the
    plain backoff). A ``Retry-After`` replaces the backoff. Delivery stops after
    ``max_attempts`` attempts or when the next wait would pass ``deadline_s`` since the
    first attempt. Build from configuration with :meth:`from_config` (durations as ``"30s"``).
    """

    initial_backoff_s: float = 0.5
    max_backoff_s: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_attempts: int = 10
    deadline_s: float = 300.0

    def __post_init__(self) -> None:
        for name in ("initial_backoff_s", "max_backoff_s", "deadline_s"):
            to_seconds(getattr(self, name), key=name)
        if self.multiplier < 1:
            raise ConfigError("multiplier", f"must be at least 1, got {self.multiplier!r}")
        if not 0 <= self.jitter <= 1:
            raise ConfigError("jitter", f"must be within [0, 1], got {self.jitter!r}")
        if self.max_attempts < 1:
            raise ConfigError("max_attempts", f"must be at least 1, got {self.max_attempts!r}")

    @classmethod
    def from_config(cls, config: Mapping[str, object], *, prefix: str = "retry") -> RetryPolicy:
        """From a mapping such as ``{"initial_backoff": "500ms", "max_attempts": 8}``."""
        known = {"initial_backoff", "max_backoff", "multiplier", "jitter", "max_attempts",
                 "deadline"}
        unknown = set(config) - known
        if unknown:
            raise ConfigError(f"{prefix}.{sorted(unknown)[0]}", "unknown setting")
        kwargs: dict[str, float | int] = {}
        for name in ("initial_backoff", "max_backoff", "deadline"):
            if name in config:
                kwargs[f"{name}_s"] = to_seconds(config[name], key=f"{prefix}.{name}")  # type: ignore[arg-type]
        for name in ("multiplier", "jitter", "max_attempts"):
            if name in config:
                value = config[name]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigError(f"{prefix}.{name}", f"expected a number, got {value!r}")
                kwargs[name] = int(value) if name == "max_attempts" else float(value)
        return cls(**kwargs)  # type: ignore[arg-type]

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        """The wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return min(self.max_backoff_s, base * rng.uniform(1.0, 1.0 + self.jitter))


class DeliveryPolicy:
    """Delivers a notification with retries; see :class:`RetryPolicy` for the schedule.

    ``clock`` carries every wait (pass a ``FakeClock`` in tests), ``registry`` the
    self-metrics, ``dead_letter`` receives what is given up on. Thread-safe: one policy may
    serve every receiver's delivery thread.
    """

    def __init__(
        self, retry: RetryPolicy | None = None, *, clock: Clock = SYSTEM_CLOCK,
        registry: CollectorRegistry = REGISTRY, dead_letter: DeadLetterHandler | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self.metrics = NotifyMetrics.for_registry(registry)
        self.dead_letter = dead_letter
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._throttle = Throttle()

    def deliver(
        self, receiver: Receiver, notification: Notification, *,
        cancel: threading.Event | None = None, handed_over_at: float | None = None,
        hand_back: bool = False, proceed: Callable[[], DeliveryResult | None] | None = None,
    ) -> DeliveryResult:
        """Send until delivered, permanently failed, out of attempts or past the deadline.

        Never raises for a failed delivery. ``handed_over_at`` (monotonic) starts the latency
        clock earlier, for example when the notification was queued. With ``hand_back``, a
        delivery cancelled (a shutdown) is not dead-lettered: the result says ``cancelled``
        and the caller gives the notification back to whoever sends it next. ``proceed`` is
        asked before every attempt; a result it returns ends the delivery with that result
        (the notification was sent elsewhere, or is no longer this caller's to send).
        """
        clock, retry, name = self.clock, self.retry, receiver.name
        started = clock.monotonic()
        latency_from = started if handed_over_at is None else handed_over_at
        attempt = 0
        while True:
            attempt += 1
            if cancel is not None and cancel.is_set():
                error = DeliveryError("delivery cancelled", kind="cancelled", retryable=False)
                return self._give_up(receiver, notification, error, attempt - 1, started,
                                     hand_back=hand_back)
            remaining = retry.deadline_s - (clock.monotonic() - started)
            pacer = receiver.pacer
            if pacer is not None and not pacer.acquire(
                clock, cancel=cancel, max_wait_s=max(0.0, remaining)
            ):
                cancelled = cancel is not None and cancel.is_set()
                error = DeliveryError(
                    "delivery cancelled" if cancelled else "deadline passed waiting for pacing",
                    kind="cancelled" if cancelled else "deadline", retryable=False)
                return self._give_up(receiver, notification, error, attempt - 1, started,
                                     hand_back=hand_back)
            if proceed is not None:
                verdict = proceed()
                if verdict is not None:
                    return verdict
            try:
                receipt = receiver.send(notification)
            except DeliveryError as exc:
                error = exc
            except Exception as exc:  # a receiver bug must not kill the delivery thread
                logger.exception("receiver %s raised an unexpected error", name)
                error = DeliveryError(f"unexpected {type(exc).__name__}: {exc}", kind="bug",
                                      retryable=False)
            else:
                now = clock.monotonic()
                self.metrics.count(name, "sent")
                self.metrics.latency.labels(name).observe(max(0.0, now - latency_from))
                return DeliveryResult(
                    name, notification.notification_id, True, attempt, now - started,
                    status_code=receipt.status_code, detail=receipt.detail)
            if error.kind == "rate_limited":
                self.metrics.count(name, "rate_limited")
            if not error.retryable:
                return self._give_up(receiver, notification, error, attempt, started,
                                     hand_back=hand_back)
            wait = error.retry_after_s
            if wait is None:
                with self._rng_lock:
                    wait = retry.backoff_s(attempt, self._rng)
            elif pacer is not None:
                pacer.hold(clock, wait)
            elapsed = clock.monotonic() - started
            if attempt >= retry.max_attempts or elapsed + wait > retry.deadline_s:
                return self._give_up(receiver, notification, error, attempt, started,
                                     exhausted=True)
            self.metrics.count(name, "retried")
            self._log(name, error, "attempt %d failed, retrying in %.3fs", attempt, wait)
            if clock.sleep(wait, cancel):
                stop = DeliveryError(f"delivery cancelled after: {error}", kind="cancelled",
                                     retryable=False, status_code=error.status_code)
                return self._give_up(receiver, notification, stop, attempt, started,
                                     hand_back=hand_back)

    def reject(
        self, receiver: Receiver, notification: Notification, error: DeliveryError,
    ) -> DeliveryResult:
        """Give ``notification`` up without an attempt (a full queue, a shutdown): counted
        and dead-lettered like any failure."""
        return self._give_up(receiver, notification, error, 0, self.clock.monotonic())

    def _give_up(
        self, receiver: Receiver, notification: Notification, error: DeliveryError,
        attempts: int, started: float, *, exhausted: bool = False, hand_back: bool = False,
    ) -> DeliveryResult:
        name = receiver.name
        text = str(error)
        if hand_back and error.kind == "cancelled":
            self.metrics.count(name, "handed_back")
            return DeliveryResult(name, notification.notification_id, False, attempts,
                                  self.clock.monotonic() - started,
                                  status_code=error.status_code, error=text,
                                  error_kind="cancelled")
        if exhausted:
            text = f"gave up after {attempts} attempts: {text}"
        result = DeliveryResult(
            name, notification.notification_id, False, attempts,
            self.clock.monotonic() - started, status_code=error.status_code, error=text,
            error_kind=error.kind, dead_lettered=True)
        self.metrics.count(name, "failed")
        self._log(name, error, "notification %s failed: %s", notification.notification_id,
                  text, level=logging.ERROR)
        self.metrics.count(name, "dead_lettered")
        if self.dead_letter is not None:
            try:
                self.dead_letter(DeadLetter(notification, result))
            except Exception:
                logger.exception("the dead-letter handler failed for receiver %s", name)
        return result

    def _log(self, receiver: str, error: DeliveryError, message: str, *args: object,
             level: int = logging.WARNING) -> None:
        if self._throttle.allow((receiver, f"{error.kind}:{level}"), self.clock.monotonic()):
            logger.log(level, "receiver %s: " + message, receiver, *args)


@functools.lru_cache(maxsize=1)
def _default_policy() -> DeliveryPolicy:
    return DeliveryPolicy()


def deliver(
    receiver: Receiver, notification: Notification, *, policy: DeliveryPolicy | None = None,
    cancel: threading.Event | None = None,
) -> DeliveryResult:
    """Deliver with ``policy``, by default one shared policy on the default registry."""
    return (policy or _default_policy()).deliver(receiver, notification, cancel=cancel)
