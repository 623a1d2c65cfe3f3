"""The delivery policy: bounded jittered backoff, Retry-After, deadlines, dead letters and
self-metrics, all on a fake clock (no real sleeping)."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest
from prometheus_client import CollectorRegistry

from stem_observe.errors import ConfigError
from stem_observe.notify._http import classify, parse_retry_after
from stem_observe.notify.base import (
    DeadLetter,
    DeliveryError,
    DeliveryPolicy,
    Receipt,
    RetryPolicy,
    deliver,
)
from stem_observe.notify.clock import FakeClock, SystemClock
from stem_observe.notify.model import Alert, Notification
from stem_observe.notify.pacing import Pacer, shared_pacer
from stem_observe.notify.recording import RecordingReceiver

NOTE = Notification(receiver="rec", group_key="g", alerts=(Alert(name="a", starts_at=1.0),))


def server_error() -> DeliveryError:
    return DeliveryError("boom: unexpected status code 500", kind="server", retryable=True,
                         status_code=500)


class Setup:
    def __init__(self, retry: RetryPolicy | None = None) -> None:
        self.clock = FakeClock()
        self.registry = CollectorRegistry()
        self.dead: list[DeadLetter] = []
        self.policy = DeliveryPolicy(retry or RetryPolicy(initial_backoff_s=1.0),
                                     clock=self.clock, registry=self.registry,
                                     dead_letter=self.dead.append, rng=random.Random(7))

    def count(self, outcome: str, receiver: str = "rec") -> float:
        return self.registry.get_sample_value(
            "stem_observe_notifications_total", {"receiver": receiver, "outcome": outcome}
        ) or 0.0


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(initial_backoff_s=1.0, multiplier=2.0, max_backoff_s=5.0, jitter=0.5)
    rng = random.Random(1)
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        waits = [policy.backoff_s(attempt, rng) for _ in range(200)]
        assert min(waits) >= base
        assert max(waits) <= min(5.0, base * 1.5)
        if base * 1.5 <= 5.0:
            assert max(waits) - min(waits) > base * 0.3  # jittered, not constant
    assert RetryPolicy(jitter=0.0).backoff_s(1, rng) == 0.5


def test_retry_policy_validates_and_reads_configuration() -> None:
    with pytest.raises(ConfigError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigError, match="jitter"):
        RetryPolicy(jitter=2.0)
    with pytest.raises(ConfigError, match="initial_backoff_s"):
        RetryPolicy(initial_backoff_s=-1.0)
    policy = RetryPolicy.from_config(
        {"initial_backoff": "500ms", "max_backoff": "1m", "deadline": "5m", "max_attempts": 4})
    assert (policy.initial_backoff_s, policy.max_backoff_s, policy.deadline_s) == (
        0.5, 60.0, 300.0)
    assert policy.max_attempts == 4
    with pytest.raises(ConfigError, match=r"retry\.bogus"):
        RetryPolicy.from_config({"bogus": 1})
    with pytest.raises(ConfigError, match=r"retry\.max_attempts"):
        RetryPolicy.from_config({"max_attempts": "x"})
    with pytest.raises(ConfigError, match=r"retry\.deadline"):
        RetryPolicy.from_config({"deadline": "soon"})


def test_retryable_failures_are_retried_then_delivered_once() -> None:
    setup = Setup()
    receiver = RecordingReceiver("rec")
    receiver.fail_next(server_error(), server_error())
    result = setup.policy.deliver(receiver, NOTE)
    assert result.delivered
    assert result.attempts == 3
    assert len(receiver.notifications) == 1
    assert len(setup.clock.sleeps) == 2
    assert 1.0 <= setup.clock.sleeps[0] <= 1.5
    assert 2.0 <= setup.clock.sleeps[1] <= 3.0
    assert setup.count("retried") == 2
    assert setup.count("sent") == 1
    assert setup.count("failed") == 0
    assert setup.registry.get_sample_value(
        "stem_observe_notification_latency_seconds_count", {"receiver": "rec"}) == 1
    assert not setup.dead


def test_attempts_are_bounded_and_the_last_failure_is_dead_lettered() -> None:
    setup = Setup(RetryPolicy(initial_backoff_s=0.1, max_attempts=4))
    receiver = RecordingReceiver("rec")
    receiver.fail_next(*(server_error() for _ in range(10)))
    result = setup.policy.deliver(receiver, NOTE)
    assert not result.delivered
    assert result.dead_lettered
    assert result.attempts == receiver.attempts == 4
    assert len(setup.clock.sleeps) == 3
    assert result.error is not None
    assert "gave up after 4 attempts" in result.error
    assert "500" in result.error
    assert result.error_kind == "server"
    assert [d.notification for d in setup.dead] == [NOTE]
    assert setup.dead[0].result == result
    assert (setup.count("retried"), setup.count("failed"), setup.count("dead_lettered")) == (
        3, 1, 1)


def test_the_total_deadline_bounds_the_waits() -> None:
    setup = Setup(RetryPolicy(initial_backoff_s=4.0, multiplier=2.0, jitter=0.0,
                              max_attempts=100, deadline_s=10.0))
    receiver = RecordingReceiver("rec")
    receiver.fail_next(*(server_error() for _ in range(10)))
    result = setup.policy.deliver(receiver, NOTE)
    assert not result.delivered
    assert result.attempts == 2  # 4 s wait fits, the next 8 s would pass 10 s
    assert sum(setup.clock.sleeps) <= 10.0


def test_permanent_failures_are_not_retried() -> None:
    setup = Setup()
    receiver = RecordingReceiver("rec")
    receiver.fail_next(DeliveryError("slack: unexpected status code 400: invalid_payload",
                                     kind="client", retryable=False, status_code=400))
    result = setup.policy.deliver(receiver, NOTE)
    assert (result.delivered, result.attempts, result.status_code) == (False, 1, 400)
    assert result.error is not None
    assert "invalid_payload" in result.error
    assert setup.clock.sleeps == []
    assert len(setup.dead) == 1


def test_retry_after_replaces_the_backoff_and_one_past_the_deadline_gives_up() -> None:
    setup = Setup(RetryPolicy(initial_backoff_s=0.1, deadline_s=60.0))
    receiver = RecordingReceiver("rec")
    receiver.fail_next(DeliveryError("429", kind="rate_limited", retryable=True,
                                     status_code=429, retry_after_s=3.0))
    assert setup.policy.deliver(receiver, NOTE).delivered
    assert setup.clock.sleeps == [3.0]
    assert setup.count("rate_limited") == 1

    receiver.fail_next(DeliveryError("429", kind="rate_limited", retryable=True,
                                     status_code=429, retry_after_s=3600.0))
    result = setup.policy.deliver(receiver, NOTE)
    assert not result.delivered
    assert result.attempts == 1
    assert setup.clock.sleeps == [3.0]  # did not wait an hour


def test_an_unexpected_receiver_exception_is_a_permanent_failure_not_a_crash() -> None:
    class Broken(RecordingReceiver):
        def send(self, notification: Notification) -> Receipt:
            raise KeyError("template")

    setup = Setup()
    result = setup.policy.deliver(Broken("rec"), NOTE)
    assert (result.delivered, result.error_kind, result.attempts) == (False, "bug", 1)


def test_a_failing_dead_letter_handler_is_logged_and_swallowed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def explode(letter: DeadLetter) -> None:
        raise RuntimeError("disk full")

    policy = DeliveryPolicy(clock=FakeClock(), registry=CollectorRegistry(), dead_letter=explode)
    receiver = RecordingReceiver("rec")
    receiver.fail_next(DeliveryError("x", kind="client", retryable=False))
    assert not policy.deliver(receiver, NOTE).delivered
    assert "dead-letter handler failed" in caplog.text


def test_cancel_interrupts_a_backoff_with_a_real_clock() -> None:
    cancel = threading.Event()
    policy = DeliveryPolicy(RetryPolicy(initial_backoff_s=30.0), clock=SystemClock(),
                            registry=CollectorRegistry())
    receiver = RecordingReceiver("rec")
    receiver.fail_next(server_error())
    threading.Timer(0.05, cancel.set).start()
    result = policy.deliver(receiver, NOTE, cancel=cancel)
    assert (result.delivered, result.error_kind) == (False, "cancelled")
    assert result.elapsed_s < 5.0


def test_deliver_shortcut_uses_a_given_policy() -> None:
    setup = Setup()
    assert deliver(RecordingReceiver("rec"), NOTE, policy=setup.policy).delivered
    assert setup.count("sent") == 1


def response(status: int, text: str = "", **headers: str) -> httpx.Response:
    return httpx.Response(status, text=text, headers=headers)


def test_retry_after_is_read_as_seconds_as_an_http_date_or_from_slacks_body() -> None:
    clock = FakeClock()
    assert parse_retry_after(response(429, **{"Retry-After": "3"}), clock) == 3.0
    assert parse_retry_after(response(429, **{"Retry-After": "1.5"}), clock) == 1.5
    later = datetime.fromtimestamp(clock.time() + 120, tz=UTC)
    when = format_datetime(later, usegmt=True)
    assert parse_retry_after(response(429, **{"Retry-After": when}), clock) == pytest.approx(
        120.0, abs=1.0)
    past = format_datetime(datetime.fromtimestamp(clock.time() - 60, tz=UTC), usegmt=True)
    assert parse_retry_after(response(429, **{"Retry-After": past}), clock) == 0.0
    body = '{"retry_after":1,"ok":false,"error":"rate_limited"}'
    assert parse_retry_after(response(429, body), clock) == 1.0
    assert parse_retry_after(response(429, "<html>Too many</html>"), clock) is None
    assert parse_retry_after(response(429, **{"Retry-After": "soon"}), clock) is None


@pytest.mark.parametrize("status", [*range(100, 104), *range(200, 209), *range(300, 309),
                                    *range(400, 432), *range(500, 512)])
def test_status_classification_matches_alertmanager_with_429_per_integration(
    status: int,
) -> None:
    clock = FakeClock()
    plain = classify(response(status, "body"), integration="x", clock=clock)
    assert plain.retryable == (status >= 500)
    with_429 = classify(response(status, "body"), integration="x", clock=clock,
                        retry_codes=(429,))
    assert with_429.retryable == (status >= 500 or status == 429)
    assert f"unexpected status code {status}: body" in str(plain)


def test_classified_errors_carry_a_truncated_body_and_a_kind() -> None:
    clock = FakeClock()
    error = classify(response(500, "<html>" + "x" * 5000 + "</html>"), integration="slack",
                     clock=clock)
    assert error.body is not None
    assert len(error.body) <= 512
    assert error.kind == "server"
    kinds = {code: classify(response(code), integration="x", clock=clock).kind
             for code in (301, 400, 401, 403, 404, 410, 429)}
    assert kinds == {301: "redirect", 400: "client", 401: "auth", 403: "auth",
                     404: "not_found", 410: "gone", 429: "rate_limited"}


def test_pacer_allows_a_burst_then_paces_and_holds_after_a_429() -> None:
    clock = FakeClock()
    pacer = Pacer(rate_per_s=2.0, burst=3)
    for _ in range(3):
        assert pacer.acquire(clock)
    assert clock.sleeps == []
    assert pacer.acquire(clock)
    assert clock.sleeps == [pytest.approx(0.5)]
    pacer.hold(clock, 3.0)
    started = clock.monotonic()
    assert pacer.acquire(clock)
    assert clock.monotonic() - started == pytest.approx(3.0)
    assert pacer.acquire(clock)  # after a hold, only one went at once
    assert clock.monotonic() - started == pytest.approx(3.5)
    assert not pacer.acquire(clock, max_wait_s=0.1)  # would wait 0.5 s
    cancel = threading.Event()
    cancel.set()
    assert not pacer.acquire(clock, cancel=cancel)
    with pytest.raises(ValueError, match="rate_per_s"):
        Pacer(0)
    assert shared_pacer("https://a", 1.0, 3) is shared_pacer("https://a", 1.0, 3)
    assert shared_pacer("https://a", 1.0, 3) is not shared_pacer("https://b", 1.0, 3)
