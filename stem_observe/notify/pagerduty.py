"""PagerDuty Events API v2: ``trigger`` while any alert of the group fires, ``resolve`` when
all have resolved, both with one ``dedup_key`` (the SHA-256 hex of the group key, so
retries and resolves land on the same PagerDuty alert).

Field limits are enforced before sending: ``summary`` at most 1,024 characters (ending in
``…``), ``severity`` mapped into ``critical|error|warning|info``, and an event larger than
512 KB has its ``custom_details`` replaced by a note saying so. ``202`` is success; ``429``
and 5xx are retried (``Retry-After`` honoured); a ``400`` is permanent and its ``message``
and ``errors`` are in the error.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any, Final, Literal

import httpx

from stem_observe.config import to_seconds
from stem_observe.errors import ConfigError
from stem_observe.notify._http import HttpReceiver, check_url, classify
from stem_observe.notify.base import Receipt, Secret
from stem_observe.notify.clock import SYSTEM_CLOCK, Clock
from stem_observe.notify.model import (
    Alert,
    Notification,
    check_trace_template,
    rfc3339,
    truncate,
)
from stem_observe.notify.pacing import Pacer, shared_pacer

__all__ = [
    "EVENTS_V2_URL",
    "MAX_EVENT_BYTES",
    "MAX_SUMMARY",
    "PagerDutyReceiver",
    "Severity",
    "dedup_key",
    "map_severity",
    "render_event",
]

logger = logging.getLogger("stem_observe.notify.pagerduty")

EVENTS_V2_URL: Final = "https://events.pagerduty.com/v2/enqueue"
MAX_SUMMARY: Final = 1024
MAX_EVENT_BYTES: Final = 512_000
MAX_LINKS: Final = 10

Severity = Literal["critical", "error", "warning", "info"]
_SEVERITY_ALIASES: Final[Mapping[str, Severity]] = {
    **dict.fromkeys(("critical", "crit", "fatal", "emergency", "emerg", "alert", "page",
                     "high", "p1", "sev1", "s1"), "critical"),
    **dict.fromkeys(("error", "err", "major", "p2", "sev2", "s2"), "error"),
    **dict.fromkeys(("warning", "warn", "medium", "minor", "p3", "sev3", "s3"), "warning"),
    **dict.fromkeys(("info", "informational", "notice", "low", "debug", "none", "p4", "p5",
                     "sev4", "sev5", "s4", "s5"), "info"),
}


def dedup_key(group_key: str) -> str:
    """64 hex digits: stable for a group, within PagerDuty's 255-character limit."""
    return hashlib.sha256(group_key.encode()).hexdigest()


def map_severity(value: str | None, default: Severity = "error") -> Severity:
    """A severity label mapped into PagerDuty's enum (``high`` → ``critical``, ``warn`` →
    ``warning`` …); unknown or missing values give ``default``."""
    if not value:
        return default
    return _SEVERITY_ALIASES.get(value.strip().lower(), default)


def _alert_details(alert: Alert, trace_url_template: str | None) -> dict[str, Any]:
    details: dict[str, Any] = {
        "status": alert.status, "labels": dict(alert.all_labels),
        "starts_at": rfc3339(alert.starts_at), "fingerprint": alert.fingerprint,
    }
    if alert.annotations:
        details["annotations"] = dict(alert.annotations)
    for key in ("value", "threshold", "baseline"):
        if getattr(alert, key) is not None:
            details[key] = getattr(alert, key)
    if alert.samples:
        details["sample_tasks"] = [
            {"task_id": s.task_id, "trace_id": s.trace_id, "trace_url": s.trace_url(
                trace_url_template)} for s in alert.samples]
    if alert.cli_hint:
        details["inspect"] = alert.cli_hint
    return details


def _links(alert: Alert, trace_url_template: str | None) -> list[dict[str, str]]:
    links = [{"href": url, "text": text} for url, text in (
        (alert.dashboard_url, "Dashboard"), (alert.runbook_url, "Runbook")) if url]
    for sample in alert.samples:
        url = sample.trace_url(trace_url_template)
        if url:
            links.append({"href": url, "text": f"Trace of task {sample.task_id}"})
    return [link for link in links if link["href"].startswith(("http://", "https://"))]


