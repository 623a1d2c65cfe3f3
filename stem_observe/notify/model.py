"""What a receiver is handed: an :class:`Alert` and a :class:`Notification` of a group of them.

Both are frozen values. Times are epoch seconds like every event of the package;
receivers render them as RFC 3339 (:func:`rfc3339`). An alert's identity is its
:attr:`Alert.fingerprint`, a stable hash of its sorted labels (``alertname`` included,
annotations excluded, as Alertmanager does); a notification's identity is its
:attr:`Notification.notification_id`, stable for one (group, receiver, state change) so
every retry of it carries the same id (``webhook-id``) and a receiver can deduplicate.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Final, Literal

from stem_observe.errors import ConfigError

__all__ = [
    "MAX_SAMPLES",
    "Alert",
    "AlertStatus",
    "Notification",
    "NotificationReason",
    "TaskSample",
    "check_trace_template",
    "rfc3339",
    "truncate",
]

AlertStatus = Literal["firing", "resolved"]
NotificationReason = Literal["first", "new_alerts", "resolved", "repeat"]
"""Why a notification is sent: the group's first, new alerts joined, alerts resolved, or the
repeat interval elapsed with nothing changed."""

MAX_SAMPLES: Final = 5
"""Sample task IDs an alert keeps (more are dropped in order)."""

_ZERO_TIME: Final = "0001-01-01T00:00:00Z"
_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})


def rfc3339(epoch_s: float | None) -> str:
    """``epoch_s`` as RFC 3339 UTC with milliseconds; ``None`` is Go's zero time, as
    Alertmanager writes the ``endsAt`` of a firing alert."""
    if epoch_s is None:
        return _ZERO_TIME
    moment = datetime.fromtimestamp(epoch_s, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def truncate(text: str, limit: int, marker: str = "…") -> str:
    """``text`` cut to ``limit`` characters (code points, never inside one), ending in
    ``marker`` when cut."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(marker))] + marker


def check_trace_template(template: str | None, *, key: str = "trace_url") -> str | None:
    """Validate a trace URL template such as ``https://tempo/trace/{trace_id}``.

    ``{trace_id}`` and ``{task_id}`` are the placeholders; anything else is an error.
    """
    if template is None:
        return None
    try:
        template.format(trace_id="0", task_id="0")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(key, f"{template!r}: only {{trace_id}} and {{task_id}} may appear "
                               f"({exc})") from None
    if "{trace_id}" not in template:
        raise ConfigError(key, f"{template!r} has no {{trace_id}}")
    return template


def _frozen(mapping: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping)) if mapping else _EMPTY


@dataclass(frozen=True, slots=True)
class TaskSample:
    """One task behind an alert: its ID and, when known, its trace ID."""

    task_id: str
    trace_id: str | None = None

    def trace_url(self, template: str | None) -> str | None:
        """The trace link from a template checked by :func:`check_trace_template`."""
        if template is None or not self.trace_id:
            return None
        return template.format(trace_id=self.trace_id, task_id=self.task_id)


