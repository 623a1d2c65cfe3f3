"""Receivers that stay on this machine: :class:`RecordingReceiver`, a test double to use in
your own tests, and :class:`ConsoleReceiver`, which prints what Slack and PagerDuty would
have received (``stem-observe demo`` uses it)."""

from __future__ import annotations

import json
import sys
import threading
from collections import deque
from collections.abc import Sequence
from typing import Literal, TextIO

from stem_observe.notify.base import DeliveryError, Receipt
from stem_observe.notify.model import Notification, check_trace_template
from stem_observe.notify.pacing import Pacer
from stem_observe.notify.pagerduty import render_event
from stem_observe.notify.slack import render_slack

__all__ = ["ConsoleReceiver", "RecordingReceiver"]


class RecordingReceiver:
    """Records what it is sent. Thread-safe.

    :meth:`fail_next` scripts failures: each later attempt raises the next given error
    instead of recording. :meth:`wait_for` waits (with a deadline) for deliveries.
    """

    def __init__(
        self, name: str = "recording", *, send_resolved: bool = True,
        pacer: Pacer | None = None,
    ) -> None:
        self.name = name
        self.send_resolved = send_resolved
        self.pacer = pacer
        self.attempts = 0
        self._received: list[Notification] = []
        self._failures: deque[DeliveryError] = deque()
        self._changed = threading.Condition()

    @property
    def notifications(self) -> list[Notification]:
        """Notifications received so far, in order."""
        with self._changed:
            return list(self._received)

    def fail_next(self, *errors: DeliveryError) -> None:
        with self._changed:
            self._failures.extend(errors)

    def send(self, notification: Notification) -> Receipt:
        with self._changed:
            self.attempts += 1
            if self._failures:
                raise self._failures.popleft()
            self._received.append(notification)
            self._changed.notify_all()
        return Receipt(200)

    def wait_for(self, count: int = 1, *, timeout_s: float = 5.0) -> list[Notification]:
        """The notifications once at least ``count`` arrived; ``TimeoutError`` otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._received) >= count, timeout_s):
                raise TimeoutError(f"{self.name}: {len(self._received)} of {count} "
                                   f"notifications after {timeout_s}s")
            return list(self._received)

    def clear(self) -> None:
        with self._changed:
            self._received.clear()
            self._failures.clear()
            self.attempts = 0

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"RecordingReceiver(name={self.name!r})"


Format = Literal["slack", "pagerduty"]


class ConsoleReceiver:
    """Prints each notification as Slack and PagerDuty would receive it.

    ``stream`` defaults to the current ``sys.stdout``; PagerDuty's routing key shows as
    ``***``.
    """

    def __init__(
        self, name: str = "console", *, stream: TextIO | None = None,
        formats: Sequence[Format] = ("slack", "pagerduty"), send_resolved: bool = True,
        trace_url_template: str | None = None,
    ) -> None:
        self.name = name
        self.send_resolved = send_resolved
        self.formats = tuple(formats)
        self.pacer: Pacer | None = None
        self.trace_url_template = check_trace_template(trace_url_template)
        self._stream = stream
        self._lock = threading.Lock()

    def format(self, notification: Notification) -> str:
        lines = [f"── {notification.title} · {notification.reason} · group "
                 f"{notification.group_key} · {notification.notification_id} ──"]
        if "slack" in self.formats:
            message = render_slack(notification, trace_url_template=self.trace_url_template)
            lines.append("Slack would receive:")
            for block in message["blocks"]:
                if block["type"] in ("header", "section"):
                    lines.append(_indent(block["text"]["text"]))
                elif block["type"] == "context":
                    lines.extend(_indent(e["text"]) for e in block["elements"])
        if "pagerduty" in self.formats:
            event = render_event(notification, routing_key="***",
                                 trace_url_template=self.trace_url_template)
            lines.append("PagerDuty would receive:")
            lines.append(_indent(json.dumps(event, indent=2, ensure_ascii=False)))
        return "\n".join(lines) + "\n"

    def send(self, notification: Notification) -> Receipt:
        text = self.format(notification)
        stream = self._stream or sys.stdout
        with self._lock:
            stream.write(text)
            stream.flush()
        return Receipt()

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"ConsoleReceiver(name={self.name!r})"


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
