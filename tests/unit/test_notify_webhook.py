"""Generic webhook: Alertmanager v4 payload, Standard Webhooks signatures (matrix rows 18
and 19) checked against an independent computation and the reference library."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import httpx
import pytest

from stem_observe.errors import ConfigError
from stem_observe.notify.clock import FakeClock, SystemClock
from stem_observe.notify.model import Alert, Notification
from stem_observe.notify.signing import (
    SignatureError,
    WebhookSigner,
    WebhookVerifier,
    generate_secret,
    hub_signature_256,
)
from stem_observe.notify.webhook import WebhookReceiver, render_webhook

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER = "whsec_" + base64.b64encode(b"another-secret-of-24-bytes!!").decode()


def independent_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """Standard Webhooks v1 signature, computed here from the spec, not from our code."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def alerts() -> tuple[Alert, ...]:
    return (
        Alert(name="dlq_growing", labels={"queue": "emails"}, annotations={"summary": "a"},
              starts_at=1_700_000_000.0, generator_url="https://grafana.example/x"),
        Alert(name="dlq_growing", labels={"queue": "sms"}, annotations={"summary": "a"},
              status="resolved", starts_at=1_700_000_000.0, ends_at=1_700_000_060.0),
        Alert(name="dlq_growing", labels={"queue": "push"}, annotations={"summary": "b"},
              starts_at=1_700_000_000.0),
    )


def note(**extra: object) -> Notification:
    return Notification(receiver="hook", group_key='{}:{alertname="dlq_growing"}',
                        alerts=alerts(), group_labels={"alertname": "dlq_growing"},
                        external_url="http://bridge:9464", **extra)  # type: ignore[arg-type]


def test_payload_is_alertmanager_version_4() -> None:
    payload = render_webhook(note())
    assert set(payload) == {
        "version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels",
        "commonLabels", "commonAnnotations", "externalURL", "notification_reason", "alerts"}
    assert payload["version"] == "4"
    assert payload["groupKey"] == '{}:{alertname="dlq_growing"}'
    assert payload["status"] == "firing"
    assert payload["receiver"] == "hook"
    assert payload["truncatedAlerts"] == 0
    assert payload["groupLabels"] == {"alertname": "dlq_growing"}
    assert payload["commonLabels"] == {"alertname": "dlq_growing"}
    assert payload["commonAnnotations"] == {}
    assert payload["externalURL"] == "http://bridge:9464"
    assert payload["notification_reason"] == "first notification"
    first, second, _ = payload["alerts"]
    assert first == {
        "status": "firing", "labels": {"alertname": "dlq_growing", "queue": "emails"},
        "annotations": {"summary": "a"}, "startsAt": "2023-11-14T22:13:20.000Z",
        "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "https://grafana.example/x",
        "fingerprint": alerts()[0].fingerprint,
    }
    assert second["status"] == "resolved"
    assert second["endsAt"] == "2023-11-14T22:14:20.000Z"


def test_max_alerts_truncates_and_counts() -> None:
    payload = render_webhook(note(), max_alerts=2)
    assert len(payload["alerts"]) == 2
    assert payload["truncatedAlerts"] == 1
    assert render_webhook(note(truncated_alerts=4), max_alerts=1)["truncatedAlerts"] == 6


def test_signature_matches_an_independent_computation() -> None:
    body = b'{"hello":"world"}'
    signer = WebhookSigner([SECRET])
    assert signer.signature("msg_1", 1_700_000_000, body) == independent_signature(
        SECRET, "msg_1", "1700000000", body)


def test_two_secrets_give_two_space_separated_signatures() -> None:
    body = b"{}"
    signature = WebhookSigner([SECRET, OTHER]).signature("msg_1", 5, body)
    assert signature == " ".join(independent_signature(s, "msg_1", "5", body)
                                 for s in (SECRET, OTHER))


