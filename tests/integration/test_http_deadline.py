"""Every HTTP receiver's request has a total deadline, and closing a receiver aborts a request
in flight: real local servers that trickle their answer a byte at a time (well inside the
per-operation timeout, so only a total deadline can end the request), hang, or speak TLS.

Time bounds here are generous ceilings that only a missing deadline could break (the
trickled answers would take minutes), never measurements of speed.
"""

from __future__ import annotations

import logging
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from stem_observe.notify._http import HttpReceiver
from stem_observe.notify._transport import DeadlineTransport
from stem_observe.notify.alertmanager import AlertmanagerReceiver
from stem_observe.notify.base import DeliveryPolicy, DeliveryResult, RetryPolicy
from stem_observe.notify.clock import FakeClock, SystemClock
from stem_observe.notify.dispatch import Dispatcher
from stem_observe.notify.model import Alert, Notification
from stem_observe.notify.pacing import Pacer
from stem_observe.notify.pagerduty import PagerDutyReceiver
from stem_observe.notify.slack import SlackReceiver
from stem_observe.notify.webhook import WebhookReceiver
from tests.support.fault_server import FaultServer, Reply
from tests.support.wait import wait_for

Serve = Callable[..., FaultServer]

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ALERT = Alert(name="worker_down", labels={"worker": "w-1", "queue": "emails"},
              annotations={"summary": "Worker w-1 silent"}, starts_at=1_700_000_000.0)
NOTE = Notification(receiver="hook", group_key='{}:{worker="w-1"}', alerts=(ALERT,))

DEADLINE_S = 0.5
MARGIN_S = 4.0
"""Added to a deadline for a ceiling; a trickled answer here lasts minutes."""

SLOW_HEAD = Reply(200, headers={"X-Padding": "p" * 4000}, trickle="head")
SLOW_BODY = Reply(200, body="x" * 4000, trickle="body")


@pytest.fixture
def serve() -> Iterator[Serve]:
    with ExitStack() as stack:
        def start(*replies: Reply, **options: object) -> FaultServer:
            return stack.enter_context(FaultServer(*replies, **options))  # type: ignore[arg-type]
        yield start


def hook(server: FaultServer, *, clock: SystemClock | FakeClock | None = None,
         timeout_s: float = DEADLINE_S, transport: DeadlineTransport | None = None,
         ) -> WebhookReceiver:
    return WebhookReceiver("hook", server.url + "/alerts", secrets=[SECRET],
                           timeout_s=timeout_s, clock=clock or SystemClock(),
                           transport=transport)


def policy(clock: SystemClock | FakeClock | None = None, **retry: float) -> DeliveryPolicy:
    options = {"initial_backoff_s": 0.05, "max_backoff_s": 0.2, "deadline_s": 30.0, **retry}
    return DeliveryPolicy(RetryPolicy(**options),  # type: ignore[arg-type]
                          clock=clock or SystemClock(), registry=CollectorRegistry())


# --- the deadline ----------------------------------------------------------------------------

@pytest.mark.parametrize("slow", [SLOW_HEAD, SLOW_BODY], ids=["head", "body"])
def test_a_trickled_answer_ends_at_the_deadline_and_the_retry_keeps_webhook_id(
    serve: Serve, slow: Reply,
) -> None:
    """Row 15 with a server that does answer, too slowly: the attempt fails as a timeout at
    the request deadline and is retried; same webhook-id, new timestamp and signature."""
    server = serve(slow, default=Reply(200))
    clock = FakeClock(wall_start=time.time())  # backoff without waiting; timestamps move
    started = time.monotonic()
    with hook(server, clock=clock) as receiver:
        result = policy(clock, initial_backoff_s=2.0, max_backoff_s=5.0).deliver(receiver, NOTE)
    elapsed = time.monotonic() - started
    assert (result.delivered, result.attempts) == (True, 2)
    assert DEADLINE_S <= elapsed < DEADLINE_S + MARGIN_S
    assert server.trickled() >= 2  # the server was still sending when the deadline passed
    slowed, answered = server.requests()
    assert (slowed.answered, answered.answered) == (None, 200)
    assert slowed.headers["webhook-id"] == answered.headers["webhook-id"] == NOTE.notification_id
    first, second = (int(r.headers["webhook-timestamp"]) for r in (slowed, answered))
    assert second >= first + 2
    assert slowed.headers["webhook-signature"] != answered.headers["webhook-signature"]
    assert slowed.body == answered.body


