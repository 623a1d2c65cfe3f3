"""Slack against a real local HTTP server that answers as the fault matrix says (rows 1-8)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from stem_observe.notify.base import DeadLetter, DeliveryPolicy, RetryPolicy
from stem_observe.notify.clock import FakeClock, SystemClock
from stem_observe.notify.dispatch import Dispatcher
from stem_observe.notify.model import Alert, Notification, TaskSample
from stem_observe.notify.pacing import Pacer
from stem_observe.notify.pagerduty import PagerDutyReceiver
from stem_observe.notify.slack import SlackReceiver
from stem_observe.notify.webhook import WebhookReceiver
from tests.support.fault_server import FaultServer, PagerDutyMock, RateGate, Reply, slack_validator
from tests.support.wait import wait_for

Serve = Callable[..., FaultServer]
PATH = "/services/T0001/B0001/s3cr3tT0k3nXXXXXXXXXXXX"
HTML_500 = "<!DOCTYPE html><html><head><title>Server Error | Slack</title></head></html>"
RATE_LIMITED = '{"retry_after":1,"ok":false,"error":"rate_limited"}'


@pytest.fixture
def serve() -> Iterator[Serve]:
    with ExitStack() as stack:
        def start(*replies: Reply, **options: object) -> FaultServer:
            return stack.enter_context(FaultServer(*replies, **options))  # type: ignore[arg-type]
        yield start


class Bench:
    """A policy with small, real backoff and its own registry and dead letters."""

    def __init__(self, clock: SystemClock | FakeClock | None = None, **retry: float) -> None:
        self.registry = CollectorRegistry()
        self.dead: list[DeadLetter] = []
        self.clock = clock or SystemClock()
        options = {"initial_backoff_s": 0.05, "max_backoff_s": 0.2, "deadline_s": 10.0,
                   **retry}
        self.retry = RetryPolicy(**options)  # type: ignore[arg-type]
        self.policy = DeliveryPolicy(self.retry, clock=self.clock, registry=self.registry,
                                     dead_letter=self.dead.append)

    def count(self, outcome: str, receiver: str = "slack") -> float:
        return self.registry.get_sample_value(
            "stem_observe_notifications_total", {"receiver": receiver, "outcome": outcome}
        ) or 0.0


def alert(i: int = 0, **extra: object) -> Alert:
    return Alert(name="retry_spike", labels={"queue": f"q{i}", "task": "emails.send"},
                 value=float(i), threshold=1.0, samples=(TaskSample(f"t-{i}", "ab" * 16),),
                 **extra)  # type: ignore[arg-type]


def note(i: int = 0, receiver: str = "slack") -> Notification:
    return Notification(receiver=receiver, group_key=f"g{i}", alerts=(alert(i),))


def slack(server: FaultServer, clock: SystemClock | FakeClock | None = None,
          **options: object) -> SlackReceiver:
    return SlackReceiver("slack", server.url + PATH, clock=clock or SystemClock(),
                         trace_url_template="https://tempo/trace/{trace_id}",
                         timeout_s=2.0, **options)  # type: ignore[arg-type]


def test_429_with_retry_after_is_honoured(serve: Serve) -> None:
    """Row 1 (real time, Retry-After: 1): no request before it passed; one message."""
    server = serve(Reply(429, "rate_limited", {"Retry-After": "1"}), default=Reply(200, "ok"))
    bench = Bench()
    with slack(server, pacer=Pacer(1.0, 3)) as receiver:
        result = bench.policy.deliver(receiver, note())
    assert result.delivered
    limited, delivered = server.requests()
    assert limited.answered == 429
    assert delivered.at - limited.at >= 1.0
    assert len(server.answered(200)) == 1
    assert limited.body == delivered.body
    assert bench.count("rate_limited") == 1
    assert bench.count("sent") == 1


def test_429_retry_after_3_waits_3_seconds_on_the_policy_clock(serve: Serve) -> None:
    """Row 1 as written (3 s), on a fake clock: the wait is asked for, not slept."""
    server = serve(Reply(429, "rate_limited", {"Retry-After": "3"}), default=Reply(200, "ok"))
    clock = FakeClock()
    bench = Bench(clock)
    pacer = Pacer(1.0, 3)
    with slack(server, clock, pacer=pacer) as receiver:
        result = bench.policy.deliver(receiver, note())
        assert result.delivered
        assert clock.sleeps[0] == 3.0
        assert len(server.answered(200)) == 1
        assert len(server.requests()) == 2
    assert bench.count("rate_limited") == 1


def test_429_without_retry_after_uses_the_body_retry_after(serve: Serve) -> None:
    """Row 2: Slack's JSON body says retry_after 1: waited at least 1 s; one message."""
    server = serve(Reply(429, RATE_LIMITED, {"Content-Type": "application/json"}),
                   default=Reply(200, "ok"))
    bench = Bench()
    with slack(server, pacer=Pacer(100.0, 10)) as receiver:
        assert bench.policy.deliver(receiver, note()).delivered
    limited, delivered = server.requests()
    assert delivered.at - limited.at >= 1.0
    assert len(server.answered(200)) == 1


