"""Notifications: alerts to Slack, PagerDuty, webhooks and Alertmanager, delivered reliably.

``model`` holds the values (:class:`Alert`, :class:`Notification`); ``base`` the
:class:`Receiver` protocol and the delivery policy (backoff, ``Retry-After``, dead letters,
self-metrics); ``secret`` the :class:`Secret` wrapper; ``dispatch`` the per-receiver
delivery threads and the dedup log; ``slack``, ``pagerduty``, ``webhook`` and
``alertmanager`` the receivers; ``signing`` Standard Webhooks signatures; ``recording`` a
test double and a console receiver; ``config`` builds receivers from settings; ``clock``
and ``pacing`` carry time.
"""

from stem_observe.notify.alertmanager import AlertmanagerReceiver
from stem_observe.notify.base import (
    DeadLetter,
    DeliveryError,
    DeliveryPolicy,
    DeliveryResult,
    Receipt,
    Receiver,
    RetryPolicy,
    Secret,
    deliver,
)
from stem_observe.notify.clock import Clock, FakeClock, SystemClock
from stem_observe.notify.config import build_receiver
from stem_observe.notify.dispatch import (
    Dispatcher,
    MemoryNotificationLog,
    NotificationLog,
    ReceiverHealth,
)
from stem_observe.notify.model import Alert, Notification, TaskSample
from stem_observe.notify.pacing import Pacer
from stem_observe.notify.pagerduty import PagerDutyReceiver
from stem_observe.notify.recording import ConsoleReceiver, RecordingReceiver
from stem_observe.notify.signing import SignatureError, WebhookSigner, WebhookVerifier
from stem_observe.notify.slack import SlackReceiver
from stem_observe.notify.webhook import WebhookReceiver

__all__ = [
    "Alert",
    "AlertmanagerReceiver",
    "Clock",
    "ConsoleReceiver",
    "DeadLetter",
    "DeliveryError",
    "DeliveryPolicy",
    "DeliveryResult",
    "Dispatcher",
    "FakeClock",
    "MemoryNotificationLog",
    "Notification",
    "NotificationLog",
    "Pacer",
    "PagerDutyReceiver",
    "Receipt",
    "Receiver",
    "ReceiverHealth",
    "RecordingReceiver",
    "RetryPolicy",
    "Secret",
    "SignatureError",
    "SlackReceiver",
    "SystemClock",
    "TaskSample",
    "WebhookReceiver",
    "WebhookSigner",
    "WebhookVerifier",
    "build_receiver",
    "deliver",
]