@pytest.mark.parametrize("slow", [SLOW_HEAD, SLOW_BODY], ids=["head", "body"])
def test_a_server_that_always_trickles_fails_as_a_timeout_within_the_retry_deadline(
    serve: Serve, slow: Reply,
) -> None:
    server = serve(default=slow)
    started = time.monotonic()
    with hook(server) as receiver:
        result = policy(max_attempts=2).deliver(receiver, NOTE)
    elapsed = time.monotonic() - started
    assert not result.delivered
    assert (result.attempts, result.error_kind) == (2, "timeout")
    assert "deadline of 0.5s passed" in (result.error or "")
    assert 2 * DEADLINE_S <= elapsed < 2 * DEADLINE_S + MARGIN_S
    assert len(server.requests()) == 2


def test_the_policy_deadline_still_bounds_all_attempts(serve: Serve) -> None:
    server = serve(default=SLOW_BODY)
    started = time.monotonic()
    with hook(server) as receiver:
        result = policy(deadline_s=1.2, max_attempts=50).deliver(receiver, NOTE)
    assert not result.delivered
    assert result.error_kind == "timeout"
    assert 2 <= result.attempts <= 3
    assert time.monotonic() - started < 1.2 + DEADLINE_S + MARGIN_S


def _slack(url: str) -> HttpReceiver:
    return SlackReceiver("r", url + "/services/T0/B0/aaaaaaaaaaaaaaaaaaaaaaaa",
                         timeout_s=DEADLINE_S, pacer=Pacer(100.0, 10))


def _pagerduty(url: str) -> HttpReceiver:
    return PagerDutyReceiver("r", routing_key="r" * 32, url=url + "/v2/enqueue",
                             timeout_s=DEADLINE_S, pacer=Pacer(100.0, 10))


def _webhook(url: str) -> HttpReceiver:
    return WebhookReceiver("r", url + "/alerts", timeout_s=DEADLINE_S)


def _alertmanager(url: str) -> HttpReceiver:
    return AlertmanagerReceiver("r", url, timeout_s=DEADLINE_S)


@pytest.mark.parametrize("build", [_slack, _pagerduty, _webhook, _alertmanager],
                         ids=["slack", "pagerduty", "webhook", "alertmanager"])
def test_every_http_receiver_has_the_deadline(
    serve: Serve, build: Callable[[str], HttpReceiver],
) -> None:
    server = serve(default=SLOW_BODY)
    started = time.monotonic()
    with build(server.url) as receiver:
        result = policy(max_attempts=1).deliver(receiver, NOTE)
    assert (result.delivered, result.error_kind) == (False, "timeout")
    assert time.monotonic() - started < DEADLINE_S + MARGIN_S


def test_normal_deliveries_reuse_one_connection_and_close_it(serve: Serve) -> None:
    server = serve(default=Reply(200, "ok"))
    transport = DeadlineTransport()
    delivery = policy()
    with hook(server, transport=transport) as receiver:
        results = [delivery.deliver(receiver, NOTE) for _ in range(5)]
        assert transport.live_connections == 1
    assert [(r.delivered, r.attempts) for r in results] == [(True, 1)] * 5
    assert len(server.answered(200)) == 5
    assert transport.live_connections == 0


def test_a_slow_but_timely_answer_is_delivered(serve: Serve) -> None:
    """The deadline covers the whole request and nothing less: an answer that trickles in
    within it is a success."""
    server = serve(Reply(200, body="ok", trickle="body", trickle_every_s=0.01))
    with hook(server, timeout_s=10.0) as receiver:
        result = policy(max_attempts=1).deliver(receiver, NOTE)
    assert result.delivered


# --- close aborts what is in flight ---------------------------------------------------------

def _deliver_in_thread(receiver: HttpReceiver) -> tuple[threading.Thread, list[DeliveryResult]]:
    results: list[DeliveryResult] = []
    thread = threading.Thread(target=lambda: results.append(
        policy(max_attempts=5).deliver(receiver, NOTE)), name="delivering", daemon=True)
    thread.start()
    return thread, results


@pytest.mark.parametrize("stuck", [Reply(hang=True), SLOW_HEAD, SLOW_BODY],
                         ids=["hang", "head", "body"])
