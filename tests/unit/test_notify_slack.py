"""Slack messages: content, Block Kit limits (matrix row 8) and how answers are read."""

from __future__ import annotations

import json

import httpx
import pytest

from stem_observe.notify.base import DeliveryError
from stem_observe.notify.clock import FakeClock
from stem_observe.notify.model import Alert, Notification, TaskSample
from stem_observe.notify.pacing import Pacer
from stem_observe.notify.slack import SlackReceiver, render_slack
from tests.support.fault_server import slack_problem

URL = "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX"
TEMPLATE = "https://tempo.example/trace/{trace_id}"


def spike(**extra: object) -> Alert:
    fields: dict[str, object] = {
        "name": "retry_spike", "labels": {"queue": "emails", "task": "emails.send"},
        "annotations": {"summary": "Retries spiking on emails",
                        "description": "Retry rate is 8x its baseline"},
        "value": 42.0, "baseline": 5.0, "starts_at": 1_700_000_000.0,
        "samples": tuple(TaskSample(f"task-{i}", f"{i:032x}") for i in range(7)),
        "dashboard_url": "https://grafana.example/d/stem?var-queue=emails",
        "runbook_url": "https://runbooks.example/retry-spike",
        "cli_hint": "stem-observe dlq list --queue emails",
    }
    fields.update(extra)
    return Alert(**fields)  # type: ignore[arg-type]


def note(*alerts: Alert, receiver: str = "slack") -> Notification:
    return Notification(receiver=receiver, group_key="{}:{queue=\"emails\"}", alerts=alerts)


def section_texts(message: dict[str, object]) -> list[str]:
    blocks = message["blocks"]
    assert isinstance(blocks, list)
    return [b["text"]["text"] for b in blocks if b["type"] == "section"]


def test_the_message_says_what_where_value_samples_links_and_command() -> None:
    message = render_slack(note(spike()), trace_url_template=TEMPLATE)
    assert slack_problem(json.dumps(message).encode()) is None
    header = message["blocks"][0]
    assert header["type"] == "header"
    assert "[FIRING:1] retry_spike" in header["text"]["text"]
    (text,) = section_texts(message)
    assert "Retries spiking on emails" in text
    assert "Retry rate is 8x its baseline" in text
    assert "*Where:* queue emails, task emails.send" in text
    assert "*Value:* 42 (baseline 5)" in text
    for i in range(5):
        assert f"<https://tempo.example/trace/{i:032x}|task-{i}>" in text
    assert "task-5" not in text  # five samples at most
    assert "<https://grafana.example/d/stem?var-queue=emails|Dashboard>" in text
    assert "<https://runbooks.example/retry-spike|Runbook>" in text
    assert "`stem-observe dlq list --queue emails`" in text
    assert "Retries spiking on emails" in message["text"]


def test_samples_without_a_template_are_listed_as_ids_and_mrkdwn_is_escaped() -> None:
    message = render_slack(note(spike(annotations={"summary": "a <b> & c"})))
    (text,) = section_texts(message)
    assert "`task-0`" in text
    assert "tempo" not in text
    assert "a &lt;b&gt; &amp; c" in text


def test_oversized_input_is_cut_to_slacks_limits() -> None:
    """Row 8: 60 alerts, 45,000 characters of text, one 3,500-character section."""
    alerts = [spike(labels={"queue": f"q{i}"},
                    annotations={"summary": f"alert {i} " + "y" * 700}) for i in range(59)]
    alerts.append(spike(labels={"queue": "big"},
                        annotations={"summary": "big one", "description": "z" * 3500}))
    message = render_slack(note(*alerts), trace_url_template=TEMPLATE)
    assert sum(len(a.summary) for a in alerts) > 40_000
    assert slack_problem(json.dumps(message).encode()) is None
    blocks = message["blocks"]
    assert len(blocks) == 50
    assert blocks[-1]["type"] == "context"
    assert blocks[-1]["elements"][0]["text"] == "…and 12 more"  # 60 - 48 shown
    assert all(len(t) <= 3000 for t in section_texts(message))
    assert len(message["text"]) <= 40_000
    assert message["text"].rstrip().endswith("more")


def test_one_huge_section_is_cut_within_3000_characters() -> None:
    message = render_slack(note(spike(annotations={"summary": "s" * 5000,
                                                   "description": "d" * 3500})))
    (text,) = section_texts(message)
    assert len(text) <= 3000
    assert len(message["blocks"][0]["text"]["text"]) <= 150
    assert slack_problem(json.dumps(message).encode()) is None


def test_a_long_header_is_cut_to_150() -> None:
    message = render_slack(note(spike(name="n" * 400)))
    assert len(message["blocks"][0]["text"]["text"]) == 150


def test_resolved_alerts_come_after_firing_ones() -> None:
    resolved = spike(labels={"queue": "old"}, status="resolved", ends_at=1_700_000_100.0)
    message = render_slack(note(resolved, spike()))
    texts = section_texts(message)
    assert texts[0].startswith(":red_circle:")
    assert texts[1].startswith(":large_green_circle:")
    assert "*Resolved:* 2023-11-14T22:15:00.000Z" in texts[1]


def receiver(handler: httpx.MockTransport) -> SlackReceiver:
    return SlackReceiver("slack", URL, transport=handler, clock=FakeClock(),
                         pacer=Pacer(1000.0, 1000))


def test_send_resolved_defaults_to_false_like_alertmanager() -> None:
    made = receiver(httpx.MockTransport(lambda r: httpx.Response(200, text="ok")))
    assert made.send_resolved is False
    assert SlackReceiver("s", URL, send_resolved=True).send_resolved


@pytest.mark.parametrize(("status", "body", "content_type", "ok", "retryable"), [
    (200, "ok", "text/html", True, None),
    (200, '{"ok": true}', "application/json", True, None),
    (200, "no_text", "text/html", False, False),
    (200, "", "text/html", False, False),
    (200, '{"ok": false, "error": "invalid_blocks"}', "application/json", False, False),
    (200, "{not json", "application/json", False, True),
    (500, "<html><body>Server Error | Slack</body></html>", "text/html", False, True),
    (429, '{"retry_after":1,"ok":false,"error":"rate_limited"}', "application/json",
     False, True),
    (400, "invalid_payload", "text/html", False, False),
    (404, "no_service", "text/html", False, False),
    (307, "", "text/html", False, False),
])
def test_answers_are_read_as_slack_documents_them(
    status: int, body: str, content_type: str, ok: bool, retryable: bool | None,
) -> None:
    made = receiver(httpx.MockTransport(lambda r: httpx.Response(
        status, text=body, headers={"Content-Type": content_type})))
    if ok:
        assert made.send(note(spike())).status_code == status
        return
    with pytest.raises(DeliveryError) as caught:
        made.send(note(spike()))
    assert caught.value.retryable is retryable
    assert caught.value.status_code == status
    if body and status != 200:
        assert body[:20] in str(caught.value)
    if status == 429:
        assert caught.value.retry_after_s == 1.0
        assert caught.value.kind == "rate_limited"


def test_the_request_is_json_with_text_and_blocks() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text="ok")

    made = receiver(httpx.MockTransport(answer))
    made.send(note(spike()))
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == URL
    assert request.headers["content-type"].startswith("application/json")
    body = json.loads(request.content)
    assert set(body) == {"text", "blocks"}
