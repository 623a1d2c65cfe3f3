"""Secrets never reach repr, errors, results or logs; receivers build from configuration
with errors that name the key."""

from __future__ import annotations

import logging
import pickle

import httpx
import pytest
from prometheus_client import CollectorRegistry

from stem_observe.errors import ConfigError
from stem_observe.notify import build_receiver
from stem_observe.notify.alertmanager import AlertmanagerReceiver
from stem_observe.notify.base import DeliveryPolicy, RetryPolicy, Secret
from stem_observe.notify.clock import FakeClock
from stem_observe.notify.model import Alert, Notification
from stem_observe.notify.pacing import Pacer
from stem_observe.notify.pagerduty import PagerDutyReceiver
from stem_observe.notify.recording import ConsoleReceiver
from stem_observe.notify.slack import SlackReceiver
from stem_observe.notify.webhook import WebhookReceiver

TOKEN = "Zq8xTOKENTOKENTOKEN42"
SLACK_URL = f"https://hooks.slack.com/services/T1/B1/{TOKEN}"
NOTE = Notification(receiver="slack", group_key="g", alerts=(Alert(name="a", starts_at=1.0),))


def test_a_secret_shows_as_stars_everywhere() -> None:
    secret = Secret("hunter2-password")
    assert repr(secret) == str(secret) == f"{secret}" == f"{secret!r}" == "***"
    assert "hunter2" not in repr([secret, {"k": secret}])
    assert secret.reveal() == "hunter2-password"
    assert secret == Secret("hunter2-password")
    assert secret != "hunter2-password"
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    with pytest.raises(TypeError):
        Secret(42)  # type: ignore[arg-type]


def test_secrets_resolve_from_the_environment_with_errors_naming_the_variable() -> None:
    secret = Secret.resolve(env="SLACK_WEBHOOK_URL", key="receivers.s.url",
                            environ={"SLACK_WEBHOOK_URL": SLACK_URL})
    assert secret.reveal() == SLACK_URL
    with pytest.raises(ConfigError, match="SLACK_WEBHOOK_URL is not set") as caught:
        Secret.resolve(env="SLACK_WEBHOOK_URL", key="receivers.s.url", environ={})
    assert caught.value.key == "receivers.s.url"
    with pytest.raises(ConfigError, match="not both"):
        Secret.resolve("x", env="X", key="k")
    with pytest.raises(ConfigError, match="required"):
        Secret.resolve(key="k")
    with pytest.raises(ConfigError, match="empty"):
        Secret.resolve("  ", key="k")


def test_a_bad_secret_url_is_reported_without_its_value() -> None:
    with pytest.raises(ConfigError) as caught:
        SlackReceiver("s", url_env="URL", environ={"URL": f"ftp://x/{TOKEN}"})
    assert TOKEN not in str(caught.value)
    assert "receivers.s.url" in str(caught.value)


def test_receivers_repr_shows_no_secret() -> None:
    made = [
        SlackReceiver("s", SLACK_URL),
        PagerDutyReceiver("p", TOKEN),
        WebhookReceiver("w", f"https://hook.example/{TOKEN}", secrets=["whsec_" + "QUJD" * 8]),
        AlertmanagerReceiver("a", "http://am:9093", bearer_token=TOKEN),
    ]
    for receiver in made:
        assert TOKEN not in repr(receiver)
        assert TOKEN not in repr(vars(receiver)) if hasattr(receiver, "__dict__") else True
        receiver.close()


def test_errors_and_results_never_carry_the_webhook_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Even when the server echoes the URL back, and with httpx logging at DEBUG."""
    echo = httpx.MockTransport(lambda request: httpx.Response(400, text=f"bad {request.url}"))
    receiver = SlackReceiver("slack", SLACK_URL, transport=echo, pacer=Pacer(100, 100))
    policy = DeliveryPolicy(RetryPolicy(), clock=FakeClock(), registry=CollectorRegistry())
    caplog.set_level(logging.DEBUG)
    result = policy.deliver(receiver, NOTE)
    assert not result.delivered
    assert result.error is not None
    assert "***" in result.error
    assert TOKEN not in result.error
    assert TOKEN not in repr(result)
    assert "HTTP Request: POST" in caplog.text  # httpx did log the request …
    assert TOKEN not in caplog.text  # … without the secret URL
    receiver.close()


def test_transport_errors_do_not_leak_the_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {request.url}", request=request)

    receiver = SlackReceiver("slack", SLACK_URL, transport=httpx.MockTransport(refuse),
                             pacer=Pacer(100, 100))
    policy = DeliveryPolicy(RetryPolicy(max_attempts=2, initial_backoff_s=0.01),
                            clock=FakeClock(), registry=CollectorRegistry())
    result = policy.deliver(receiver, NOTE)
    assert result.error_kind == "transport"
    assert result.error is not None
    assert TOKEN not in result.error
    receiver.close()


def test_build_receiver_from_configuration() -> None:
    environ = {"SLACK_WEBHOOK_URL": SLACK_URL, "PD_KEY": TOKEN, "HOOK_SECRET": "whsec_QUJDRA=="}
    slack = build_receiver("team", {"type": "slack", "url_env": "SLACK_WEBHOOK_URL",
                                    "trace_url": "https://tempo/{trace_id}",
                                    "timeout": "5s"}, environ=environ)
    assert isinstance(slack, SlackReceiver)
    assert slack.timeout_s == 5.0
    assert slack.trace_url_template == "https://tempo/{trace_id}"
    pd = build_receiver("oncall", {"type": "pagerduty", "routing_key_env": "PD_KEY",
                                   "send_resolved": True}, environ=environ)
    assert isinstance(pd, PagerDutyReceiver)
    hook = build_receiver("hook", {"type": "webhook", "url": "https://h.example/x",
                                   "secret_envs": ["HOOK_SECRET"], "max_alerts": 5},
                          environ=environ)
    assert isinstance(hook, WebhookReceiver)
    assert hook.max_alerts == 5
    am = build_receiver("am", {"type": "alertmanager", "url": "http://am:9093",
                               "firing_ttl": "5m"})
    assert isinstance(am, AlertmanagerReceiver)
    assert am.firing_ttl_s == 300.0
    assert isinstance(build_receiver("c", {"type": "console"}), ConsoleReceiver)
    for receiver in (slack, pd, hook, am):
        receiver.close()


@pytest.mark.parametrize(("config", "key"), [
    ({"type": "teams"}, "receivers.r.type"),
    ({}, "receivers.r.type"),
    ({"type": "slack", "url_env": "NOPE"}, "receivers.r.url"),
    ({"type": "slack", "url": SLACK_URL, "colour": "red"}, "receivers.r.colour"),
    ({"type": "slack", "url": SLACK_URL, "burst": "3"}, "receivers.r.burst"),
    ({"type": "slack", "url": SLACK_URL, "timeout": "soon"}, "receivers.r.timeout"),
    ({"type": "slack", "url": SLACK_URL, "trace_url": "https://t/{span}"},
     "receivers.r.trace_url"),
    ({"type": "webhook", "url": "https://h", "secrets": [1]}, "receivers.r.secrets"),
    ({"type": "webhook", "url": "https://h", "max_alerts": -1}, "receivers.r.max_alerts"),
    ({"type": "alertmanager"}, "receivers.r.url"),
    ({"type": "pagerduty", "routing_key": TOKEN, "url": "nope"}, "receivers.r.url"),
])
def test_configuration_errors_name_the_key(config: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_receiver("r", config, environ={})
    assert caught.value.key == key
    assert TOKEN not in str(caught.value)
