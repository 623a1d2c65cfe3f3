"""Generic webhook and Alertmanager API receivers against real local servers: hangs,
dropped connections, 410, redirects, signatures (matrix rows 15-18)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
from prometheus_client import CollectorRegistry

from stem_observe.notify.alertmanager import AlertmanagerReceiver
from stem_observe.notify.base import DeliveryPolicy, RetryPolicy
from stem_observe.notify.clock import FakeClock, SystemClock
from stem_observe.notify.dispatch import Dispatcher
from stem_observe.notify.model import Alert, Notification
from stem_observe.notify.signing import WebhookVerifier
from stem_observe.notify.webhook import WebhookReceiver
from tests.support.fault_server import FaultServer, Reply, Request

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NEXT_SECRET = "whsec_" + base64.b64encode(b"rotated-secret-0123456789").decode()
Serve = Callable[..., FaultServer]


@pytest.fixture
def serve() -> Iterator[Serve]:
    with ExitStack() as stack:
        def start(*replies: Reply, **options: object) -> FaultServer:
            return stack.enter_context(FaultServer(*replies, **options))  # type: ignore[arg-type]
        yield start


ALERT = Alert(name="worker_down", labels={"worker": "w-1", "queue": "emails"},
              annotations={"summary": "Worker w-1 silent"}, starts_at=1_700_000_000.0)
NOTE = Notification(receiver="hook", group_key="{}:{worker=\"w-1\"}", alerts=(ALERT,))


def expected_signature(secret: str, request: Request) -> str:
    """Computed from the Standard Webhooks spec, independently of the code under test."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = (f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}."
              .encode() + request.body)
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def hook(server: FaultServer, clock: SystemClock | FakeClock | None = None,
         **options: object) -> WebhookReceiver:
    options.setdefault("secrets", [SECRET])
    return WebhookReceiver("hook", server.url + "/alerts", clock=clock or SystemClock(),
                           **options)  # type: ignore[arg-type]


def policy(clock: SystemClock | FakeClock | None = None, **retry: float) -> DeliveryPolicy:
    options = {"initial_backoff_s": 0.05, "max_backoff_s": 0.2, "deadline_s": 10.0, **retry}
    return DeliveryPolicy(RetryPolicy(**options),  # type: ignore[arg-type]
                          clock=clock or SystemClock(), registry=CollectorRegistry())


def test_signed_requests_verify_independently_and_with_the_reference_library(
    serve: Serve,
) -> None:
    """Row 18: both signatures of a rotation are present, space-separated, and verify."""
    server = serve(default=Reply(200))
    with hook(server, secrets=[NEXT_SECRET, SECRET]) as receiver:
        assert policy().deliver(receiver, NOTE).delivered
    (request,) = server.requests()
    assert request.headers["webhook-signature"] == " ".join(
        expected_signature(s, request) for s in (NEXT_SECRET, SECRET))
    assert request.headers["webhook-id"] == NOTE.notification_id
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 5
    assert WebhookVerifier([SECRET]).verify(request.headers, request.body) == (
        NOTE.notification_id)
    payload = json.loads(request.body)
    assert payload["version"] == "4"
    assert payload["alerts"][0]["labels"]["worker"] == "w-1"
    standardwebhooks = pytest.importorskip("standardwebhooks")
    for secret in (SECRET, NEXT_SECRET):
        assert standardwebhooks.Webhook(secret).verify(request.body.decode(), request.headers)


def test_a_server_that_never_answers_times_out_and_is_retried(serve: Serve) -> None:
    """Row 15: the per-request timeout fires, the retry keeps webhook-id, and recomputes
    timestamp and signature; total time is bounded."""
    server = serve(Reply(hang=True), default=Reply(200))
    clock = FakeClock(wall_start=time.time())
    started = time.monotonic()
    with hook(server, clock, timeout_s=0.3) as receiver:
        result = policy(clock, initial_backoff_s=2.0, max_backoff_s=5.0).deliver(receiver, NOTE)
    elapsed = time.monotonic() - started
    assert (result.delivered, result.attempts) == (True, 2)
    assert 0.3 <= elapsed < 3.0
    hung, answered = server.requests()
    assert (hung.answered, answered.answered) == (None, 200)
    assert hung.headers["webhook-id"] == answered.headers["webhook-id"] == NOTE.notification_id
    assert int(answered.headers["webhook-timestamp"]) >= int(hung.headers["webhook-timestamp"]) + 2
    assert hung.headers["webhook-signature"] != answered.headers["webhook-signature"]
    for request in (hung, answered):
        assert request.headers["webhook-signature"] == expected_signature(SECRET, request)
    assert hung.body == answered.body


def test_a_hanging_webhook_gives_up_within_its_deadline(serve: Serve) -> None:
    server = serve(default=Reply(hang=True))
    started = time.monotonic()
    with hook(server, timeout_s=0.2) as receiver:
        result = policy(max_attempts=3).deliver(receiver, NOTE)
    assert not result.delivered
    assert result.error_kind == "timeout"
    assert len(server.requests()) == 3
    assert time.monotonic() - started < 2.5


