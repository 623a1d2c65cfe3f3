"""The dispatcher's dedup decisions (matrix rows 14, 22, 23), queues, health and shutdown,
with in-process receivers."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from stem_observe.errors import ConfigError
from stem_observe.notify.base import DeadLetter, DeliveryError, Receipt, RetryPolicy
from stem_observe.notify.clock import FakeClock, SystemClock
from stem_observe.notify.dispatch import Dispatcher, LogEntry, needs_update
from stem_observe.notify.model import Alert, Notification
from stem_observe.notify.recording import ConsoleReceiver, RecordingReceiver

FAST = RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.01, max_attempts=3)
A = Alert(name="dlq_growing", labels={"queue": "emails"}, starts_at=100.0)
B = Alert(name="dlq_growing", labels={"queue": "sms"}, starts_at=100.0)


def resolved(alert: Alert) -> Alert:
    return dataclasses.replace(alert, status="resolved", ends_at=200.0)


def fps(*alerts: Alert) -> frozenset[str]:
    return frozenset(a.fingerprint for a in alerts)


Case = tuple[LogEntry | None, frozenset[str], frozenset[str], bool, float | None, str | None]


@pytest.mark.parametrize("case", [
    (None, fps(A), fps(), False, None, "first"),
    (None, fps(), fps(A), True, None, None),  # rows 14/22: resolve of a group never notified
    (LogEntry(fps(A), fps(), 0.0), fps(A), fps(), True, None, None),
    (LogEntry(fps(A), fps(), 0.0), fps(A, B), fps(), False, None, "new_alerts"),
    (LogEntry(fps(A), fps(), 0.0), fps(), fps(A), False, None, "resolved"),  # all resolved
    (LogEntry(fps(), fps(A), 0.0), fps(), fps(A), True, None, None),  # already resolved
    (LogEntry(fps(), fps(A), 0.0), fps(A), fps(), False, None, "first"),  # re-fire
    (LogEntry(fps(A, B), fps(), 0.0), fps(A), fps(B), True, None, "resolved"),
    (LogEntry(fps(A, B), fps(), 0.0), fps(A), fps(B), False, None, None),
    (LogEntry(fps(A), fps(), 0.0), fps(A), fps(), False, 600.0, None),  # 9 min < 10 min
    (LogEntry(fps(A), fps(), -60.0), fps(A), fps(), False, 600.0, "repeat"),  # 11 min
])
def test_needs_update_follows_alertmanagers_dedup_table(case: Case) -> None:
    entry, firing, gone, send_resolved, repeat, expected = case
    assert needs_update(entry, firing, gone, send_resolved=send_resolved,
                        repeat_interval_s=repeat, now=540.0) == expected


class Setup:
    def __init__(self, *receivers: RecordingReceiver, clock: FakeClock | None = None,
                 max_queue: int = 100) -> None:
        self.registry = CollectorRegistry()
        self.dead: list[DeadLetter] = []
        self.dispatcher = Dispatcher(receivers, retry=FAST, clock=clock or FakeClock(),
                                     registry=self.registry, dead_letter=self.dead.append,
                                     max_queue=max_queue)

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def pair() -> Iterator[tuple[Setup, RecordingReceiver, RecordingReceiver]]:
    quiet = RecordingReceiver("slack", send_resolved=False)
    loud = RecordingReceiver("pagerduty", send_resolved=True)
    setup = Setup(quiet, loud)
    with setup.dispatcher:
        yield setup, quiet, loud


def test_a_group_resolved_before_its_first_notification_sends_nothing(
    pair: tuple[Setup, RecordingReceiver, RecordingReceiver],
) -> None:
    """Rows 14 and 22: a resolve for a group never notified sends nothing to anyone."""
    setup, quiet, loud = pair
    assert setup.dispatcher.notify("g", [resolved(A)]) == []
    assert setup.dispatcher.flush()
    assert quiet.attempts == loud.attempts == 0


def test_firing_then_resolved_then_refire(
    pair: tuple[Setup, RecordingReceiver, RecordingReceiver],
) -> None:
    """Row 23: send_resolved=false gets one message; true gets fire and resolve; a
    re-fire is a first notification again."""
    setup, quiet, loud = pair
    first = setup.dispatcher.notify("g", [A], group_labels={"alertname": "dlq_growing"})
    assert [n.receiver for n in first] == ["slack", "pagerduty"]
    assert all(n.reason == "first" for n in first)
    assert setup.dispatcher.flush()
    assert setup.dispatcher.notify("g", [A]) == []  # unchanged: nothing
    gone = setup.dispatcher.notify("g", [resolved(A)])
    assert [(n.receiver, n.reason, n.status) for n in gone] == [
        ("pagerduty", "resolved", "resolved")]
    assert setup.dispatcher.flush()
    assert setup.dispatcher.notify("g", [resolved(A)]) == []  # already resolved
    refire = dataclasses.replace(A, starts_at=300.0)
    again = setup.dispatcher.notify("g", [refire])
    assert [(n.receiver, n.reason) for n in again] == [("slack", "first"), ("pagerduty", "first")]
    assert setup.dispatcher.flush()
    assert len(quiet.notifications) == 2
    assert len(loud.notifications) == 3
    ids = [n.notification_id for n in loud.notifications]
    assert len(set(ids)) == 3


def test_mixed_groups_hide_resolved_alerts_from_quiet_receivers(
    pair: tuple[Setup, RecordingReceiver, RecordingReceiver],
) -> None:
    setup, quiet, loud = pair
    setup.dispatcher.notify("g", [A, B])
    assert setup.dispatcher.flush()
    changed = setup.dispatcher.notify("g", [A, resolved(B)])
    assert [n.receiver for n in changed] == ["pagerduty"]
    assert changed[0].alerts == (A, resolved(B))
    assert setup.dispatcher.flush()
    assert (len(quiet.notifications), len(loud.notifications)) == (1, 2)


def test_repeat_interval_resends_with_a_new_id() -> None:
    clock = FakeClock()
    receiver = RecordingReceiver("r")
    setup = Setup(receiver, clock=clock)
    with setup.dispatcher as dispatcher:
        dispatcher.notify("g", [A], repeat_interval_s=600)
        assert dispatcher.flush()
        clock.advance(540)
        assert dispatcher.notify("g", [A], repeat_interval_s=600) == []
        clock.advance(120)
        (repeat,) = dispatcher.notify("g", [A], repeat_interval_s=600)
        assert (repeat.reason, repeat.sequence) == ("repeat", 1)
        assert dispatcher.flush()
    first, second = receiver.notifications
    assert first.notification_id != second.notification_id


def test_a_state_already_queued_is_not_queued_twice() -> None:
    gate = threading.Event()

    class Slow(RecordingReceiver):
        def send(self, notification: Notification) -> Receipt:
            gate.wait(5)
            return super().send(notification)

    receiver = Slow("r")
    setup = Setup(receiver)
    with setup.dispatcher as dispatcher:
        assert len(dispatcher.notify("g", [A])) == 1
        assert dispatcher.notify("g", [A]) == []
        gate.set()
        assert dispatcher.flush()
    assert len(receiver.notifications) == 1


def test_a_failed_notification_is_not_logged_so_the_next_flush_resends() -> None:
    receiver = RecordingReceiver("r")
    receiver.fail_next(DeliveryError("400", kind="client", retryable=False, status_code=400))
    setup = Setup(receiver)
    with setup.dispatcher as dispatcher:
        dispatcher.notify("g", [A])
        assert dispatcher.flush()
        assert receiver.notifications == []
        assert len(setup.dead) == 1
        health = dispatcher.health()["r"]
        assert (health.state, health.consecutive_failures) == ("misconfigured", 1)
        (again,) = dispatcher.notify("g", [A])
        assert again.notification_id == setup.dead[0].notification.notification_id
        assert dispatcher.flush()
    assert len(receiver.notifications) == 1
    assert dispatcher.health()["r"].state == "ok"


def test_a_full_queue_drops_counts_and_dead_letters() -> None:
    gate = threading.Event()
    started = threading.Event()

    class Blocked(RecordingReceiver):
        def send(self, notification: Notification) -> Receipt:
            started.set()
            gate.wait(5)
            return super().send(notification)

    receiver = Blocked("r")
    setup = Setup(receiver, max_queue=2)
    with setup.dispatcher as dispatcher:
        assert dispatcher.notify("g0", [A])
        assert started.wait(5)
        assert dispatcher.notify("g1", [A])
        assert dispatcher.notify("g2", [A])
        assert setup.value("stem_observe_notification_queue_depth", receiver="r") == 2
        assert dispatcher.notify("g3", [A]) == []  # no room
        assert setup.value("stem_observe_notifications_dropped_total", receiver="r") == 1
        assert [d.result.error_kind for d in setup.dead] == ["queue_full"]
        gate.set()
        assert dispatcher.flush()
        assert setup.value("stem_observe_notification_queue_depth", receiver="r") == 0
        assert dispatcher.notify("g3", [A])  # not logged, so it goes next time
    assert [n.group_key for n in receiver.notifications] == ["g0", "g1", "g2", "g3"]


def test_close_cancels_waits_and_dead_letters_what_is_left() -> None:
    receiver = RecordingReceiver("r")
    receiver.fail_next(*(DeliveryError("500", kind="server", retryable=True) for _ in range(9)))
    dispatcher = Dispatcher([receiver], retry=RetryPolicy(initial_backoff_s=30.0),
                            clock=SystemClock(), registry=CollectorRegistry())
    kinds: list[str | None] = []
    dispatcher.on_result = lambda result: kinds.append(result.error_kind)
    dispatcher.start()
    dispatcher.notify("g", [A])
    dispatcher.notify("h", [A])
    dispatcher.close(timeout_s=0.1)
    assert kinds == ["cancelled", "cancelled"]
    assert receiver.attempts == 1  # the second was never tried


def test_names_are_checked() -> None:
    with pytest.raises(ConfigError, match="unique"):
        Dispatcher([RecordingReceiver("r"), RecordingReceiver("r")], registry=CollectorRegistry())
    dispatcher = Dispatcher([RecordingReceiver("r")], registry=CollectorRegistry())
    with pytest.raises(ConfigError, match="no such receiver"):
        dispatcher.notify("g", [A], receivers=["x"])
    with pytest.raises(ConfigError, match="no such receiver"):
        dispatcher.submit(Notification(receiver="x", group_key="g", alerts=(A,)))
    dispatcher.close()


def test_only_the_named_receivers_are_notified() -> None:
    one, two = RecordingReceiver("one"), RecordingReceiver("two")
    setup = Setup(one, two)
    with setup.dispatcher as dispatcher:
        dispatcher.notify("g", [A], receivers=["two"])
        assert dispatcher.flush()
    assert (len(one.notifications), len(two.notifications)) == (0, 1)


def test_console_receiver_prints_what_slack_and_pagerduty_would_get(
    capsys: pytest.CaptureFixture[str],
) -> None:
    console = ConsoleReceiver(trace_url_template="https://tempo/{trace_id}")
    console.send(Notification(receiver="console", group_key="g", alerts=(
        dataclasses.replace(A, cli_hint="stem-observe dlq list --queue emails"),)))
    out = capsys.readouterr().out
    assert "Slack would receive:" in out
    assert "PagerDuty would receive:" in out
    assert "[FIRING:1] dlq_growing" in out
    assert '"routing_key": "***"' in out
    assert "stem-observe dlq list --queue emails" in out


def test_recording_receiver_waits_with_a_deadline() -> None:
    receiver = RecordingReceiver("r")
    with pytest.raises(TimeoutError):
        receiver.wait_for(1, timeout_s=0.01)
    receiver.send(Notification(receiver="r", group_key="g", alerts=(A,)))
    assert len(receiver.wait_for(1)) == 1
    receiver.clear()
    assert receiver.notifications == []