def test_close_aborts_a_request_in_flight_promptly(
    serve: Serve, stuck: Reply, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = serve(default=stuck)
    transport = DeadlineTransport()
    receiver = hook(server, timeout_s=60.0, transport=transport)  # the deadline is far away
    thread, results = _deliver_in_thread(receiver)
    wait_for(server.requests, message="the request to arrive")
    assert transport.live_connections == 1
    started = time.monotonic()
    receiver.close()
    assert time.monotonic() - started < MARGIN_S
    wait_for(lambda: not thread.is_alive(), timeout_s=MARGIN_S,
             message="the delivering thread to end")
    (result,) = results
    assert (result.delivered, result.attempts, result.error_kind) == (False, 1, "cancelled")
    assert "closed" in (result.error or "")
    assert transport.live_connections == 0
    assert len(server.requests()) == 1  # no retry after the abort
    assert not [r for r in caplog.records if r.exc_info], "no stack trace is logged"


def test_a_closed_receiver_sends_nothing(serve: Serve) -> None:
    server = serve(default=Reply(200))
    receiver = hook(server)
    receiver.close()
    receiver.close()  # idempotent
    result = policy().deliver(receiver, NOTE)
    assert (result.delivered, result.attempts, result.error_kind) == (False, 1, "cancelled")
    assert server.requests() == []


def test_dispatcher_close_ends_a_trickled_delivery_and_its_thread(serve: Serve) -> None:
    """End to end, as at shutdown: the delivery thread stuck on a trickling server ends once
    the dispatcher cancels (at the latest at the request deadline) and no socket is left."""
    server = serve(default=SLOW_BODY)
    transport = DeadlineTransport()
    results: list[DeliveryResult] = []
    dispatcher = Dispatcher([hook(server, timeout_s=1.0, transport=transport)],
                            retry=RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.1,
                                              max_attempts=100, deadline_s=120.0),
                            registry=CollectorRegistry(), on_result=results.append)
    dispatcher.start()
    dispatcher.notify("g1", [ALERT])
    wait_for(server.requests, message="the request to arrive")
    started = time.monotonic()
    dispatcher.close(timeout_s=0.2)
    assert time.monotonic() - started < 0.2 + 1.0 + MARGIN_S
    assert not [t for t in threading.enumerate() if t.name == "stem-observe-notify-hook"]
    assert [r.error_kind for r in results] == ["cancelled"]
    assert transport.live_connections == 0


# --- TLS ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (certificate, key)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30)
    return cert, key


def _tls(certificate: tuple[Path, Path]) -> tuple[ssl.SSLContext, DeadlineTransport]:
    cert, key = certificate
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    return server_side, DeadlineTransport(verify=ssl.create_default_context(cafile=str(cert)))


def test_over_tls_deliveries_work_and_a_trickled_body_meets_the_deadline(
    serve: Serve, certificate: tuple[Path, Path],
) -> None:
    server_side, transport = _tls(certificate)
    server = serve(Reply(200), default=SLOW_BODY, tls=server_side)
    assert server.url.startswith("https://")
    delivery = policy(max_attempts=1)
    with hook(server, transport=transport) as receiver:
        assert delivery.deliver(receiver, NOTE).delivered
        started = time.monotonic()
        result = delivery.deliver(receiver, NOTE)
        assert (result.delivered, result.error_kind) == (False, "timeout")
        assert DEADLINE_S <= time.monotonic() - started < DEADLINE_S + MARGIN_S
    assert transport.live_connections == 0


def test_over_tls_close_aborts_a_request_in_flight(
    serve: Serve, certificate: tuple[Path, Path],
) -> None:
    server_side, transport = _tls(certificate)
    server = serve(default=SLOW_BODY, tls=server_side)
    receiver = hook(server, timeout_s=60.0, transport=transport)
    thread, results = _deliver_in_thread(receiver)
    wait_for(lambda: server.trickled() > 0, message="the body to start")
    receiver.close()
    wait_for(lambda: not thread.is_alive(), timeout_s=MARGIN_S,
             message="the delivering thread to end")
    assert [r.error_kind for r in results] == ["cancelled"]
    assert transport.live_connections == 0


# --- proxies from the environment -----------------------------------------------------------

def test_an_environment_proxy_is_used_and_the_deadline_holds_through_it(
    serve: Serve, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As httpx's own transport would: HTTP_PROXY carries http:// requests (the proxy sees
    the absolute URL), and a trickling proxy still meets the deadline."""
    proxy = serve(Reply(200), default=SLOW_BODY)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    with WebhookReceiver("hook", "http://stem-observe.invalid/alerts",
                         timeout_s=DEADLINE_S) as receiver:
        delivery = policy(max_attempts=1)
        assert delivery.deliver(receiver, NOTE).delivered
        started = time.monotonic()
        assert delivery.deliver(receiver, NOTE).error_kind == "timeout"
        assert time.monotonic() - started < DEADLINE_S + MARGIN_S
    assert [r.path for r in proxy.requests()] == ["http://stem-observe.invalid/alerts"] * 2