@dataclass(frozen=True, slots=True, kw_only=True, eq=True)
class Alert:
    """One alert instance: a rule's name and the labels that tell it apart.

    ``labels`` should hold where it happened (``queue``, ``task``, ``worker`` …); the name is
    added as ``alertname`` by :attr:`all_labels`. ``value`` is the measured value, compared
    with ``threshold`` (threshold rules) or ``baseline`` (spike rules). ``samples`` keeps at
    most :data:`MAX_SAMPLES` tasks; ``cli_hint`` is a command to inspect, such as
    ``stem-observe dlq list --queue emails``.
    """

    name: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)
    status: AlertStatus = "firing"
    starts_at: float = field(default_factory=time.time)
    ends_at: float | None = None
    value: float | None = None
    threshold: float | None = None
    baseline: float | None = None
    samples: tuple[TaskSample, ...] = ()
    dashboard_url: str | None = None
    runbook_url: str | None = None
    cli_hint: str | None = None
    generator_url: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("an alert needs a name")
        if self.status not in ("firing", "resolved"):
            raise ValueError(f"status must be 'firing' or 'resolved', got {self.status!r}")
        object.__setattr__(self, "labels", _frozen(self.labels))
        object.__setattr__(self, "annotations", _frozen(self.annotations))
        object.__setattr__(self, "samples", tuple(self.samples)[:MAX_SAMPLES])

    def __hash__(self) -> int:
        return hash((self.fingerprint, self.status, self.starts_at))

    @property
    def all_labels(self) -> Mapping[str, str]:
        """The labels with ``alertname`` set to :attr:`name` (unless a label sets it)."""
        return {"alertname": self.name, **self.labels}

    @property
    def fingerprint(self) -> str:
        """16 hex digits of a SHA-256 over the sorted label pairs: stable across processes."""
        digest = hashlib.sha256()
        for key, value in sorted(self.all_labels.items()):
            digest.update(key.encode())
            digest.update(b"\xff")
            digest.update(value.encode())
            digest.update(b"\xff")
        return digest.hexdigest()[:16]

    @property
    def firing(self) -> bool:
        return self.status == "firing"

    @property
    def summary(self) -> str:
        """The ``summary`` annotation, else ``name`` and where it fired."""
        text = self.annotations.get("summary")
        if text:
            return text
        where = self.where
        return f"{self.name} on {where}" if where else self.name

    @property
    def where(self) -> str:
        """``queue emails, task emails.send``: the place labels that are set, in that order."""
        parts = [f"{key} {self.labels[key]}" for key in ("queue", "task", "worker")
                 if self.labels.get(key)]
        return ", ".join(parts)

    @property
    def value_text(self) -> str | None:
        """``0.42 (threshold 0.1)``, ``120 (baseline 12)`` or ``None`` without a value."""
        if self.value is None:
            return None
        text = _number(self.value)
        if self.threshold is not None:
            text += f" (threshold {_number(self.threshold)})"
        if self.baseline is not None:
            text += f" (baseline {_number(self.baseline)})"
        return text


def _number(value: float) -> str:
    return f"{value:.6g}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """A group's alerts as one receiver is told of them.

    ``group_key`` identifies the group across time (the engine's route and ``group_by``
    values); ``sequence`` tells repeats of an unchanged state apart. ``notification_id`` is a
    hash of (group, receiver, reason, sequence, each alert's fingerprint, status and start):
    the same for every retry of this notification, different for the next state change.
    """

    receiver: str
    group_key: str
    alerts: tuple[Alert, ...]
    group_labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    reason: NotificationReason = "first"
    sequence: int = 0
    external_url: str = ""
    truncated_alerts: int = 0
    """Alerts left out of :attr:`alerts` before this object was built (kept for payloads)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "alerts", tuple(self.alerts))
        object.__setattr__(self, "group_labels", _frozen(self.group_labels))

    def __hash__(self) -> int:
        return hash(self.notification_id)

    @property
    def status(self) -> AlertStatus:
        """``firing`` if any alert fires, else ``resolved``."""
        return "firing" if any(alert.firing for alert in self.alerts) else "resolved"

    @property
    def firing(self) -> tuple[Alert, ...]:
        return tuple(alert for alert in self.alerts if alert.firing)

    @property
    def resolved(self) -> tuple[Alert, ...]:
        return tuple(alert for alert in self.alerts if not alert.firing)

    @property
    def notification_id(self) -> str:
        """``ntf_`` and 32 hex digits; stable across retries and across processes."""
        digest = hashlib.sha256()
        for part in (self.group_key, self.receiver, self.reason, str(self.sequence)):
            digest.update(part.encode())
            digest.update(b"\x00")
        for fingerprint, status, starts_at in sorted(
            (alert.fingerprint, alert.status, alert.starts_at) for alert in self.alerts
        ):
            digest.update(f"{fingerprint}:{status}:{starts_at!r}".encode())
            digest.update(b"\x00")
        return "ntf_" + digest.hexdigest()[:32]

    @property
    def common_labels(self) -> dict[str, str]:
        """Label pairs every alert shares (``alertname`` included)."""
        return _common([alert.all_labels for alert in self.alerts])

    @property
    def common_annotations(self) -> dict[str, str]:
        return _common([alert.annotations for alert in self.alerts])

    @property
    def title(self) -> str:
        """``[FIRING:3] retry_spike`` as Alertmanager's default titles read."""
        names = sorted({alert.name for alert in self.alerts})
        shown = names[0] if len(names) == 1 else f"{names[0]} +{len(names) - 1}"
        if self.status == "firing":
            return f"[FIRING:{len(self.firing)}] {shown}"
        return f"[RESOLVED] {shown}"


def _common(mappings: list[Mapping[str, str]]) -> dict[str, str]:
    if not mappings:
        return {}
    first = dict(mappings[0])
    return {key: value for key, value in first.items()
            if all(other.get(key) == value for other in mappings[1:])}