def test_429_without_any_hint_backs_off(serve: Serve) -> None:
    server = serve(Reply(429, "rate_limited"), default=Reply(200, "ok"))
    bench = Bench(FakeClock())
    with slack(server, bench.clock, pacer=Pacer(100.0, 10)) as receiver:
        assert bench.policy.deliver(receiver, note()).delivered
    assert 0.05 <= bench.clock.sleeps[0] <= 0.075  # type: ignore[union-attr]


def test_a_burst_is_paced_below_the_webhooks_rate_limit(serve: Serve) -> None:
    """Row 3, scaled to 20 messages/s so it runs in one second: the server enforces the
    rate with a small burst; zero 429s, all 20 delivered once, in order."""
    server = serve(responder=RateGate(rate_per_s=20.0, burst=3))
    registry = CollectorRegistry()
    receiver = slack(server, rate_per_s=20.0, burst=2)
    with Dispatcher([receiver], registry=registry,
                    retry=RetryPolicy(initial_backoff_s=0.05)) as dispatcher:
        for i in range(20):
            assert dispatcher.submit(note(i))
        assert dispatcher.flush(timeout_s=10)
    requests = server.requests()
    assert [r.answered for r in requests] == [200] * 20
    order = [json.loads(r.body)["text"].split("queue q")[1].split(",")[0] for r in requests]
    assert order == [str(i) for i in range(20)]
    assert requests[-1].at - requests[0].at >= (20 - 2) / 20.0 * 0.9


def test_html_500s_are_retried_with_backoff(serve: Serve) -> None:
    """Row 4: two HTML 500s then ok: spaced by at least the initial backoff, one message."""
    server = serve(Reply(500, HTML_500, {"Content-Type": "text/html"}),
                   Reply(500, HTML_500, {"Content-Type": "text/html"}),
                   default=Reply(200, "ok"))
    bench = Bench()
    with slack(server, pacer=Pacer(100.0, 10)) as receiver:
        result = bench.policy.deliver(receiver, note())
    assert (result.delivered, result.attempts) == (True, 3)
    first, second, third = server.requests()
    assert second.at - first.at >= 0.05
    assert third.at - second.at >= 0.1
    assert len(server.answered(200)) == 1
    assert bench.count("retried") == 2


def test_invalid_payload_is_permanent(serve: Serve) -> None:
    """Row 5: exactly one request; dead-lettered with the body in the error."""
    server = serve(default=Reply(400, "invalid_payload"))
    bench = Bench()
    sent = note()
    with slack(server) as receiver:
        result = bench.policy.deliver(receiver, sent)
    assert len(server.requests()) == 1
    assert not result.delivered
    assert result.error is not None
    assert "400: invalid_payload" in result.error
    assert [d.notification for d in bench.dead] == [sent]
    assert (bench.count("failed"), bench.count("dead_lettered")) == (1, 1)


@pytest.mark.parametrize(("status", "body"), [
    (404, "no_service"), (403, "action_prohibited"), (410, "channel_is_archived")])
