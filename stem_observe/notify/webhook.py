"""A generic webhook: Alertmanager's version-4 JSON, signed as Standard Webhooks specify.

Every attempt of one notification carries the same ``webhook-id`` (its
``notification_id``), so a consumer can drop a repeat, and a fresh ``webhook-timestamp`` and
``webhook-signature``. Answers: 2xx is success; 3xx is a failure and is not followed;
``410 Gone`` disables the endpoint (no further request is made; the failure says so);
``429``, 502, 503, 504 and every other 5xx are retried (``Retry-After`` honoured); other 4xx
are permanent, with the response body in the error.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Final

import httpx

from stem_observe.errors import ConfigError
from stem_observe.notify._http import HttpReceiver, check_url, classify
from stem_observe.notify.base import DeliveryError, Receipt, Secret
from stem_observe.notify.clock import SYSTEM_CLOCK, Clock
from stem_observe.notify.model import Alert, Notification, rfc3339
from stem_observe.notify.pacing import Pacer
from stem_observe.notify.signing import WebhookSigner, hub_signature_256

__all__ = ["WebhookReceiver", "render_webhook"]

logger = logging.getLogger("stem_observe.notify.webhook")

REASONS: Final = {
    "first": "first notification", "new_alerts": "new alerts added",
    "resolved": "some alerts resolved", "repeat": "repeat interval elapsed",
}


def _alert(alert: Alert) -> dict[str, Any]:
    return {
        "status": alert.status, "labels": dict(alert.all_labels),
        "annotations": dict(alert.annotations), "startsAt": rfc3339(alert.starts_at),
        "endsAt": rfc3339(None if alert.firing else alert.ends_at),
        "generatorURL": alert.generator_url or alert.dashboard_url or "",
        "fingerprint": alert.fingerprint,
    }


def render_webhook(
    notification: Notification, *, max_alerts: int = 0, external_url: str = "",
) -> dict[str, Any]:
    """Alertmanager's webhook payload (``version`` ``"4"``); ``max_alerts`` > 0 keeps that
    many alerts and reports the rest in ``truncatedAlerts``."""
    alerts = list(notification.alerts)
    kept = alerts[:max_alerts] if max_alerts > 0 else alerts
    reason = REASONS[notification.reason]
    if notification.reason == "resolved" and notification.status == "resolved":
        reason = "all alerts resolved"
    return {
        "version": "4",
        "groupKey": notification.group_key,
        "truncatedAlerts": notification.truncated_alerts + len(alerts) - len(kept),
        "status": notification.status,
        "receiver": notification.receiver,
        "groupLabels": dict(notification.group_labels),
        "commonLabels": notification.common_labels,
        "commonAnnotations": notification.common_annotations,
        "externalURL": notification.external_url or external_url,
        "notification_reason": reason,
        "alerts": [_alert(alert) for alert in kept],
    }


class WebhookReceiver(HttpReceiver):
    """POSTs the version-4 payload to ``url`` (or the URL in ``url_env``; kept secret).

    ``secrets`` (``whsec_…``, or names in ``secret_envs``) sign each request; with none the
    request carries ``webhook-id`` and ``webhook-timestamp`` unsigned. ``hub_secret`` adds
    GitHub's ``X-Hub-Signature-256``. ``disabled`` turns true after a ``410``.
    """

    integration = "webhook"

    def __init__(
        self, name: str, url: str | Secret | None = None, *, url_env: str | None = None,
        secrets: Sequence[str | Secret] = (), secret_envs: Sequence[str] = (),
        hub_secret: str | Secret | None = None, max_alerts: int = 0,
        send_resolved: bool = True, external_url: str = "",
        headers: Mapping[str, str] | None = None, timeout_s: float | str = 10.0,
        pacer: Pacer | None = None, transport: httpx.BaseTransport | None = None,
        clock: Clock = SYSTEM_CLOCK, environ: Mapping[str, str] | None = None,
    ) -> None:
        prefix = f"receivers.{name}"
        secret_url = Secret.resolve(url, env=url_env, key=f"{prefix}.url", environ=environ)
        check_url(secret_url, key=f"{prefix}.url", secret=True)
        self._url = secret_url
        keys = [Secret.resolve(s, key=f"{prefix}.secrets[{i}]") for i, s in enumerate(secrets)]
        keys += [Secret.resolve(env=env, key=f"{prefix}.secret_envs[{i}]", environ=environ)
                 for i, env in enumerate(secret_envs)]
        self._signer = WebhookSigner(keys, key=f"{prefix}.secrets") if keys else None
        self._hub_secret = (Secret.resolve(hub_secret, key=f"{prefix}.hub_secret")
                            if hub_secret is not None else None)
        if max_alerts < 0:
            raise ConfigError(f"{prefix}.max_alerts", "must be 0 (no limit) or more")
        self.max_alerts = max_alerts
        self.external_url = external_url
        self._disabled = threading.Event()
        super().__init__(name, send_resolved=send_resolved, timeout_s=timeout_s,
                         transport=transport, pacer=pacer, clock=clock, headers=headers)

    @property
    def disabled(self) -> bool:
        """True once the endpoint answered ``410 Gone``: nothing more is sent to it."""
        return self._disabled.is_set()

    def render(self, notification: Notification) -> dict[str, Any]:
        return render_webhook(notification, max_alerts=self.max_alerts,
                              external_url=self.external_url)

    def send(self, notification: Notification) -> Receipt:
        if self._disabled.is_set():
            raise DeliveryError("webhook: endpoint disabled after 410 Gone; not sent",
                                kind="disabled", retryable=False, status_code=410)
        body = json.dumps(self.render(notification), ensure_ascii=False,
                          separators=(",", ":")).encode()
        msg_id = notification.notification_id
        timestamp = int(self.clock.time())
        headers = {"Content-Type": "application/json", "webhook-id": msg_id,
                   "webhook-timestamp": str(timestamp)}
        if self._signer is not None:
            headers["webhook-signature"] = self._signer.signature(msg_id, timestamp, body)
        if self._hub_secret is not None:
            headers["X-Hub-Signature-256"] = hub_signature_256(self._hub_secret, body)
        response = self._post(self._url, content=body, headers=headers)
        if response.is_success:
            return Receipt(response.status_code, {"webhook_id": msg_id})
        error = classify(response, integration="webhook", clock=self.clock,
                         retry_codes=(429, 502, 503, 504))
        if response.status_code == 410:
            self._disabled.set()
            logger.error("receiver %s: the endpoint answered 410 Gone; it is disabled and "
                         "nothing more is sent to it", self.name)
            raise DeliveryError(f"{error} (endpoint disabled)", kind="disabled", retryable=False,
                                status_code=410, body=error.body)
        raise error
