"""Slack incoming webhooks: a Block Kit message within Slack's limits, paced per webhook.

The message says what fired, where (queue, task), the value against its threshold or
baseline, up to five sample task IDs linked to their traces, the dashboard and runbook links
and a command to inspect. Limits enforced before sending: at most 50 blocks, section text
3,000 characters, header 150, fallback ``text`` 40,000 (longer lists end in
"…and N more").

Answers: ``200`` with body ``ok`` is success; a ``200`` with any other body (``no_text``) is
a permanent failure, as are 3xx and 4xx (``invalid_payload``, ``no_service``,
``channel_is_archived``); 5xx and transport errors are retried. Unlike Alertmanager, a
``429`` is retried after its ``Retry-After`` (or the body's ``retry_after``) and holds the
whole webhook back meanwhile. ``send_resolved`` defaults to false, as in Alertmanager.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

import httpx

from stem_observe.notify._http import HttpReceiver, check_url, classify, snippet
from stem_observe.notify.base import DeliveryError, Receipt, Secret
from stem_observe.notify.clock import SYSTEM_CLOCK, Clock
from stem_observe.notify.model import (
    Alert,
    Notification,
    check_trace_template,
    rfc3339,
    truncate,
)
from stem_observe.notify.pacing import Pacer, shared_pacer

__all__ = ["MAX_BLOCKS", "MAX_HEADER", "MAX_SECTION", "MAX_TEXT", "SlackReceiver",
           "render_slack"]

MAX_BLOCKS: Final = 50
MAX_SECTION: Final = 3000
MAX_HEADER: Final = 150
MAX_TEXT: Final = 40_000
MAX_LINE: Final = 1000
"""Characters of one alert's summary in a section or in the fallback text."""


def _escape(text: str) -> str:
    """Slack mrkdwn control characters (``&``, ``<``, ``>``) as entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link(url: str, text: str) -> str:
    if any(ch in url for ch in "|<> "):
        return _escape(text)
    return f"<{url}|{_escape(text)}>"


def _alert_text(alert: Alert, trace_url_template: str | None) -> str:
    icon = ":red_circle:" if alert.firing else ":large_green_circle:"
    title = alert.annotations.get("summary") or alert.name
    head = f"{icon} *{truncate(_escape(title), MAX_LINE)}*"
    lines: list[str] = []
    description = alert.annotations.get("description")
    if alert.where:
        lines.append(f"*Where:* {_escape(alert.where)}")
    if alert.value_text:
        lines.append(f"*Value:* {_escape(alert.value_text)}")
    since = f"*Since:* {rfc3339(alert.starts_at)}"
    if not alert.firing:
        since += f"  *Resolved:* {rfc3339(alert.ends_at)}" if alert.ends_at else "  *Resolved*"
    lines.append(since)
    if alert.samples:
        tasks = [
            _link(url, sample.task_id) if (url := sample.trace_url(trace_url_template))
            else f"`{_escape(sample.task_id)}`"
            for sample in alert.samples
        ]
        lines.append("*Sample tasks:* " + ", ".join(tasks))
    if alert.cli_hint:
        lines.append(f"*Inspect:* `{_escape(alert.cli_hint)}`")
    links = [_link(url, label) for url, label in
             ((alert.dashboard_url, "Dashboard"), (alert.runbook_url, "Runbook")) if url]
    if links:
        lines.append(" · ".join(links))
    tail = "\n".join(lines)
    parts = [head]
    if description:  # the only free-form text: it gives way first
        room = MAX_SECTION - len(head) - len(tail) - 2
        if room > 20:
            parts.append(truncate(_escape(description), room))
    parts.append(tail)
    return truncate("\n".join(parts), MAX_SECTION)


def _fallback(notification: Notification, alerts: list[Alert]) -> str:
    """The notification text (what phones show): the title and one line per alert."""
    text = notification.title
    for index, alert in enumerate(alerts):
        line = f"\n• {alert.summary}"
        if alert.where and alert.where not in line:
            line += f" ({alert.where})"
        if alert.value_text:
            line += f": {alert.value_text}"
        line = truncate(line, MAX_LINE)
        more = f"\n…and {len(alerts) - index} more"
        if len(text) + len(line) + len(f"\n…and {len(alerts)} more") > MAX_TEXT:
            return text + more
        text += line
    return truncate(text, MAX_TEXT)


def render_slack(
    notification: Notification, *, trace_url_template: str | None = None,
) -> dict[str, Any]:
    """The webhook body: ``text`` (fallback) and ``blocks``, within Slack's limits."""
    alerts = [*notification.firing, *notification.resolved]
    icon = ":rotating_light:" if notification.status == "firing" else ":white_check_mark:"
    header = {"type": "header", "text": {
        "type": "plain_text", "text": truncate(f"{icon} {notification.title}", MAX_HEADER),
        "emoji": True,
    }}
    blocks: list[dict[str, Any]] = [header]
    room = MAX_BLOCKS - 1
    shown = alerts if len(alerts) <= room else alerts[: room - 1]
    for alert in shown:
        blocks.append({"type": "section", "text": {
            "type": "mrkdwn", "text": _alert_text(alert, trace_url_template)}})
    hidden = len(alerts) - len(shown) + notification.truncated_alerts
    if hidden:
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": f"…and {hidden} more"}]})
    return {"text": _fallback(notification, alerts), "blocks": blocks}


