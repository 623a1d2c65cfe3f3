"""The dispatcher with real receivers on real local servers: one receiver's failure never
delays another, and the dedup rules hold end to end (matrix rows 14, 22, 23)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
from prometheus_client import CollectorRegistry

from stem_observe.notify.base import Receiver, RetryPolicy
from stem_observe.notify.dispatch import Dispatcher
from stem_observe.notify.model import Alert
from stem_observe.notify.pacing import Pacer
from stem_observe.notify.pagerduty import PagerDutyReceiver
from stem_observe.notify.slack import SlackReceiver
from stem_observe.notify.webhook import WebhookReceiver
from tests.support.fault_server import FaultServer, PagerDutyMock, Reply
from tests.support.wait import wait_for

Serve = Callable[..., FaultServer]
FIRING = Alert(name="failure_rate", labels={"queue": "emails"}, value=0.3, threshold=0.1,
               starts_at=1_700_000_000.0)
RESOLVED = dataclasses.replace(FIRING, status="resolved", ends_at=1_700_000_600.0)


@pytest.fixture
def serve() -> Iterator[Serve]:
    with ExitStack() as stack:
        def start(*replies: Reply, **options: object) -> FaultServer:
            return stack.enter_context(FaultServer(*replies, **options))  # type: ignore[arg-type]
        yield start


class Route:
    """Slack, PagerDuty and a webhook on three local servers behind one dispatcher."""

    def __init__(self, serve: Serve, *, hook_reply: Reply | None = None,
                 hook_timeout_s: float = 2.0) -> None:
        self.slack = serve(default=Reply(200, "ok"))
        self.pd_mock = PagerDutyMock()
        self.pd = serve(responder=self.pd_mock)
        self.hook = serve(default=hook_reply or Reply(200))
        self.registry = CollectorRegistry()
        receivers: list[Receiver] = [
            SlackReceiver("slack", self.slack.url + "/services/T/B/x", pacer=Pacer(100, 10)),
            PagerDutyReceiver("pagerduty", "K" * 32, url=self.pd.url + "/v2/enqueue"),
            WebhookReceiver("webhook", self.hook.url + "/in", timeout_s=hook_timeout_s),
        ]
        self.dispatcher = Dispatcher(
            receivers, registry=self.registry,
            retry=RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.1, max_attempts=50,
                              deadline_s=30.0))

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def test_a_hanging_webhook_delays_no_other_receiver(serve: Serve) -> None:
    route = Route(serve, hook_reply=Reply(hang=True), hook_timeout_s=1.0)
    started = time.monotonic()
    dispatcher = route.dispatcher
    dispatcher.start()
    dispatcher.notify("g", [FIRING])
    wait_for(lambda: route.slack.answered(200) and route.pd.answered(202), timeout_s=5,
             message="slack and pagerduty deliveries")
    assert time.monotonic() - started < 0.9  # before the webhook's first timeout
    wait_for(route.hook.requests, timeout_s=5, message="the webhook attempt")
    # more notifications for the others go straight through; the webhook's queue grows
    dispatcher.notify("h", [FIRING])
    wait_for(lambda: len(route.slack.answered(200)) == 2, timeout_s=5, message="2nd slack")
    assert route.value("stem_observe_notification_queue_depth", receiver="webhook") == 1
    closing = time.monotonic()
    dispatcher.close(timeout_s=0.1)
    assert time.monotonic() - closing < 2.5  # waits end at once; the request times out
    assert route.value("stem_observe_notification_queue_depth", receiver="webhook") == 0
    assert route.value("stem_observe_notifications_total", receiver="webhook",
                       outcome="dead_lettered") == 2
    assert route.value("stem_observe_notifications_total", receiver="slack",
                       outcome="sent") == 2
    assert route.value("stem_observe_notifications_total", receiver="webhook",
                       outcome="sent") == 0


def test_a_group_resolved_before_its_first_flush_notifies_nobody(serve: Serve) -> None:
    """Rows 14 and 22: only resolved alerts for a group never notified: no request."""
    route = Route(serve)
    with route.dispatcher as dispatcher:
        assert dispatcher.notify("g", [RESOLVED]) == []
        assert dispatcher.flush()
    assert route.slack.requests() == route.pd.requests() == route.hook.requests() == []


def test_fire_resolve_refire_end_to_end(serve: Serve) -> None:
    """Row 23: Slack (send_resolved false) gets one message per firing; PagerDuty a trigger
    and a resolve with one dedup_key; a re-fire is a first notification everywhere."""
    route = Route(serve)
    with route.dispatcher as dispatcher:
        dispatcher.notify("g", [FIRING])
        assert dispatcher.flush()
        dispatcher.notify("g", [FIRING])  # unchanged: nothing
        dispatcher.notify("g", [RESOLVED])
        assert dispatcher.flush()
        dispatcher.notify("g", [RESOLVED])  # already resolved: nothing
        assert dispatcher.flush()
        assert len(route.slack.requests()) == 1
        events = [json.loads(r.body) for r in route.pd.requests()]
        assert [e["event_action"] for e in events] == ["trigger", "resolve"]
        assert events[0]["dedup_key"] == events[1]["dedup_key"]
        assert route.pd_mock.open == {}
        hooks = [json.loads(r.body) for r in route.hook.requests()]
        assert [(h["status"], h["notification_reason"]) for h in hooks] == [
            ("firing", "first notification"), ("resolved", "all alerts resolved")]

        dispatcher.notify("g", [dataclasses.replace(FIRING, starts_at=1_700_001_000.0)])
        assert dispatcher.flush()
    assert len(route.slack.requests()) == 2
    events = [json.loads(r.body) for r in route.pd.requests()]
    assert [e["event_action"] for e in events] == ["trigger", "resolve", "trigger"]
    assert len({e["dedup_key"] for e in events}) == 1
    assert len(route.pd_mock.open) == 1
    last = json.loads(route.hook.requests()[-1].body)
    assert last["notification_reason"] == "first notification"
    ids = [r.headers["webhook-id"] for r in route.hook.requests()]
    assert len(set(ids)) == 3


def test_a_failing_webhook_is_retried_until_it_recovers_and_others_get_no_extras(
    serve: Serve,
) -> None:
    """Alertmanager's TestRetry: one webhook fails for a while; the healthy receivers get
    exactly one notification each; the failing one gets it once it answers 2xx."""
    route = Route(serve, hook_reply=Reply(200))
    route.hook.script([Reply(503), Reply(drop=True), Reply(500, "<html>oops</html>")])
    with route.dispatcher as dispatcher:
        dispatcher.notify("g", [FIRING])
        assert dispatcher.flush(timeout_s=10)
    assert len(route.slack.requests()) == 1
    assert len(route.pd.requests()) == 1
    assert [r.answered for r in route.hook.requests()] == [503, None, 500, 200]
    assert len({r.headers["webhook-id"] for r in route.hook.requests()}) == 1