def test_the_reference_library_accepts_our_signatures() -> None:
    standardwebhooks = pytest.importorskip("standardwebhooks")
    body = json.dumps({"a": 1}).encode()
    clock = SystemClock()
    headers = WebhookSigner([SECRET, OTHER]).headers("msg_abc", int(clock.time()), body)
    for secret in (SECRET, OTHER):  # either secret of a rotation verifies
        assert standardwebhooks.Webhook(secret).verify(body.decode(), headers) == {"a": 1}
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(generate_secret()).verify(body.decode(), headers)


def test_github_test_vector() -> None:
    """GitHub's documented example: secret and payload give this exact signature."""
    assert hub_signature_256("It's a Secret to Everybody", b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")


def test_verifier_rejects_replays_old_new_forged_and_duplicate_messages() -> None:
    """Row 19: a replay 6 minutes later is too old; within 5 minutes it is a duplicate."""
    clock = FakeClock()
    verifier = WebhookVerifier([SECRET], clock=clock)
    body = b'{"x":1}'
    now = int(clock.time())
    headers = WebhookSigner([OTHER, SECRET]).headers("msg_1", now, body)
    assert verifier.verify(headers, body) == "msg_1"

    clock.advance(120)
    with pytest.raises(SignatureError) as duplicate:
        verifier.verify(headers, body)
    assert duplicate.value.problem == "duplicate"

    clock.advance(240)  # six minutes after signing
    with pytest.raises(SignatureError) as old:
        verifier.verify(headers, body)
    assert old.value.problem == "too_old"

    future = WebhookSigner([SECRET]).headers("msg_2", int(clock.time()) + 600, body)
    with pytest.raises(SignatureError) as new:
        verifier.verify(future, body)
    assert new.value.problem == "too_new"

    fresh = WebhookSigner([SECRET]).headers("msg_3", int(clock.time()), body)
    with pytest.raises(SignatureError) as forged:
        verifier.verify(fresh, b'{"x":2}')
    assert forged.value.problem == "mismatch"
    with pytest.raises(SignatureError) as missing:
        verifier.verify({"webhook-id": "m"}, body)
    assert missing.value.problem == "missing"
    upper = {k.upper(): v for k, v in fresh.items()}
    assert verifier.verify(upper, body) == "msg_3"


def test_verifier_memory_of_ids_is_bounded() -> None:
    clock = FakeClock()
    verifier = WebhookVerifier([SECRET], clock=clock, max_remembered=2)
    signed = [WebhookSigner([SECRET]).headers(f"m{i}", int(clock.time()), b"") for i in range(3)]
    for headers in signed:
        verifier.verify(headers, b"")
    assert verifier.verify(signed[0], b"") == "m0"  # pushed out by two newer ids
    with pytest.raises(SignatureError):
        verifier.verify(signed[2], b"")
    clock.advance(100)
    late = WebhookVerifier([SECRET], clock=clock, tolerance_s=30)
    again = WebhookSigner([SECRET]).headers("m9", int(clock.time()), b"")
    late.verify(again, b"")
    clock.advance(29)
    with pytest.raises(SignatureError):
        late.verify(again, b"")


def test_bad_secrets_are_configuration_errors_that_do_not_show_them() -> None:
    with pytest.raises(ConfigError) as caught:
        WebhookSigner(["whsec_***not base64***"])
    assert "not base64" not in str(caught.value)
    with pytest.raises(ConfigError):
        WebhookSigner([])
    assert generate_secret().startswith("whsec_")


def test_the_receiver_sends_the_signed_payload() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    with WebhookReceiver("hook", "http://hook.local/in", secrets=[SECRET], hub_secret="gh",
                         clock=FakeClock(), transport=httpx.MockTransport(answer)) as made:
        receipt = made.send(note())
    (request,) = seen
    assert receipt.detail == {"webhook_id": note().notification_id}
    assert request.headers["webhook-id"] == note().notification_id
    assert request.headers["webhook-signature"] == independent_signature(
        SECRET, request.headers["webhook-id"], request.headers["webhook-timestamp"],
        request.content)
    assert request.headers["x-hub-signature-256"] == hub_signature_256("gh", request.content)
    assert json.loads(request.content)["version"] == "4"
