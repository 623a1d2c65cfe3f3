"""The end-to-end observability stack of ``tests/integration/test_observability_stack.py``:
what it runs, how it is started, and how what it produces is read. The test module keeps the
fixture and the assertions.

Here: the files the repository ships (dashboards, Prometheus rules, the Alertmanager
configuration), read into :class:`Shipped` with their problems collected, and rewritten to
run locally (:func:`without_for`, :func:`alertmanager_config`); the workload (task types,
schedules, a stalled queue, a Python worker whose task name has regex characters) and the
bridge's own alert rules; the dashboards' variable selections and the values, annotations
and allow-lists (:data:`QUIET`, :data:`NEEDS_HISTORY`) that describe what this stack
produces; :func:`running_stack`, which starts Redis, the simulated workload, ``serve``, the
Python worker, Alertmanager and Prometheus and yields a :class:`Stack`; and the helpers that
scrape, query and parse it, :func:`eventually` among them.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml
from prometheus_client import CollectorRegistry

import stem_observe
from stem_observe.demo import TaskType
from stem_observe.demo_stem import ScheduleType, StemWorkload
from stem_observe.server import HttpServer
from stem_observe.sinks.fleet import DEFAULT_STREAM, FleetForwarder
from stem_observe.sources.stem.keys import StemKeys
from stem_observe.sources.stem.simulator import StemSimulator
from tests.support.dashboards import (
    ALL,
    Selection,
    load_dashboards,
    metric_names,
    panel_queries,
    substitute,
    variable_defaults,
    without_zero_fallback,
)
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.process import Running
from tests.support.prometheus import Alertmanager, Prometheus, check_rules
from tests.support.recording_server import Recorded, RecordingServer
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
PROMETHEUS_RULES = ROOT / "alerts" / "prometheus"
ALERTMANAGER_CONFIG = ROOT / "alerts" / "alertmanager" / "alertmanager.yml"
EXPECTED_DASHBOARDS = {"stem-overview.json": "stem-overview", "stem-task.json": "stem-task",
                       "stem-queues.json": "stem-queues", "stem-workers.json": "stem-workers",
                       "stem-bridge.json": "stem-bridge"}
RUNBOOKS = "https://github.com/stem-observe/stem-observe/blob/main/docs/runbooks.md#"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
#: Series Prometheus makes itself, which rules and panels may read.
PROMETHEUS_SERIES = frozenset({"ALERTS", "ALERTS_FOR_STATE", "up", "scrape_duration_seconds",
                               "scrape_samples_scraped"})

# A payment attempt fails 40% of the time and is retried once: dead letters within seconds.
# E-mails are flaky and retry. Reports are slow. The one consumer of "exports" hangs on the
# three tasks it took (StemQueueStalled, which pages).
TASK_TYPES = (
    TaskType("emails.send", "emails", 5, 0.01, transient_rate=0.15, max_retries=3,
             errors=("SMTPTimeout", "ConnectionResetError")),
    TaskType("payments.charge", "payments", 3, 0.01, transient_rate=0.1, permanent_rate=0.3,
             max_retries=1, errors=("CardDeclined", "GatewayTimeout")),
    TaskType("reports.generate", "reports", 1, 0.3),
)
SCHEDULES = (
    ScheduleType("reports-hourly", "reports.generate", "reports", every_s=2, late_rate=0.5,
                 late_s=1.5),
    ScheduleType("payments-reconcile", "payments.charge", "payments", every_s=2,
                 fail_rate=0.4, errors=("SocketException",)),
)
BACKLOG_QUEUE = "exports"
STUCK_WORKER = "stem-exports-worker"
PY_WORKER, PY_QUEUE = "py-worker-1", "python"
#: A task name full of regex characters: the task dashboard must still select it alone.
PY_TASK = "invoices.render+[pdf](v2)"
#: The Python worker's forwarder holds this many events; a burst beyond it is dropped.
FORWARDER_QUEUE_MAX = 64
KEYS = StemKeys()

#: Concrete values for the dashboards' variables: a queue, task and worker the workload has.
CONCRETE: dict[str, Selection] = {"namespace": "stem", "queue": "payments",
                                  "task": "payments.charge", "worker": "stem-demo-worker-1"}
#: "All" for the variables that offer it; the task variable is single-value (Grafana always
#: selects one task), so it keeps the concrete task.
EVERYTHING: dict[str, Selection] = {"task": "payments.charge"}
#: The Python worker's task, whose name has regex characters, on every queue.
ODD_TASK: dict[str, Selection] = {"queue": ALL, "task": PY_TASK}
SELECTIONS = {"all": EVERYTHING, "concrete": CONCRETE}

#: Counters this run does not produce, so the panels reading them show the `or vector(0)`
#: fallback; (panel title, metric) → why. Every other query behind a fallback must return
#: data without it: a selector that matches nothing (a misspelt label value or label name)
#: cannot hide behind the 0.
QUIET: dict[tuple[str, str], str] = {
    ("Receiver errors in range", "stem_observe_receiver_errors_total"):
        "a signal receiver that raises is a bug; nothing provokes one from outside",
    ("Receiver errors and label overflow", "stem_observe_receiver_errors_total"):
        "a signal receiver that raises is a bug; nothing provokes one from outside",
    ("Watcher errors and drops", "stem_observe_stem_step_errors_total"):
        "needs a key of the wrong type under Stem's heartbeat set or schedule index, which "
        "would break the simulated workers and Beat writing them too",
    ("Watcher errors and drops", "stem_observe_stem_dropped_total"):
        "needs more than 10 000 new dead letters in one poll, or 200 000 status records",
    ("Notifications dropped and failed", "stem_observe_notifications_dropped_total"):
        "needs a receiver's delivery queue to overflow",
    ("Outbox reclaimed and dead letters", "stem_observe_outbox_reclaimed_total"):
        "needs an instance that stops holding outbox entries for the claim timeout (6m)",
}

#: Series that need more history than the end-to-end tests' minute in Prometheus; (panel
#: title, metric) → why. Their queries must be accepted; data is not required.
NEEDS_HISTORY: dict[tuple[str, str], str] = {
    ("Retries by queue, against the 1h baseline", "queue:stem_tasks_retried:rate1h"):
        "the retry baseline averages the hour before the last 5 minutes",
}

#: The values each variable must offer with its parents at "All": the workload's.
VARIABLE_VALUES: dict[str, set[str]] = {
    "namespace": {"stem"},
    "queue": {"payments", "emails", "reports"},
    "task": {"payments.charge", "emails.send", "reports.generate", PY_TASK},
    "worker": {"stem-demo-worker-1", "stem-demo-worker-2", "stem-demo-worker-3"},
}
#: With the parents at their CONCRETE values (queue payments, namespace stem): values each
#: variable must offer, and values it must not (they belong to another queue).
CONCRETE_VARIABLE_VALUES: dict[str, tuple[set[str], set[str]]] = {
    "namespace": ({"stem"}, set()),
    "queue": ({"payments", "emails", "reports"}, set()),
    "task": ({"payments.charge"}, {"emails.send", "reports.generate", PY_TASK}),
    "worker": ({"stem-demo-worker-1"}, set()),
}

#: What each dashboard's annotations show: firing alerts whose name matches, filtered by
#: these variables (an alert shows when it has the variable's value, or lacks the label).
ANNOTATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "stem-overview.json": ("Stem.*", ("queue", "namespace")),
    "stem-task.json": ("Stem.*", ("queue", "task")),
    "stem-queues.json": ("Stem.*", ("queue", "namespace")),
    "stem-workers.json": ("Stem.*", ("worker", "namespace")),
    "stem-bridge.json": ("StemObserve.*", ()),
}

# The bridge's built-in alerting, delivering to the recording server (/bridge) through its
# outbox in Redis: its notification, outbox and alert-state metrics get data. Its alerts on
# failures go to a receiver that answers 400 to everything: notifications given up
# (outcome failed, dead_lettered) and outbox dead letters.
SERVE_RULES = """
rules:
  - name: BridgeDeadLetters
    kind: rate
    signals: [task-dead-lettered]
    group_by: [queue]
    window: 1m
    threshold: 1
    for: 0s
    severity: error
    annotations:
      summary: "{value} dead letters on {queue} in {window}"
  - name: BridgeFailures
    kind: rate
    signals: [task-failed]
    group_by: [queue]
    window: 1m
    threshold: 1
    for: 0s
    severity: warning
    annotations:
      summary: "{value} failures on {queue} in {window}"
