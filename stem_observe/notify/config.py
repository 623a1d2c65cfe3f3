"""Receivers from configuration: ``build_receiver("team", {"type": "slack", "url_env":
"SLACK_WEBHOOK_URL"})``.

Each ``type`` accepts the keyword arguments of its class under the same names, with
``timeout``, ``trace_url`` and ``firing_ttl`` for ``timeout_s``, ``trace_url_template`` and
``firing_ttl_s``. Secrets are given directly or, better, as the name of an environment
variable (``url_env``, ``routing_key_env``, ``secret_envs``, ``bearer_token_env``). Errors
name the receiver and the key (``receivers.team.url_env: environment variable … is not
set``) and never show a secret.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import httpx

from stem_observe.errors import ConfigError
from stem_observe.notify.alertmanager import AlertmanagerReceiver
from stem_observe.notify.base import Receiver
from stem_observe.notify.pagerduty import PagerDutyReceiver
from stem_observe.notify.recording import ConsoleReceiver
from stem_observe.notify.slack import SlackReceiver
from stem_observe.notify.webhook import WebhookReceiver

__all__ = ["RECEIVER_TYPES", "build_receiver"]

_RENAMES: Final = {"timeout": "timeout_s", "trace_url": "trace_url_template",
                   "firing_ttl": "firing_ttl_s", "throttle_wait": "throttle_wait_s"}

_STR, _BOOL, _NUM, _INT, _LIST, _MAP = "str", "bool", "number", "int", "list", "mapping"
_DURATION = "duration"

_KEYS: Final[Mapping[str, Mapping[str, str]]] = {
    "slack": {"url": _STR, "url_env": _STR, "send_resolved": _BOOL, "trace_url": _STR,
              "timeout": _DURATION, "rate_per_s": _NUM, "burst": _INT},
    "pagerduty": {"routing_key": _STR, "routing_key_env": _STR, "url": _STR,
                  "send_resolved": _BOOL, "source": _STR, "severity": _STR,
                  "severity_label": _STR, "client_url": _STR, "trace_url": _STR,
                  "timeout": _DURATION, "throttle_wait": _DURATION, "rate_per_s": _NUM,
                  "burst": _INT},
    "webhook": {"url": _STR, "url_env": _STR, "secrets": _LIST, "secret_envs": _LIST,
                "hub_secret": _STR, "max_alerts": _INT, "send_resolved": _BOOL,
                "external_url": _STR, "headers": _MAP, "timeout": _DURATION},
    "alertmanager": {"url": _STR, "send_resolved": _BOOL, "firing_ttl": _DURATION,
                     "bearer_token": _STR, "bearer_token_env": _STR, "timeout": _DURATION},
    "console": {"send_resolved": _BOOL, "trace_url": _STR, "formats": _LIST},
}

RECEIVER_TYPES: Final = tuple(_KEYS)
_WITH_NETWORK: Final[Mapping[str, Callable[..., Receiver]]] = {
    "slack": SlackReceiver, "pagerduty": PagerDutyReceiver, "webhook": WebhookReceiver,
    "alertmanager": AlertmanagerReceiver,
}


def _check(value: object, kind: str) -> bool:
    if kind == _STR:
        return isinstance(value, str)
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _NUM:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == _DURATION:
        return isinstance(value, int | float | str) and not isinstance(value, bool)
    if kind == _LIST:
        return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def build_receiver(
    name: str, config: Mapping[str, Any], *, environ: Mapping[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> Receiver:
    """A receiver of ``config["type"]`` (one of :data:`RECEIVER_TYPES`), validated."""
    prefix = f"receivers.{name}"
    kind = config.get("type")
    if not isinstance(kind, str) or kind not in _KEYS:
        raise ConfigError(f"{prefix}.type",
                          f"must be one of {', '.join(RECEIVER_TYPES)}, got {kind!r}")
    allowed = _KEYS[kind]
    kwargs: dict[str, Any] = {}
    for key, value in config.items():
        if key == "type":
            continue
        if key not in allowed:
            raise ConfigError(f"{prefix}.{key}", f"unknown setting for a {kind} receiver")
        if not _check(value, allowed[key]):
            shown = "a secret value" if "secret" in key or key in (
                "url", "routing_key", "bearer_token") else repr(value)
            raise ConfigError(f"{prefix}.{key}", f"expected a {allowed[key]}, got {shown}")
        kwargs[_RENAMES.get(key, key)] = value
    if kind == "alertmanager" and "url" not in kwargs:
        raise ConfigError(f"{prefix}.url", "is required for an alertmanager receiver")
    if kind == "console":
        return ConsoleReceiver(name, **kwargs)
    return _WITH_NETWORK[kind](name, transport=transport, environ=environ, **kwargs)
