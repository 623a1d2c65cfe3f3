"""PagerDuty Events v2 bodies: one dedup_key per group, field limits (matrix row 13)."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from stem_observe.errors import ConfigError
from stem_observe.notify.base import DeliveryError
from stem_observe.notify.clock import FakeClock
from stem_observe.notify.model import Alert, Notification, TaskSample
from stem_observe.notify.pacing import Pacer
from stem_observe.notify.pagerduty import (
    MAX_EVENT_BYTES,
    PagerDutyReceiver,
    dedup_key,
    map_severity,
    render_event,
)
from tests.support.fault_server import pagerduty_problems

KEY = "R0UT1NGKEY0000000000000000000000"
TEMPLATE = "https://tempo.example/trace/{trace_id}"


def fail_rate(**extra: object) -> Alert:
    fields: dict[str, object] = {
        "name": "failure_rate", "labels": {"queue": "emails", "task": "emails.send",
                                           "severity": "critical"},
        "annotations": {"summary": "Failures above 5%"}, "value": 0.12, "threshold": 0.05,
        "starts_at": 1_700_000_000.0, "samples": (TaskSample("t-1", "ab" * 16),),
        "dashboard_url": "https://grafana.example/d/stem",
        "runbook_url": "https://runbooks.example/failure-rate",
        "cli_hint": "stem-observe observe --queue emails",
    }
    fields.update(extra)
    return Alert(**fields)  # type: ignore[arg-type]


def note(*alerts: Alert, group_key: str = "route/{queue=\"emails\"}") -> Notification:
    return Notification(receiver="pd", group_key=group_key, alerts=alerts)


def test_trigger_event_fields() -> None:
    event = render_event(note(fail_rate()), routing_key=KEY, trace_url_template=TEMPLATE)
    assert pagerduty_problems(json.dumps(event).encode()) == []
    assert event["event_action"] == "trigger"
    assert event["dedup_key"] == hashlib.sha256(b'route/{queue="emails"}').hexdigest()
    payload = event["payload"]
    assert payload["summary"] == (
        "[FIRING:1] failure_rate: Failures above 5% = 0.12 (threshold 0.05)")
    assert payload["severity"] == "critical"
    assert payload["component"] == "emails"
    assert payload["group"] == "emails.send"
    assert payload["class"] == "failure_rate"
    assert payload["timestamp"] == "2023-11-14T22:13:20.000Z"
    details = payload["custom_details"]["firing"][0]
    assert details["sample_tasks"][0]["trace_url"] == f"https://tempo.example/trace/{'ab' * 16}"
    assert details["inspect"] == "stem-observe observe --queue emails"
    assert {"href": "https://runbooks.example/failure-rate", "text": "Runbook"} in event["links"]
    assert event["client_url"] == "https://grafana.example/d/stem"


def test_trigger_and_resolve_share_one_dedup_key() -> None:
    trigger = render_event(note(fail_rate()), routing_key=KEY)
    resolve = render_event(note(fail_rate(status="resolved")), routing_key=KEY)
    assert resolve == {"routing_key": KEY, "event_action": "resolve",
                       "dedup_key": trigger["dedup_key"]}
    assert pagerduty_problems(json.dumps(resolve).encode()) == []
    mixed = render_event(note(fail_rate(), fail_rate(labels={"queue": "b"}, status="resolved")),
                         routing_key=KEY)
    assert mixed["event_action"] == "trigger"  # resolve only once every alert resolved


def test_bad_input_is_brought_within_pagerdutys_limits() -> None:
    """Row 13: summary 1,500 chars, severity ``high``, a 400-char group key, 600 KB details."""
    alert = fail_rate(labels={"queue": "emails", "severity": "high"},
                      annotations={"summary": "é" * 1500, "blob": "x" * 600_000})
    event = render_event(note(alert, group_key="k" * 400), routing_key=KEY)
    body = json.dumps(event, ensure_ascii=False).encode()
    assert pagerduty_problems(body) == []
    assert len(body) <= MAX_EVENT_BYTES
    summary = event["payload"]["summary"]
    assert len(summary) == 1024
    assert summary.endswith("…")
    assert event["payload"]["severity"] == "critical"
    assert len(event["dedup_key"]) == 64
    int(event["dedup_key"], 16)
    assert "custom_details removed" in event["payload"]["custom_details"]["error"]
    assert str(MAX_EVENT_BYTES) in event["payload"]["custom_details"]["error"]


@pytest.mark.parametrize(("given", "expected"), [
    ("critical", "critical"), ("HIGH", "critical"), ("page", "critical"), ("p1", "critical"),
    ("error", "error"), ("major", "error"), ("warn", "warning"), ("medium", "warning"),
    ("info", "info"), ("low", "info"), (None, "error"), ("", "error"), ("weird", "error"),
])
def test_severity_is_mapped_into_the_enum(given: str | None, expected: str) -> None:
    assert map_severity(given) == expected
    assert map_severity("weird", "warning") == "warning"


def test_the_receiver_validates_its_configuration() -> None:
    with pytest.raises(ConfigError, match=r"receivers\.pd\.routing_key"):
        PagerDutyReceiver("pd", "")
    with pytest.raises(ConfigError, match=r"receivers\.pd\.severity"):
        PagerDutyReceiver("pd", KEY, severity="high")
    with pytest.raises(ConfigError, match=r"receivers\.pd\.url"):
        PagerDutyReceiver("pd", KEY, url="ftp://x")
    with pytest.raises(ConfigError, match=r"receivers\.pd\.routing_key.*PD_KEY"):
        PagerDutyReceiver("pd", routing_key_env="PD_KEY", environ={})
    made = PagerDutyReceiver("pd", routing_key_env="PD_KEY", environ={"PD_KEY": KEY})
    assert made.render(note(fail_rate()))["routing_key"] == "***"
    assert made.send_resolved is True
    made.close()


def test_a_400_reports_pagerdutys_message_and_errors() -> None:
    body = {"status": "invalid event", "message": "Event object is invalid",
            "errors": ["Length of 'routing_key' is incorrect (should be 32 characters)"]}
    made = PagerDutyReceiver(
        "pd", KEY, url="http://pd.local/v2/enqueue", clock=FakeClock(), pacer=Pacer(100, 100),
        transport=httpx.MockTransport(lambda r: httpx.Response(400, json=body)))
    with pytest.raises(DeliveryError) as caught:
        made.send(note(fail_rate()))
    assert not caught.value.retryable
    assert "Event object is invalid: Length of 'routing_key' is incorrect" in str(caught.value)


def test_dedup_key_is_the_sha256_of_the_group_key() -> None:
    assert dedup_key("g") == hashlib.sha256(b"g").hexdigest()