routing:
  receivers:
    - name: hook
      kind: webhook
      url_env: STACK_WEBHOOK_URL
    - name: refused
      kind: webhook
      url_env: STACK_REFUSED_URL
  route:
    receiver: hook
    group_by: [alertname, queue]
    group_wait: 0s
    group_interval: 1s
    repeat_interval: 4h
    send_resolved: true
    routes:
      - {matchers: ['alertname = BridgeFailures'], receiver: refused}
"""


# ----------------------------------------------------------------------------- the shipped files


@dataclass
class Shipped:
    """What the repository ships, read without failing: problems are collected."""

    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    rule_files: dict[str, dict[str, Any]] = field(default_factory=dict)
    alertmanager: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"Shipped({len(self.dashboards)} dashboards, {len(self.rule_files)} rule files, "
                f"alertmanager={self.alertmanager is not None}, problems={self.problems})")

    @property
    def report(self) -> str:
        return "\n".join(self.problems)

    @property
    def recording_rules(self) -> dict[str, str]:
        return {rule["record"]: str(rule["expr"]) for rule in self._rules() if "record" in rule}

    @property
    def alerting_rules(self) -> dict[str, dict[str, Any]]:
        return {rule["alert"]: rule for rule in self._rules() if "alert" in rule}

    def _rules(self) -> Iterator[dict[str, Any]]:
        for content in self.rule_files.values():
            for group in content.get("groups") or []:
                yield from group.get("rules") or []


def read_shipped() -> Shipped:
    shipped = Shipped()
    if not DASHBOARDS.is_dir():
        shipped.problems.append(f"{DASHBOARDS.relative_to(ROOT)}/ is missing")
    else:
        try:
            shipped.dashboards = load_dashboards(DASHBOARDS)
        except ValueError as exc:
            shipped.problems.append(f"a dashboard is not valid JSON: {exc}")
    for name in sorted(set(EXPECTED_DASHBOARDS) - set(shipped.dashboards)):
        shipped.problems.append(f"dashboards/{name} is missing")
    for path in sorted(PROMETHEUS_RULES.glob("*.yml")) + sorted(PROMETHEUS_RULES.glob("*.yaml")):
        try:
            content = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            shipped.problems.append(f"{path.relative_to(ROOT)} is not valid YAML: {exc}")
            continue
        if isinstance(content, dict) and "groups" in content:  # promtool tests have no groups
            shipped.rule_files[path.name] = content
    if not shipped.rule_files:
        shipped.problems.append(f"no rule files in {PROMETHEUS_RULES.relative_to(ROOT)}/")
    if not ALERTMANAGER_CONFIG.is_file():
        shipped.problems.append(f"{ALERTMANAGER_CONFIG.relative_to(ROOT)} is missing")
    else:
        try:
            shipped.alertmanager = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
        except yaml.YAMLError as exc:
            shipped.problems.append(f"{ALERTMANAGER_CONFIG.relative_to(ROOT)}: {exc}")
    return shipped


def without_for(content: dict[str, Any]) -> dict[str, Any]:
    """A rule file with every alert's ``for:`` set to 0s. The end-to-end tests have a
    minute, not the rules' real durations, to see alerts fire; ``promtool test rules``
    (the rules' own tests) checks those durations."""
    copy: dict[str, Any] = json.loads(json.dumps(content))
    for group in copy.get("groups") or []:
        for rule in group.get("rules") or []:
            if "for" in rule:
                rule["for"] = "0s"
    return copy


def alertmanager_config(config: dict[str, Any], receiver_url: str) -> dict[str, Any]:
    """The shipped configuration with Slack and PagerDuty pointed at ``receiver_url``
    (``/slack``, ``/pagerduty``), secrets filled in, templates found where they are shipped,
    and grouping waits of a second."""
    copy: dict[str, Any] = json.loads(json.dumps(config))
    slack, pagerduty = f"{receiver_url}/slack", f"{receiver_url}/pagerduty"
    shipped_dir = ALERTMANAGER_CONFIG.parent
    global_ = copy.setdefault("global", {}) or {}
    copy["global"] = global_
    for key in ("slack_api_url_file", "slack_api_url"):
        global_.pop(key, None)
    global_["slack_api_url"] = slack
    global_["pagerduty_url"] = pagerduty
    copy["templates"] = [
        template if Path(template).is_absolute() else str(shipped_dir / template)
        for template in copy.get("templates") or []
    ]
    for receiver in copy.get("receivers") or []:
        for slack_config in receiver.get("slack_configs") or []:
            slack_config.pop("api_url_file", None)
            slack_config["api_url"] = slack
        for pd_config in receiver.get("pagerduty_configs") or []:
            for key in ("routing_key_file", "service_key_file", "service_key"):
                pd_config.pop(key, None)
            pd_config["routing_key"] = "stack-test-routing-key"
            pd_config["url"] = pagerduty

    def fast(route: dict[str, Any], *, root: bool) -> None:
        for key in ("group_wait", "group_interval"):
            if root or key in route:
                route[key] = "1s"
        for child in route.get("routes") or []:
            fast(child, root=False)

    fast(copy.setdefault("route", {}), root=True)
    return copy


# ----------------------------------------------------------------------------- the stack


@dataclass(repr=False)
class Stack:
    shipped: Shipped
    serve: Running
    serve_url: str
    worker_url: str
    prometheus: Prometheus
    alertmanager: Alertmanager | None
    receiver: RecordingServer
    traces: OtlpReceiver
    workload: StemWorkload
    started_at: float

    def exposition(self, url: str) -> str:
        return httpx.get(f"{url}/metrics", headers={"Accept": OPENMETRICS}, timeout=5).text


def forward_python_worker_events(forwarder: FleetForwarder) -> None:
    """A Python worker's events through the fleet stream: successes, a retry, a failure;
    then a burst of heartbeats larger than the forwarder's queue, whose drops it counts and
    reports to serve."""
    for index in range(5):
        with stem_observe.track_task(PY_TASK, task_id=f"py-{index}", queue=PY_QUEUE,
                                     worker_id=PY_WORKER):
            pass
    with stem_observe.track_task(PY_TASK, task_id="py-retry", queue=PY_QUEUE,
                                 worker_id=PY_WORKER, max_retries=3) as run:
        run.retry("renderer busy", countdown=1)
    with contextlib.suppress(ValueError), stem_observe.track_task(
            PY_TASK, task_id="py-failed", queue=PY_QUEUE, worker_id=PY_WORKER):
        raise ValueError("no template")
    stem_observe.send_worker_heartbeat(PY_WORKER, interval_s=2.0, concurrency=2)
    assert forwarder.flush(10), "the fleet forwarder did not flush"
    assert forwarder.dropped == 0, "the forwarder's queue is too small for the tasks"
    # The forwarder sends only when flushed (its interval is an hour): the queue fills up.
    for _ in range(FORWARDER_QUEUE_MAX + 5):
        stem_observe.send_worker_heartbeat(PY_WORKER, interval_s=2.0, concurrency=2)
    assert forwarder.dropped_by_reason() == {"queue_full": 5}
    assert forwarder.flush(10), "the fleet forwarder did not flush"


def start_alertmanager(shipped: Shipped, workdir: Path, receiver_url: str,
                       ) -> Alertmanager | None:
    """Alertmanager on the shipped configuration; ``None`` (and a problem noted) when there
    is none or Alertmanager refuses it."""
    if shipped.alertmanager is None:
        return None
    workdir.mkdir()
    config = alertmanager_config(shipped.alertmanager, receiver_url)
    try:
        return Alertmanager(workdir, yaml.safe_dump(config, sort_keys=False)).start()
    except RuntimeError as exc:
        shipped.problems.append(f"Alertmanager refused {ALERTMANAGER_CONFIG.name}: {exc}")
        return None


def start_prometheus(shipped: Shipped, workdir: Path, *, targets: list[str],
                     alertmanager: Alertmanager | None) -> Prometheus:
    """Prometheus with the shipped rule files (``for:`` at 0s); with none (and a problem
    noted) when ``promtool check rules`` refuses them. Any other failure to start raises."""
    workdir.mkdir()
    rule_paths = []
    for name, content in shipped.rule_files.items():
        path = workdir / name
        path.write_text(yaml.safe_dump(without_for(content), sort_keys=False))
        rule_paths.append(path)
    refused = check_rules(rule_paths)
    if refused is not None:
        shipped.problems.append(f"promtool check rules refuses the rules:\n{refused}")
        shipped.rule_files.clear()
        rule_paths = []
    address = alertmanager.address if alertmanager else None
    return Prometheus(workdir, targets=targets, rule_files=rule_paths,
                      alertmanager=address).start()


def provoke_bad_data(client: redis.Redis, serve_url: str) -> None:
    """Data the bridge must skip and count: an unparsable Stem status record and a fleet
    entry of an unknown version."""
    client.set(KEYS.result("stack-unparsable"), "{not json")
    client.xadd(DEFAULT_STREAM, {"v": "99", "e": "[]"})
    counters = ("stem_observe_stem_parse_errors_total", "stem_observe_fleet_parse_errors_total")
    uncounted = list(counters)

    def counted() -> bool:
        text = httpx.get(f"{serve_url}/metrics", timeout=5).text
        uncounted[:] = [name for name in counters if f"{name}{{" not in text]
        return not uncounted

    try:
        wait_for(counted, timeout_s=30, interval_s=0.1, message="serve counting bad data")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: none of {uncounted}") from None


@contextlib.contextmanager
def running_stack(workdir: Path, shipped: Shipped) -> Iterator[Stack]:
    """The whole stack, started in ``workdir`` and stopped (in reverse order) on exit: Redis
    with the simulated workload and a stalled queue, the OTLP receiver, ``stem-observe
    serve``, the Python worker and its forwarded events, the bad data, Alertmanager and
    Prometheus. What Alertmanager or ``promtool`` refuse of the ``shipped`` files is noted
    in its problems."""
    with contextlib.ExitStack() as cleanup:
        (workdir / "redis").mkdir()
        redis_server = RedisServer(workdir / "redis")
        redis_server.start()
        cleanup.callback(redis_server.stop)
        receiver = cleanup.enter_context(RecordingServer())

        client = redis.Redis.from_url(redis_server.url)
        cleanup.callback(client.close)
        stuck = StemSimulator(client)
        for index in range(40):  # its only consumer hangs: the backlog only grows older
            stuck.enqueue("exports.build", {"n": index}, queue=BACKLOG_QUEUE)
        for delivery in stuck.deliver(BACKLOG_QUEUE, STUCK_WORKER, count=3):
            stuck.start(delivery, STUCK_WORKER)  # and never finishes: the queue is stalled
        workload = StemWorkload(client, TASK_TYPES, rate=30, workers=3, seed=11,
                                schedules=SCHEDULES, revoke_rate=0.02,
                                heartbeat_interval_s=1.0, beat_tick_s=0.25).start()
        cleanup.callback(workload.close)

        traces = OtlpReceiver().start()  # where serve sends its spans (Tempo, say)
        cleanup.callback(traces.stop)
        refused = cleanup.enter_context(RecordingServer(status=400))
        rules = workdir / "serve-rules.yml"
        rules.write_text(SERVE_RULES)
        serve = Running(
            ["serve", "--broker", redis_server.url, "--state-redis", redis_server.url,
             "--fleet", redis_server.url, "--rules", str(rules), "--tick", "1s",
             "--poll-interval", "0.5s", "--discover-interval", "1s",
             "--heartbeat-interval", "1s", "--reconcile-interval", "10s",
             "--notifications", "enable", "--port", "0"],
            workdir, name="serve", env={"STACK_WEBHOOK_URL": f"{receiver.url}/bridge",
                                        "STACK_REFUSED_URL": f"{refused.url}/refused",
                                        "STEM_OBSERVE_OTLP_ENDPOINT": traces.endpoint})
        cleanup.callback(serve.stop)
        serve_url = serve.base_url()
        wait_for(lambda: httpx.get(f"{serve_url}/readyz", timeout=5).status_code == 200,
                 timeout_s=30, interval_s=0.1, message="serve ready")
        # A Python worker forwarding to the fleet stream exposes its forwarder's health.
        worker_registry = CollectorRegistry()
        forwarder = FleetForwarder(redis_server.url, worker=PY_WORKER, flush_interval_s=3600,
                                   queue_max=FORWARDER_QUEUE_MAX,
                                   registry=worker_registry).start()
        cleanup.callback(forwarder.close, timeout_s=5)
        worker_metrics = HttpServer(registry=worker_registry, host="127.0.0.1", port=0).start()
        cleanup.callback(worker_metrics.stop)
        forward_python_worker_events(forwarder)
        provoke_bad_data(client, serve_url)

        alertmanager = start_alertmanager(shipped, workdir / "alertmanager", receiver.url)
        if alertmanager is not None:
            cleanup.callback(alertmanager.stop)
        prometheus = start_prometheus(
            shipped, workdir / "prometheus",
            targets=[url.removeprefix("http://") for url in (serve_url, worker_metrics.url)],
            alertmanager=alertmanager)
        cleanup.callback(prometheus.stop)
        yield Stack(shipped, serve, serve_url, worker_metrics.url, prometheus, alertmanager,
                    receiver, traces, workload, time.time())


# ----------------------------------------------------------------------------- helpers


def eventually(check: Callable[[], list[str]], *, timeout_s: float, interval_s: float = 1.0,
               ) -> list[str]:
    """Run ``check`` (which returns what is still wrong) until nothing is, or the deadline
    passes; the last list of problems (empty when all is well)."""
    deadline = time.monotonic() + timeout_s
    while True:
        problems = check()
        if not problems or time.monotonic() >= deadline:
            return problems
        time.sleep(interval_s)


def exported_families(exposition: str, *, runtime: bool = False) -> dict[str, set[str]]:
    """Metric family -> the sample names it exports (``_total`` of counters, ``_bucket``,
    ``_count`` and ``_sum`` of histograms, and their ``_created``), read from the
    OpenMetrics ``# TYPE`` lines; the Python runtime's families only with ``runtime``."""
    suffixes = {"counter": ("_total", "_created"),
                "histogram": ("_bucket", "_count", "_sum", "_created"),
                "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
                "summary": ("", "_count", "_sum", "_created"), "info": ("_info",)}
    families: dict[str, set[str]] = {}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.M):
        if runtime or not name.startswith(("python_", "process_")):
            families[name] = {name + suffix for suffix in suffixes.get(kind, ("",))}
    return families