def render_event(
    notification: Notification, *, routing_key: str, source: str = "stem-observe",
    severity: Severity = "error", severity_label: str = "severity",
    client: str = "stem-observe", client_url: str | None = None,
    trace_url_template: str | None = None,
) -> dict[str, Any]:
    """The Events v2 body for ``notification`` (``resolve`` once every alert resolved)."""
    key = dedup_key(notification.group_key)
    if notification.status == "resolved":
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": key}
    firing = notification.firing
    first = firing[0]
    summary = notification.title
    if first.summary and first.summary != first.name:
        summary += f": {first.summary}"
    if first.value_text:
        summary += f" = {first.value_text}"
    payload: dict[str, Any] = {
        "summary": truncate(summary, MAX_SUMMARY),
        "source": truncate(first.labels.get("worker") or source, 255),
        "severity": map_severity(first.labels.get(severity_label), severity),
        "timestamp": rfc3339(first.starts_at),
        "class": truncate(first.name, 255),
        "custom_details": {
            "firing": [_alert_details(a, trace_url_template) for a in firing],
            "resolved": [_alert_details(a, trace_url_template) for a in notification.resolved],
            "num_firing": len(firing), "num_resolved": len(notification.resolved),
            "group_labels": dict(notification.group_labels),
        },
    }
    for field, label in (("component", "queue"), ("group", "task")):
        if first.labels.get(label):
            payload[field] = truncate(first.labels[label], 255)
    event: dict[str, Any] = {
        "routing_key": routing_key, "event_action": "trigger", "dedup_key": key,
        "payload": payload, "client": client,
    }
    url = client_url or notification.external_url or first.dashboard_url
    if url:
        event["client_url"] = url
    links = _links(first, trace_url_template)[:MAX_LINKS]
    if links:
        event["links"] = links
    size = len(_encode(event))
    if size > MAX_EVENT_BYTES:
        payload["custom_details"] = {"error": (
            f"custom_details removed: the event was {size} bytes, over PagerDuty's "
            f"{MAX_EVENT_BYTES}-byte limit"), "num_firing": len(firing),
            "num_resolved": len(notification.resolved)}
    return event


def _encode(event: Mapping[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


def _error_details(response: httpx.Response) -> str | None:
    """``message: error, error`` from a PagerDuty error body, when it has that shape."""
    try:
        data = response.json()
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    message = str(data.get("message") or data.get("status") or "")
    errors = data.get("errors")
    if isinstance(errors, list) and errors:
        return f"{message}: {', '.join(str(e) for e in errors)}" if message else ", ".join(
            str(e) for e in errors)
    return message or None


class PagerDutyReceiver(HttpReceiver):
    """Sends Events v2 to ``url`` (PagerDuty's by default; tests point it elsewhere).

    ``routing_key`` (or ``routing_key_env``) is secret. ``severity`` is the default when
    the first firing alert has no ``severity_label`` label. A ``429`` without
    ``Retry-After`` is retried after ``throttle_wait_s`` (PagerDuty suggests 30 s), and holds
    back every event for that routing key meanwhile. Requests per routing key are
    paced to ``rate_per_s`` (PagerDuty allows about 120 a minute) with ``burst``.
    """

    integration = "pagerduty"

    def __init__(
        self, name: str, routing_key: str | Secret | None = None, *,
        routing_key_env: str | None = None, url: str = EVENTS_V2_URL,
        send_resolved: bool = True, source: str = "stem-observe", severity: str = "error",
        severity_label: str = "severity", client_url: str | None = None,
        trace_url_template: str | None = None, timeout_s: float | str = 10.0,
        throttle_wait_s: float | str = 30.0, rate_per_s: float = 2.0, burst: int = 20,
        pacer: Pacer | None = None,
        transport: httpx.BaseTransport | None = None, clock: Clock = SYSTEM_CLOCK,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        prefix = f"receivers.{name}"
        self._routing_key = Secret.resolve(
            routing_key, env=routing_key_env, key=f"{prefix}.routing_key", environ=environ)
        self._url = check_url(url, key=f"{prefix}.url", secret=False)
        if severity not in ("critical", "error", "warning", "info"):
            raise ConfigError(f"{prefix}.severity",
                              f"must be critical, error, warning or info, got {severity!r}")
        self.severity: Severity = map_severity(severity)
        self.severity_label = severity_label
        self.source = source
        self.throttle_wait_s = to_seconds(throttle_wait_s, key=f"{prefix}.throttle_wait")
        self.client_url = client_url
        self.trace_url_template = check_trace_template(
            trace_url_template, key=f"{prefix}.trace_url")
        super().__init__(
            name, send_resolved=send_resolved, timeout_s=timeout_s, transport=transport,
            pacer=pacer or shared_pacer(self._routing_key.reveal(), rate_per_s, burst),
            clock=clock)

    def render(self, notification: Notification, *, reveal: bool = False) -> dict[str, Any]:
        """The event; the routing key shows as ``***`` unless ``reveal``."""
        return render_event(
            notification, routing_key=self._routing_key.reveal() if reveal else "***",
            source=self.source, severity=self.severity, severity_label=self.severity_label,
            client_url=self.client_url, trace_url_template=self.trace_url_template)

    def send(self, notification: Notification) -> Receipt:
        sent_key = dedup_key(notification.group_key)
        body = _encode(self.render(notification, reveal=True))
        response = self._post(self._url, content=body,
                              headers={"Content-Type": "application/json"})
        if not response.is_success:
            error = classify(response, integration="pagerduty", clock=self.clock,
                             retry_codes=(429,), detail=_error_details(response))
            if error.status_code == 429 and error.retry_after_s is None:
                error.retry_after_s = self.throttle_wait_s  # PagerDuty: retry ~30 s later
            raise error
        returned = sent_key
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("dedup_key"), str):
            returned = data["dedup_key"]
            if returned != sent_key:
                logger.warning("receiver %s: PagerDuty answered dedup_key %s for %s",
                               self.name, returned, sent_key)
        return Receipt(response.status_code, {"dedup_key": returned})