def test_a_dropped_connection_is_retried_with_the_same_id(serve: Serve) -> None:
    """Row 16: the server read the request and closed without answering: the retry carries
    the same webhook-id, so the consumer can drop the duplicate; one logical delivery."""
    server = serve(Reply(drop=True), default=Reply(202))
    registry = CollectorRegistry()
    delivery = DeliveryPolicy(RetryPolicy(initial_backoff_s=0.05), registry=registry)
    with hook(server) as receiver:
        result = delivery.deliver(receiver, NOTE)
    assert (result.delivered, result.attempts) == (True, 2)
    first, second = server.requests()
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    verifier = WebhookVerifier([SECRET])
    verifier.verify(first.headers, first.body)
    with pytest.raises(Exception, match="already received"):
        verifier.verify(second.headers, second.body)

    def count(outcome: str) -> float:
        return registry.get_sample_value(
            "stem_observe_notifications_total", {"receiver": "hook", "outcome": outcome}) or 0
    assert (count("sent"), count("retried"), count("failed")) == (1, 1, 0)


def test_410_disables_the_endpoint(serve: Serve) -> None:
    """Row 17: after 410 Gone nothing more is sent; the receiver is reported disabled."""
    server = serve(default=Reply(410, "endpoint removed"))
    with Dispatcher([hook(server)], registry=CollectorRegistry()) as dispatcher:
        dispatcher.notify("g1", [ALERT])
        assert dispatcher.flush()
        health = dispatcher.health()["hook"]
        assert health.state == "disabled"
        assert "410" in (health.last_error or "")
        assert "endpoint removed" in (health.last_error or "")
        dispatcher.notify("g2", [ALERT])
        assert dispatcher.flush()
        assert dispatcher.health()["hook"].state == "disabled"
        receiver = dispatcher.receivers["hook"]
        assert isinstance(receiver, WebhookReceiver)
        assert receiver.disabled
    assert len(server.requests()) == 1


def test_a_redirect_is_a_failure_and_is_not_followed(serve: Serve) -> None:
    """Row 17: 301 is not followed; the target of Location sees nothing."""
    target = serve(default=Reply(200))
    server = serve(default=Reply(301, headers={"Location": target.url + "/elsewhere"}))
    with hook(server) as receiver:
        result = policy().deliver(receiver, NOTE)
    assert not result.delivered
    assert (result.status_code, result.error_kind) == (301, "redirect")
    assert len(server.requests()) == 1
    assert target.requests() == []


def test_a_400_is_permanent_with_its_body(serve: Serve) -> None:
    server = serve(default=Reply(400, '{"error":"unknown field alerts[0].x"}'))
    with hook(server) as receiver:
        result = policy().deliver(receiver, NOTE)
    assert len(server.requests()) == 1
    assert "unknown field alerts[0].x" in (result.error or "")


def test_429_and_503_are_retried_honouring_retry_after(serve: Serve) -> None:
    server = serve(Reply(429, headers={"Retry-After": "2"}), Reply(503), default=Reply(200))
    clock = FakeClock(wall_start=time.time())
    with hook(server, clock) as receiver:
        result = policy(clock).deliver(receiver, NOTE)
    assert (result.delivered, result.attempts) == (True, 3)
    assert clock.sleeps[0] == 2.0


def test_alertmanager_api_receives_postable_alerts(serve: Serve) -> None:
    server = serve(Reply(500, "try later"), default=Reply(200))
    resolved = Alert(name="dlq_growing", labels={"queue": "sms"}, status="resolved",
                     starts_at=1_700_000_000.0, ends_at=1_700_000_060.0)
    note = Notification(receiver="am", group_key="g", alerts=(ALERT, resolved))
    with AlertmanagerReceiver("am", server.url, timeout_s=2.0) as receiver:
        result = policy().deliver(receiver, note)
    assert (result.delivered, result.attempts) == (True, 2)
    request = server.requests()[-1]
    assert request.path == "/api/v2/alerts"
    body = json.loads(request.body)
    assert body[0] == {
        "labels": {"alertname": "worker_down", "worker": "w-1", "queue": "emails"},
        "annotations": {"summary": "Worker w-1 silent"},
        "startsAt": "2023-11-14T22:13:20.000Z", "generatorURL": "",
    }
    assert body[1]["endsAt"] == "2023-11-14T22:14:20.000Z"


def test_alertmanager_validation_errors_are_permanent(serve: Serve) -> None:
    server = serve(default=Reply(400, '{"code":400,"message":"start time must be before end"}'))
    with AlertmanagerReceiver("am", server.url + "/", bearer_token="tok-123456") as receiver:
        result = policy().deliver(receiver, NOTE)
    assert len(server.requests()) == 1
    assert "start time must be before end" in (result.error or "")
    assert server.requests()[0].headers["authorization"] == "Bearer tok-123456"