def expanded(names: set[str], recording: Mapping[str, str]) -> set[str]:
    """``names`` with every recording rule replaced, transitively, by what it reads."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in recording:
            todo.extend(metric_names(recording[name]))
    return seen


def selection(dashboard: Mapping[str, Any], values: Mapping[str, Selection],
              ) -> dict[str, Selection]:
    """The dashboard's variables as set: "All" (and the textbox defaults), then ``values``."""
    return {**variable_defaults(dashboard), **values}


def panel_expressions(shipped: Shipped, values: Mapping[str, Selection],
                      ) -> list[tuple[str, str, str]]:
    """``(dashboard file, panel title, expr with variables)`` for every panel query."""
    found = []
    for name, dashboard in shipped.dashboards.items():
        for title, expr in panel_queries(dashboard):
            found.append((name, title, substitute(expr, selection(dashboard, values),
                                                  dashboard)))
    return found


def the_query_to_run(title: str, expr: str) -> str:
    """``expr`` without its ``or vector(0)`` fallback, unless it reads a counter in
    :data:`QUIET`."""
    bare = without_zero_fallback(expr)
    if bare is None or any((title, metric) in QUIET for metric in metric_names(expr)):
        return expr
    return bare


def without_nan(result: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The samples of an instant query result that are numbers (a ratio of two zero rates
    is NaN: Grafana shows "No data" for it)."""
    return [r for r in result if r.get("value", [0, "0"])[1].lower() != "nan"]


def labelled(result: list[dict[str, Any]]) -> dict[frozenset[tuple[str, str]], float]:
    return {frozenset(r["metric"].items()): float(r["value"][1]) for r in result}


def payloads(received: list[Recorded], path: str) -> list[dict[str, Any]]:
    found = []
    for request in received:
        if request.path == path:
            with contextlib.suppress(ValueError):
                found.append(json.loads(request.body))
    return found


def firing(stack: Stack, alertname: str) -> list[dict[str, Any]]:
    return [alert for alert in stack.prometheus.alerts()
            if alert["labels"].get("alertname") == alertname and alert["state"] == "firing"]


def is_python_task(exemplar: Mapping[str, Any]) -> bool:
    """Forwarded by the Python worker, whose spans stay in its own process."""
    return str(exemplar["labels"].get("task_id", "")).startswith("py-")
