"""stem-observe: task lifecycle signals to Prometheus metrics, OpenTelemetry traces and alerts.

Install the bridge once per process, then send signals from any source::

    import stem_observe

    stem_observe.install()
    with stem_observe.track_task("emails.send", task_id=msg_id, queue="emails"):
        send_email()
"""

from stem_observe import events, signals
from stem_observe.bridge import Bridge, install, installed, uninstall
from stem_observe.config import Settings
from stem_observe.errors import ConfigError, StemObserveError
from stem_observe.events import (
    QueueSnapshot,
    ScheduleEntryDispatched,
    ScheduleEntryDue,
    ScheduleEntryFailed,
    TaskDeadLettered,
    TaskEvent,
    TaskFailed,
    TaskHeartbeat,
    TaskPostrun,
    TaskPrerun,
    TaskPublished,
    TaskReceived,
    TaskRetry,
    TaskRevoked,
    TaskSucceeded,
    WorkerHeartbeat,
    WorkerReady,
    WorkerShutdown,
    WorkerStopping,
)
from stem_observe.server import HttpServer
from stem_observe.signals import emit
from stem_observe.sinks.logs import TaskContextFilter
from stem_observe.sources.worker import (
    TaskRun,
    WorkerSession,
    current_task,
    observe,
    send_worker_heartbeat,
    track_task,
)

__version__ = "0.1.0"

__all__ = [
    "Bridge",
    "ConfigError",
    "HttpServer",
    "QueueSnapshot",
    "ScheduleEntryDispatched",
    "ScheduleEntryDue",
    "ScheduleEntryFailed",
    "Settings",
    "StemObserveError",
    "TaskContextFilter",
    "TaskDeadLettered",
    "TaskEvent",
    "TaskFailed",
    "TaskHeartbeat",
    "TaskPostrun",
    "TaskPrerun",
    "TaskPublished",
    "TaskReceived",
    "TaskRetry",
    "TaskRevoked",
    "TaskRun",
    "TaskSucceeded",
    "WorkerHeartbeat",
    "WorkerReady",
    "WorkerSession",
    "WorkerShutdown",
    "WorkerStopping",
    "__version__",
    "current_task",
    "emit",
    "events",
    "install",
    "installed",
    "observe",
    "send_worker_heartbeat",
    "signals",
    "track_task",
    "uninstall",
]