class SlackReceiver(HttpReceiver):
    """Posts to one Slack incoming webhook.

    ``url`` (or ``url_env``, the name of the environment variable holding it) is secret.
    ``trace_url_template`` such as ``https://tempo/trace/{trace_id}`` links sample tasks.
    Requests to one webhook URL share a :class:`Pacer` of ``rate_per_s`` with ``burst``.
    """

    integration = "slack"

    def __init__(
        self, name: str, url: str | Secret | None = None, *, url_env: str | None = None,
        send_resolved: bool = False, trace_url_template: str | None = None,
        timeout_s: float | str = 10.0, rate_per_s: float = 1.0, burst: int = 3,
        pacer: Pacer | None = None, transport: httpx.BaseTransport | None = None,
        clock: Clock = SYSTEM_CLOCK, environ: Mapping[str, str] | None = None,
    ) -> None:
        key = f"receivers.{name}.url"
        secret = Secret.resolve(url, env=url_env, key=key, environ=environ)
        check_url(secret, key=key, secret=True)
        self._url = secret
        super().__init__(
            name, send_resolved=send_resolved, timeout_s=timeout_s, transport=transport,
            pacer=pacer or shared_pacer(secret.reveal(), rate_per_s, burst), clock=clock)
        self.trace_url_template = check_trace_template(
            trace_url_template, key=f"receivers.{name}.trace_url")

    def render(self, notification: Notification) -> dict[str, Any]:
        return render_slack(notification, trace_url_template=self.trace_url_template)

    def send(self, notification: Notification) -> Receipt:
        body = json.dumps(self.render(notification), ensure_ascii=False).encode()
        response = self._post(self._url, content=body, headers={
            "Content-Type": "application/json; charset=utf-8"})
        if not response.is_success:
            raise classify(response, integration="slack", clock=self.clock,
                           retry_codes=(429,))
        return self._check_ok(response)

    def _check_ok(self, response: httpx.Response) -> Receipt:
        """A 2xx is success only with body ``ok`` (or JSON ``{"ok": true}``)."""
        text = response.text.strip()
        if text == "ok":
            return Receipt(response.status_code)
        if "json" in response.headers.get("Content-Type", ""):
            try:
                data = json.loads(text)
            except ValueError:
                raise DeliveryError(
                    f"slack: status {response.status_code} with unreadable JSON: "
                    f"{snippet(response)}", kind="invalid_response", retryable=True,
                    status_code=response.status_code, body=snippet(response)) from None
            if isinstance(data, dict) and data.get("ok") is True:
                return Receipt(response.status_code)
        raise DeliveryError(
            f"slack: status {response.status_code} but the body is not ok: "
            f"{snippet(response) or '(empty)'}", kind="invalid_response", retryable=False,
            status_code=response.status_code, body=snippet(response))
