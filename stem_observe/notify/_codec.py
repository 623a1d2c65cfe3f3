"""Notifications and log entries as JSON, for the outbox stream shared through Redis.

:func:`decode_notification` accepts only what :func:`encode_notification` writes; anything
else raises :class:`ValueError` naming the field, so a bad stream entry is dead-lettered
with a reason instead of crashing the consumer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast, get_args

from stem_observe.notify.dispatch import LogEntry
from stem_observe.notify.model import Alert, Notification, NotificationReason, TaskSample

__all__ = ["decode_entry", "decode_notification", "encode_entry", "encode_notification"]

_REASONS = frozenset(get_args(NotificationReason))


def encode_notification(notification: Notification) -> str:
    return json.dumps({
        "receiver": notification.receiver, "group_key": notification.group_key,
        "group_labels": dict(notification.group_labels), "reason": notification.reason,
        "sequence": notification.sequence, "external_url": notification.external_url,
        "truncated_alerts": notification.truncated_alerts,
        "alerts": [_alert_json(alert) for alert in notification.alerts],
    }, separators=(",", ":"))


def decode_notification(text: str | bytes) -> Notification:
    data = _object(json.loads(text), "notification")
    reason = data.get("reason")
    if reason not in _REASONS:
        raise ValueError(f"reason: unknown {reason!r}")
    reason = cast(NotificationReason, reason)
    alerts = data.get("alerts")
    if not isinstance(alerts, list):
        raise ValueError("alerts: expected a list")
    return Notification(
        receiver=_str(data, "receiver"), group_key=_str(data, "group_key"),
        alerts=tuple(_alert(_object(item, f"alerts[{i}]")) for i, item in enumerate(alerts)),
        group_labels=_labels(data, "group_labels"), reason=reason,
        sequence=_int(data, "sequence"), external_url=_str(data, "external_url"),
        truncated_alerts=_int(data, "truncated_alerts"))


def encode_entry(entry: LogEntry) -> str:
    return json.dumps({"firing": sorted(entry.firing), "resolved": sorted(entry.resolved),
                       "at": entry.at, "sequence": entry.sequence}, separators=(",", ":"))


def decode_entry(text: str | bytes) -> LogEntry:
    data = _object(json.loads(text), "log entry")
    firing, resolved = data.get("firing"), data.get("resolved")
    if not isinstance(firing, list) or not isinstance(resolved, list):
        raise ValueError("firing/resolved: expected lists")
    return LogEntry(frozenset(map(str, firing)), frozenset(map(str, resolved)),
                    _float(data, "at"), _int(data, "sequence"))


# --- internals ---------------------------------------------------------------------------

def _alert_json(alert: Alert) -> dict[str, Any]:
    return {
        "name": alert.name, "labels": dict(alert.labels),
        "annotations": dict(alert.annotations), "status": alert.status,
        "starts_at": alert.starts_at, "ends_at": alert.ends_at, "value": alert.value,
        "threshold": alert.threshold, "baseline": alert.baseline,
        "samples": [[s.task_id, s.trace_id] for s in alert.samples],
        "dashboard_url": alert.dashboard_url, "runbook_url": alert.runbook_url,
        "cli_hint": alert.cli_hint, "generator_url": alert.generator_url,
    }


def _alert(data: Mapping[str, Any]) -> Alert:
    samples = data.get("samples", [])
    if not isinstance(samples, list) or not all(
            isinstance(s, list) and len(s) == 2 for s in samples):
        raise ValueError("samples: expected [[task_id, trace_id], …]")
    return Alert(
        name=_str(data, "name"), labels=_labels(data, "labels"),
        annotations=_labels(data, "annotations"), status=data.get("status", "firing"),
        starts_at=_float(data, "starts_at"), ends_at=_optional_float(data, "ends_at"),
        value=_optional_float(data, "value"), threshold=_optional_float(data, "threshold"),
        baseline=_optional_float(data, "baseline"),
        samples=tuple(TaskSample(str(task_id), None if trace_id is None else str(trace_id))
                      for task_id, trace_id in samples),
        dashboard_url=_optional_str(data, "dashboard_url"),
        runbook_url=_optional_str(data, "runbook_url"),
        cli_hint=_optional_str(data, "cli_hint"),
        generator_url=_str(data, "generator_url"))


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected a JSON object")
    return value


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a string")
    return value


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    return None if data.get(key) is None else _str(data, key)


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key}: expected an integer")
    return value


def _float(data: Mapping[str, Any], key: str) -> float:
    value = data.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{key}: expected a number")
    return float(value)


def _optional_float(data: Mapping[str, Any], key: str) -> float | None:
    return None if data.get(key) is None else _float(data, key)


def _labels(data: Mapping[str, Any], key: str) -> dict[str, str]:
    value = data.get(key, {})
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"{key}: expected an object of strings")
    return value
