"""Hand alerts to a Prometheus Alertmanager through its API: ``POST /api/v2/alerts``.

The body is a JSON list of ``{labels, annotations, startsAt, endsAt, generatorURL}``.
Alertmanager then groups, silences and routes them itself. It resolves an alert it has not
heard of for ``resolve_timeout`` (5 minutes by default), so route this receiver with a
``repeat_interval`` below that, or give ``firing_ttl_s`` to state each firing alert's
``endsAt`` explicitly. Resolved alerts are always sent (``send_resolved`` defaults to true).

Answers: 2xx is success; 5xx and ``429`` are retried; other statuses are permanent, with
the body (Alertmanager's validation message) in the error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

from stem_observe.config import to_seconds
from stem_observe.notify._http import HttpReceiver, check_url, classify
from stem_observe.notify.base import Receipt, Secret
from stem_observe.notify.clock import SYSTEM_CLOCK, Clock
from stem_observe.notify.model import Alert, Notification, rfc3339
from stem_observe.notify.pacing import Pacer

__all__ = ["API_PATH", "AlertmanagerReceiver", "render_alertmanager"]

API_PATH = "/api/v2/alerts"


def render_alertmanager(
    notification: Notification, *, now: float, firing_ttl_s: float | None = None,
) -> list[dict[str, Any]]:
    """The API v2 body: one postable alert per alert of the notification."""

    def one(alert: Alert) -> dict[str, Any]:
        item: dict[str, Any] = {
            "labels": dict(alert.all_labels), "annotations": dict(alert.annotations),
            "startsAt": rfc3339(alert.starts_at),
            "generatorURL": alert.generator_url or alert.dashboard_url or "",
        }
        if not alert.firing:
            item["endsAt"] = rfc3339(alert.ends_at if alert.ends_at is not None else now)
        elif alert.ends_at is not None:
            item["endsAt"] = rfc3339(alert.ends_at)
        elif firing_ttl_s is not None:
            item["endsAt"] = rfc3339(now + firing_ttl_s)
        for key in ("value", "threshold", "baseline"):
            number = getattr(alert, key)
            if number is not None and key not in item["annotations"]:
                item["annotations"][key] = f"{number:.6g}"
        return item

    return [one(alert) for alert in notification.alerts]


class AlertmanagerReceiver(HttpReceiver):
    """Posts to the Alertmanager at ``url`` (its base URL, e.g. ``http://am:9093``).

    ``bearer_token`` (or ``bearer_token_env``) is sent as ``Authorization: Bearer``.
    """

    integration = "alertmanager"

    def __init__(
        self, name: str, url: str, *, send_resolved: bool = True,
        firing_ttl_s: float | str | None = None, bearer_token: str | Secret | None = None,
        bearer_token_env: str | None = None, timeout_s: float | str = 10.0,
        pacer: Pacer | None = None, transport: httpx.BaseTransport | None = None,
        clock: Clock = SYSTEM_CLOCK, environ: Mapping[str, str] | None = None,
    ) -> None:
        prefix = f"receivers.{name}"
        base = check_url(url, key=f"{prefix}.url", secret=False)
        path = base.path.rstrip("/")
        if not path.endswith(API_PATH):
            path += API_PATH
        self._url = base.copy_with(path=path)
        self.firing_ttl_s = (None if firing_ttl_s is None
                             else to_seconds(firing_ttl_s, key=f"{prefix}.firing_ttl"))
        self._token = None
        if bearer_token is not None or bearer_token_env is not None:
            self._token = Secret.resolve(bearer_token, env=bearer_token_env,
                                         key=f"{prefix}.bearer_token", environ=environ)
        super().__init__(name, send_resolved=send_resolved, timeout_s=timeout_s,
                         transport=transport, pacer=pacer, clock=clock)

    def render(self, notification: Notification) -> list[dict[str, Any]]:
        return render_alertmanager(notification, now=self.clock.time(),
                                   firing_ttl_s=self.firing_ttl_s)

    def send(self, notification: Notification) -> Receipt:
        body = json.dumps(self.render(notification), ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.reveal()}"
        response = self._post(self._url, content=body, headers=headers)
        if not response.is_success:
            raise classify(response, integration="alertmanager", clock=self.clock,
                           retry_codes=(429,))
        return Receipt(response.status_code)