def test_misconfigured_webhook_does_not_stop_other_receivers(
    serve: Serve, status: int, body: str,
) -> None:
    """Row 6: no retry, receiver flagged misconfigured; PagerDuty and a webhook in the same
    route still deliver."""
    bad = serve(default=Reply(status, body))
    pd_server = serve(responder=PagerDutyMock())
    hook_server = serve(default=Reply(200))
    receivers = [
        slack(bad),
        PagerDutyReceiver("pagerduty", "K" * 32, url=pd_server.url + "/v2/enqueue"),
        WebhookReceiver("webhook", hook_server.url + "/hook"),
    ]
    with Dispatcher(receivers, registry=CollectorRegistry(),
                    retry=RetryPolicy(initial_backoff_s=0.05)) as dispatcher:
        dispatcher.notify("g", [alert()])
        assert dispatcher.flush()
        health = dispatcher.health()
    assert len(bad.requests()) == 1
    assert health["slack"].state == "misconfigured"
    assert body in (health["slack"].last_error or "")
    assert health["pagerduty"].state == health["webhook"].state == "ok"
    assert len(pd_server.answered(202)) == 1
    assert len(hook_server.answered(200)) == 1


def test_a_200_whose_body_is_not_ok_is_a_permanent_failure(serve: Serve) -> None:
    """Row 7: ``200 no_text`` is not success, and no dedup record is written (the next
    flush sends again)."""
    server = serve(Reply(200, "no_text"), default=Reply(200, "ok"))
    with Dispatcher([slack(server)], registry=CollectorRegistry()) as dispatcher:
        dispatcher.notify("g", [alert()])
        assert dispatcher.flush()
        assert len(server.requests()) == 1
        assert dispatcher.health()["slack"].state == "misconfigured"
        assert "no_text" in (dispatcher.health()["slack"].last_error or "")
        (again,) = dispatcher.notify("g", [alert()])
        assert again.reason == "first"
        assert dispatcher.flush()
    assert [r.answered for r in server.requests()] == [200, 200]


def test_oversized_message_passes_a_validating_mock(serve: Serve) -> None:
    """Row 8: 60 alerts, > 45,000 characters, one 3,500-character section: accepted."""
    server = serve(responder=slack_validator)
    alerts = [alert(i, annotations={"summary": f"{i} " + "w" * 760}) for i in range(59)]
    alerts.append(alert(99, annotations={"summary": "big", "description": "d" * 3500}))
    bench = Bench()
    with slack(server) as receiver:
        result = bench.policy.deliver(
            receiver, Notification(receiver="slack", group_key="g", alerts=tuple(alerts)))
    assert result.delivered, result.error
    (request,) = server.requests()
    assert request.answered == 200
    assert "…and 12 more" in request.body.decode()


def test_the_validating_mock_rejects_what_slack_would(serve: Serve) -> None:
    server = serve(responder=slack_validator)
    bench = Bench()
    too_long: dict[str, Any] = {"text": "x", "blocks": [{"type": "section", "text": {
        "type": "mrkdwn", "text": "y" * 3001}}]}

    class Raw(SlackReceiver):
        def render(self, notification: Notification) -> dict[str, Any]:
            return too_long

    with Raw("slack", server.url + PATH) as receiver:
        result = bench.policy.deliver(receiver, note())
    assert not result.delivered
    assert "less than 3001" in (result.error or "")


def test_a_rate_limited_slack_does_not_delay_other_receivers(serve: Serve) -> None:
    """Row 1, last clause: while Slack waits out its Retry-After, the webhook is delivered."""
    limited = serve(Reply(429, "rate_limited", {"Retry-After": "1"}), default=Reply(200, "ok"))
    hook = serve(default=Reply(204))
    started = time.monotonic()
    receivers = [slack(limited, pacer=Pacer(1.0, 3)),
                 WebhookReceiver("webhook", hook.url + "/hook")]
    with Dispatcher(receivers, registry=CollectorRegistry()) as dispatcher:
        dispatcher.notify("g", [alert()])
        wait_for(lambda: hook.answered(204), timeout_s=5, message="webhook delivery")
        assert time.monotonic() - started < 0.9
        assert len(limited.answered(200)) == 0  # Slack is still waiting
        assert dispatcher.flush(timeout_s=5)
    assert len(limited.answered(200)) == 1
