"""PagerDuty Events v2 against a real local server that validates events and answers as the
fault matrix says (rows 9-13, and row 23's trigger/resolve pair)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
from prometheus_client import CollectorRegistry

from stem_observe.notify.base import DeliveryPolicy, RetryPolicy
from stem_observe.notify.clock import FakeClock, SystemClock
from stem_observe.notify.model import Alert, Notification
from stem_observe.notify.pacing import Pacer
from stem_observe.notify.pagerduty import MAX_EVENT_BYTES, PagerDutyReceiver
from tests.support.fault_server import FaultServer, PagerDutyMock, Reply

KEY = "R0UT1NGKEY0000000000000000000000"
GROUP = 'route/{queue="emails"}'
Serve = Callable[..., FaultServer]


@pytest.fixture
def serve() -> Iterator[Serve]:
    with ExitStack() as stack:
        def start(*replies: Reply, **options: object) -> FaultServer:
            return stack.enter_context(FaultServer(*replies, **options))  # type: ignore[arg-type]
        yield start


def event_note(*alerts: Alert, group_key: str = GROUP) -> Notification:
    return Notification(receiver="pd", group_key=group_key, alerts=alerts)


FIRING = Alert(name="failure_rate", labels={"queue": "emails", "severity": "warning"},
               value=0.2, threshold=0.05, starts_at=1_700_000_000.0)


def receiver(
    server: FaultServer, clock: SystemClock | FakeClock | None = None,
) -> PagerDutyReceiver:
    return PagerDutyReceiver("pd", KEY, url=server.url + "/v2/enqueue", timeout_s=2.0,
                             pacer=Pacer(100.0, 10), clock=clock or SystemClock(),
                             throttle_wait_s=30.0)


def policy(clock: SystemClock | FakeClock | None = None) -> DeliveryPolicy:
    return DeliveryPolicy(RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, deadline_s=120),
                          clock=clock or SystemClock(), registry=CollectorRegistry())


def test_202_is_success_and_the_returned_dedup_key_is_ours(serve: Serve) -> None:
    """Row 9."""
    mock = PagerDutyMock()
    server = serve(responder=mock)
    with receiver(server) as pd:
        result = policy().deliver(pd, event_note(FIRING))
    assert result.delivered
    assert result.status_code == 202
    expected = hashlib.sha256(GROUP.encode()).hexdigest()
    assert result.detail == {"dedup_key": expected}
    assert list(mock.open) == [expected]
    (request,) = server.requests()
    assert request.path == "/v2/enqueue"
    assert json.loads(request.body)["routing_key"] == KEY


def test_400_is_permanent_with_message_and_errors(serve: Serve) -> None:
    """Row 10: exactly one request; the error carries PagerDuty's message and errors."""
    body = json.dumps({"status": "invalid event", "message": "Event object is invalid",
                       "errors": ["'payload.summary' is missing or blank"]})
    server = serve(default=Reply(400, body, {"Content-Type": "application/json"}))
    with receiver(server) as pd:
        result = policy().deliver(pd, event_note(FIRING))
    assert len(server.requests()) == 1
    assert not result.delivered
    assert result.error is not None
    assert "Event object is invalid: 'payload.summary' is missing or blank" in result.error


def test_429_twice_then_202_keeps_one_dedup_key(serve: Serve) -> None:
    """Row 11: retried 30 s apart (on a fake clock), the same dedup_key every attempt, one
    open alert."""
    mock = PagerDutyMock()
    too_many = Reply(429, '{"status":"throttle event","message":"Requests for this service '
                          'are arriving too quickly."}', {"Content-Type": "application/json"})
    server = serve(too_many, too_many, responder=mock)
    clock = FakeClock()
    with receiver(server, clock) as pd:
        result = policy(clock).deliver(pd, event_note(FIRING))
    assert (result.delivered, result.attempts) == (True, 3)
    assert clock.sleeps == [30.0, 30.0]
    keys = {json.loads(r.body)["dedup_key"] for r in server.requests()}
    assert len(keys) == 1
    assert len(mock.open) == 1


def test_502_then_a_reset_then_202_sends_the_same_event(serve: Serve) -> None:
    """Row 12: a 502, a connection dropped without an answer, then 202."""
    mock = PagerDutyMock()
    server = serve(Reply(502, "<html>Bad Gateway</html>", {"Content-Type": "text/html"}),
                   Reply(drop=True), responder=mock)
    with receiver(server) as pd:
        result = policy().deliver(pd, event_note(FIRING))
    assert (result.delivered, result.attempts) == (True, 3)
    bodies = {r.body for r in server.requests()}
    assert len(bodies) == 1  # identical payload and dedup_key
    assert [r.answered for r in server.requests()] == [502, None, 202]
    assert len(mock.open) == 1


def test_bad_input_passes_the_mocks_schema_validation(serve: Serve) -> None:
    """Row 13: 1,500-char summary, severity ``high``, 400-char group key, 600 KB details."""
    mock = PagerDutyMock()
    server = serve(responder=mock)
    alert = Alert(name="x", labels={"queue": "emails", "severity": "high"},
                  annotations={"summary": "s" * 1500, "dump": "d" * 600_000})
    with receiver(server) as pd:
        result = policy().deliver(pd, event_note(alert, group_key="k" * 400))
    assert result.delivered, result.error
    (request,) = server.requests()
    assert len(request.body) <= MAX_EVENT_BYTES
    event = json.loads(request.body)
    assert len(event["payload"]["summary"]) == 1024
    assert event["payload"]["summary"].endswith("…")
    assert event["payload"]["severity"] == "critical"
    assert len(event["dedup_key"]) == 64


def test_trigger_then_resolve_share_the_dedup_key(serve: Serve) -> None:
    """Row 23 (PagerDuty half): the resolve closes the alert the trigger opened."""
    mock = PagerDutyMock()
    server = serve(responder=mock)
    resolved = Alert(name=FIRING.name, labels=FIRING.labels, status="resolved",
                     starts_at=FIRING.starts_at, ends_at=FIRING.starts_at + 60)
    with receiver(server) as pd:
        delivery = policy()
        assert delivery.deliver(pd, event_note(FIRING)).delivered
        assert mock.open
        assert delivery.deliver(pd, event_note(resolved)).delivered
    trigger, resolve = (json.loads(r.body) for r in server.requests())
    assert (trigger["event_action"], resolve["event_action"]) == ("trigger", "resolve")
    assert trigger["dedup_key"] == resolve["dedup_key"]
    assert mock.open == {}
