"""The shipped dashboards and Prometheus rules against the real servers, end to end.

One stack for the module: a private ``redis-server``; simulated Stem workers and Beat
filling it (:class:`~stem_observe.demo_stem.StemWorkload`: flaky tasks that retry, payments
that fail into the dead-letter list, a slow queue, heartbeats, schedules on time, late and
failing) and a queue whose only consumer hangs; a Python worker forwarding a few events to
the fleet stream (one task name full of regex characters, and more events than its queue
holds) and exposing its forwarder's metrics; ``stem-observe serve`` watching all of it with
built-in alert rules (one routed to a receiver that refuses every notification), shared
state, fleet consumption and traces sent to a local OTLP receiver; bad data the bridge must
count (an unparsable status record, a fleet entry of an unknown version); a real
``prometheus`` scraping serve and the worker every second and evaluating
``alerts/prometheus/*.yml``; a real ``prometheus-alertmanager`` running
``alerts/alertmanager/alertmanager.yml`` with Slack and PagerDuty pointed at a local server
that records what it receives.

Then, with the variables as Grafana would set them ("All", and concrete values): every
dashboard panel's query must return data through Prometheus' HTTP API, and so must each
query behind an ``or vector(0)`` without that fallback (except an explicit list of counters
a healthy run does not produce); every label a selector matches on must be on the series it
selects; every variable query must offer the workload's queues, tasks, workers and
namespace; every annotation query must show exactly the firing alerts it should; the totals
"in range" must count everything counted since the bridge started. Every metric family
exported must be on some panel (and every name the panels and rules read must be exported
or recorded); the dead-letter, retry and stalled-queue alerts must arrive as Slack payloads
(and the critical one as a PagerDuty event); the duration histogram's exemplars must be
queryable and lead to the traces of their tasks.
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
import pytest
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
    annotation_queries,
    in_range_total,
    label_values_query,
    load_dashboards,
    metric_names,
    panel_queries,
    selectors,
    substitute,
    variable_defaults,
    variable_queries,
    without_zero_fallback,
)
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.process import Running
from tests.support.prometheus import Alertmanager, Prometheus, check_rules, run_rule_tests
from tests.support.recording_server import Recorded, RecordingServer
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_for

# Every test may be the first and pay for starting the stack; the waits for data below have
# their own deadlines (60-90 s) within this.
pytestmark = pytest.mark.timeout(150)

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

#: Series that need more history than this module's minute in Prometheus; (panel title,
#: metric) → why. Their queries must be accepted; data is not required.
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
    """A rule file with every alert's ``for:`` set to 0s. The module has a minute, not the
    rules' real durations, to see alerts fire; ``promtool test rules`` (the rules' own
    tests) checks those durations."""
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


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    shipped = read_shipped()
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
    assert serve.process.returncode == 0, serve.stderr_path.read_text()[-4000:]


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


# ----------------------------------------------------------------------------- the tests


def test_the_dashboards_rules_and_alertmanager_config_are_shipped(stack: Stack) -> None:
    assert not stack.shipped.problems, stack.shipped.report
    for name, uid in EXPECTED_DASHBOARDS.items():
        assert stack.shipped.dashboards[name].get("uid") == uid, name
    loaded = {rule["name"] for group in stack.prometheus.rule_groups()
              for rule in group["rules"]}
    assert set(stack.shipped.recording_rules) | set(stack.shipped.alerting_rules) <= loaded


@pytest.mark.parametrize("variables", ["all", "concrete"])
def test_every_panel_query_returns_data(stack: Stack, variables: str) -> None:
    """With the fallback to 0 taken off: a selector that matches nothing shows."""
    assert stack.shipped.dashboards, stack.shipped.report
    queries = panel_expressions(stack.shipped, SELECTIONS[variables])

    def empty() -> list[str]:
        problems = []
        for dashboard, title, expr in queries:
            run = the_query_to_run(title, expr)
            try:
                if not stack.prometheus.query(run) and not any(
                        (title, metric) in NEEDS_HISTORY for metric in metric_names(expr)):
                    problems.append(f"{dashboard} / {title!r}: no data from {run}")
            except AssertionError as exc:  # Prometheus refused the query
                problems.append(f"{dashboard} / {title!r}: {exc}")
        return problems

    problems = eventually(empty, timeout_s=60)
    assert not problems, (f"{len(problems)} of {len(queries)} panel queries "
                          f"({variables} variables) returned nothing:\n" + "\n".join(problems))


def test_the_quiet_counters_are_behind_a_fallback_on_those_panels(stack: Stack) -> None:
    read = {(title, metric) for dashboard in stack.shipped.dashboards.values()
            for title, expr in panel_queries(dashboard) for metric in metric_names(expr)}
    fallbacks = {(title, metric) for dashboard in stack.shipped.dashboards.values()
                 for title, expr in panel_queries(dashboard) if without_zero_fallback(expr)
                 for metric in metric_names(expr)}
    assert set(QUIET) <= fallbacks, set(QUIET) - fallbacks
    assert set(NEEDS_HISTORY) <= read, set(NEEDS_HISTORY) - read


def test_a_task_name_with_regex_characters_selects_that_task(stack: Stack) -> None:
    """Grafana puts a single-value variable in as it is: the task is matched exactly."""
    dashboard = stack.shipped.dashboards["stem-task.json"]
    values = selection(dashboard, ODD_TASK)
    read = {"stem_tasks_started_total", "stem_tasks_failed_total", "stem_tasks_retried_total",
            "stem_task_duration_seconds_bucket"}
    queries = [(title, substitute(expr, values, dashboard))
               for title, expr in panel_queries(dashboard)]

    def wrong() -> list[str]:
        problems = []
        for title, expr in queries:
            run = without_zero_fallback(expr) or expr
            try:
                result = stack.prometheus.query(run)
            except AssertionError as exc:
                problems.append(f"{title!r}: {exc}")
                continue
            if metric_names(expr) & read and not result:
                problems.append(f"{title!r}: no data from {run}")
            for series in result:
                if series["metric"].get("task", PY_TASK) != PY_TASK:
                    problems.append(f"{title!r}: another task in {run}: {series['metric']}")
        return problems

    problems = eventually(wrong, timeout_s=60)
    assert not problems, "\n".join(problems)


def test_every_label_a_selector_matches_on_is_on_its_series(stack: Stack) -> None:
    """A misspelt label name matches nothing with a value, and everything with `=~".*"`."""
    used: dict[str, set[str]] = {}
    for dashboard in stack.shipped.dashboards.values():
        texts = [expr for _, expr in panel_queries(dashboard)]
        texts += [query for _, query in variable_queries(dashboard)]
        for text in texts:
            for metric, matchers in selectors(text):
                used.setdefault(metric, set()).update(label for label, _, _ in matchers)
    # ALERTS carries each alert's own labels: an annotation's filter label is legitimately
    # absent from alerts that lack it (the annotation tests below check those filters).
    used.pop("ALERTS", None)
    assert used.pop("", set()) == set(), "a selector without a metric name"
    checked = set()

    def missing() -> list[str]:
        problems = []
        for metric, labels in sorted(used.items()):
            series = stack.prometheus.series(metric, start=stack.started_at - 60,
                                             end=time.time())
            if not series:
                continue  # the data tests say whether it should have some
            checked.add(metric)
            known = set().union(*(set(s) for s in series))
            if labels - known:
                problems.append(f"{metric} has no label {sorted(labels - known)} "
                                f"(it has {sorted(known)})")
        return problems

    problems = eventually(missing, timeout_s=30)
    assert not problems, "\n".join(problems)
    assert {"stem_tasks_started_total", "stem_tasks_failed_total", "stem_queue_depth",
            "stem_worker_up", "queue:stem_tasks_started:rate5m"} <= checked, sorted(checked)


@pytest.mark.parametrize("parents", ["all", "concrete"])
def test_every_variable_query_offers_the_workloads_values(stack: Stack, parents: str) -> None:
    assert stack.shipped.dashboards, stack.shipped.report
    queries = []
    for name, dashboard in stack.shipped.dashboards.items():
        values = selection(dashboard, SELECTIONS[parents])
        for variable, query in variable_queries(dashboard):
            match, label = label_values_query(query)
            assert match is not None, f"{name}: ${variable} reads no metric: {query}"
            queries.append((name, variable, label, substitute(match, values, dashboard)))
    assert {variable for _, variable, _, _ in queries} == set(VARIABLE_VALUES)

    def wrong() -> list[str]:
        problems = []
        for dashboard, variable, label, match in queries:
            unwanted: set[str]
            if parents == "all":
                wanted, unwanted = VARIABLE_VALUES[variable], set()
            else:
                wanted, unwanted = CONCRETE_VARIABLE_VALUES[variable]
            try:
                offered = set(stack.prometheus.label_values(
                    label, match, start=stack.started_at - 60, end=time.time()))
            except AssertionError as exc:
                problems.append(f"{dashboard} / ${variable}: {exc}")
                continue
            if wanted - offered or unwanted & offered:
                problems.append(f"{dashboard} / ${variable} = label_values({match}, {label}) "
                                f"offers {sorted(offered)}: missing {sorted(wanted - offered)}, "
                                f"unexpected {sorted(unwanted & offered)}")
        return problems

    problems = eventually(wrong, timeout_s=60)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("variables", ["all", "concrete", "odd task"])
def test_annotation_queries_show_exactly_the_firing_alerts_they_should(
    stack: Stack, variables: str,
) -> None:
    """Each dashboard's annotations against the firing alerts at the same instant: those
    whose name matches, and, per filter, that have the selected value or lack the label."""
    assert stack.shipped.dashboards, stack.shipped.report
    chosen = {**SELECTIONS, "odd task": {**CONCRETE, **ODD_TASK}}[variables]
    queries = []
    for name, dashboard in stack.shipped.dashboards.items():
        assert name in ANNOTATIONS, f"{name}: which alerts should its annotations show?"
        values = selection(dashboard, chosen)
        found = annotation_queries(dashboard)
        assert len(found) == 1, f"{name}: {found}"
        (_, expr), = found
        queries.append((name, substitute(expr, values, dashboard), values))

    def shown(labels: Mapping[str, str], dashboard: str, values: Mapping[str, Selection],
              ) -> bool:
        alertname, filters = ANNOTATIONS[dashboard]
        if not re.fullmatch(alertname, labels.get("alertname", "")):
            return False
        for label in filters:
            value = values[label]
            if value != ALL and label in labels and labels[label] != value:
                return False
        return True

    def wrong() -> list[str]:
        problems = []
        at = time.time() - 1
        firing_now = stack.prometheus.query('ALERTS{alertstate="firing"}', at=at)
        for dashboard, expr, values in queries:
            try:
                got = set(labelled(stack.prometheus.query(expr, at=at)))
            except AssertionError as exc:
                problems.append(f"{dashboard}: {exc}")
                continue
            expected = {frozenset(a["metric"].items()) for a in firing_now
                        if shown(a["metric"], dashboard, values)}
            if not expected:
                problems.append(f"{dashboard}: no firing alert it should show yet")
            elif got != expected:
                problems.append(f"{dashboard}: {expr} shows {len(got)} alerts, expected "
                                f"{len(expected)}; missing {[dict(a) for a in expected - got]}, "
                                f"extra {[dict(a) for a in got - expected]}")
        return problems

    problems = eventually(wrong, timeout_s=90)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("variables", ["all", "concrete"])
def test_totals_in_range_are_all_the_bridge_counted(stack: Stack, variables: str) -> None:
    """The bridge started within the dashboard's hour: its totals in range are its counters'
    values, first counts of each series included (`increase` alone would miss them)."""
    totals = []
    for name, dashboard in stack.shipped.dashboards.items():
        values = selection(dashboard, SELECTIONS[variables])
        for title, expr in panel_queries(dashboard):
            parts = in_range_total(without_zero_fallback(expr) or expr)
            if "[$__range]" in expr:
                assert parts is not None, f"{name} / {title!r}: {expr}"
            if parts is not None:
                total, series = parts
                totals.append((f"{name} / {title!r}", substitute(expr, values, dashboard),
                               substitute(f"{total} ({series})", values, dashboard)))
    assert len(totals) >= 8

    def wrong() -> list[str]:
        problems = []
        at = time.time() - 2
        for where, expr, counted in totals:
            shown = labelled(without_nan(stack.prometheus.query(expr, at=at)))
            expected = labelled(stack.prometheus.query(counted, at=at))
            if without_zero_fallback(expr) is not None and not expected:
                expected = {frozenset(): 0.0}
            if shown != pytest.approx(expected):
                problems.append(f"{where}: {shown} in range, but the bridge counted "
                                f"{expected} ({counted})")
        return problems

    problems = eventually(wrong, timeout_s=60)
    assert not problems, "\n".join(problems)


@dataclass(frozen=True)
class Scenario:
    """Made-up series of one or two bridge instances (``i1``, ``i2``) for ``promtool``, and
    what a total over the last hour at ``at`` must be: for a task-level counter, and for a
    counter of the bridge itself."""

    name: str
    up: str
    started: str
    counters: tuple[str, ...]
    at: str
    task_total: float
    own_total: float
    watcher: bool = True  # the instances export the queue's gauges (Stem watchers)


IN_RANGE_SCENARIOS = (
    Scenario("first count while Prometheus scrapes", "1x200", "0x200", ("_x90 1x40",),
             "120m", 1, 1),
    Scenario("first count after the bridge restarted", "1x200", "0x100 6000x100",
             ("_x105 2x40",), "130m", 2, 2),
    Scenario("a bridge running for hours before Prometheus", "_x560 1x50", "_x560 0x50",
             ("_x560 100x20 101x30",), "600m", 1.0125, 1.0125),
    Scenario("a series older than the range", "1x200", "0x200", ("5x60 5+1x60",), "120m",
             59, 59),
    # Two `serve` replicas watching one deployment both count each of its tasks.
    Scenario("two watcher replicas", "1x200", "0x200", ("_x90 1x40", "_x90 1x40"), "120m",
             1, 2),
    # Two fleet consumers (no queue gauges) each count their share.
    Scenario("two fleet consumers", "1x200", "0x200", ("_x90 1x40", "_x90 2x40"), "120m",
             3, 3, watcher=False),
)


def test_totals_in_range_count_new_series_whole_but_not_an_old_bridges_history(
    tmp_path: Path,
) -> None:
    """promtool evaluates each "in range" panel over made-up series: a counter series born
    in the range counts whole (its first count is in its first sample); a long-running
    bridge that Prometheus starts scraping within the range counts only what it counted
    since; a series older than the range counts its increase; the task counters of Stem
    watcher replicas count once, those of fleet consumers add up."""
    tests = []
    for name, dashboard in load_dashboards(DASHBOARDS).items():
        values = selection(dashboard, CONCRETE)
        for title, expr in panel_queries(dashboard):
            parts = in_range_total(without_zero_fallback(expr) or expr)
            if parts is None:
                continue
            (metric,) = metric_names(parts[1])
            task_level = metric.startswith(("stem_tasks_", "stem_task_"))
            labels = ('task="payments.charge", queue="payments", reason="r", error_type="E", '
                      'outcome="o", receiver="hook"')
            for scenario in IN_RANGE_SCENARIOS:
                series = []
                for index, counter in enumerate(scenario.counters):
                    instance = f'job="j", instance="i{index + 1}"'
                    series += [
                        {"series": f"up{{{instance}}}", "values": scenario.up},
                        {"series": f"process_start_time_seconds{{{instance}}}",
                         "values": scenario.started},
                        {"series": f"{metric}{{{instance}, {labels}}}", "values": counter},
                    ]
                    if scenario.watcher:
                        series.append({"series": f'stem_queue_depth{{{instance}, '
                                                 'namespace="stem", queue="payments"}',
                                       "values": "3x700"})
                expected = scenario.task_total if task_level else scenario.own_total
                tests.append({
                    "name": f"{name} / {title}: {scenario.name}",
                    "interval": "1m",
                    "input_series": series,
                    "promql_expr_test": [{
                        "expr": f"sum({substitute(expr, values, dashboard)})",
                        "eval_time": scenario.at,
                        "exp_samples": [{"labels": "{}", "value": expected}],
                    }],
                })
    assert len(tests) >= 8 * len(IN_RANGE_SCENARIOS)
    (tmp_path / "none.yml").write_text("groups: []\n")
    path = tmp_path / "in_range_test.yml"
    path.write_text(yaml.safe_dump({"rule_files": ["none.yml"], "evaluation_interval": "1m",
                                    "tests": tests}, sort_keys=False))
    failures = run_rule_tests(path)
    assert failures is None, failures


def test_every_exported_metric_is_on_a_panel_and_every_name_read_exists(stack: Stack) -> None:
    shipped = stack.shipped
    assert shipped.dashboards, shipped.report
    expositions = [stack.exposition(stack.serve_url), stack.exposition(stack.worker_url)]
    families: dict[str, set[str]] = {}
    exported: set[str] = set()
    for exposition in expositions:
        families |= exported_families(exposition)
        exported |= set().union(*exported_families(exposition, runtime=True).values())
    recording = shipped.recording_rules
    panel_names = set()
    for dashboard in shipped.dashboards.values():
        for _title, expr in panel_queries(dashboard):
            panel_names |= metric_names(expr)
    shown = expanded(panel_names, recording)
    missing = sorted(family for family, samples in families.items() if not samples & shown)
    assert not missing, "exported but on no panel (directly or by a recording rule): " + (
        ", ".join(missing))

    read: dict[str, set[str]] = {}
    for name, dashboard in shipped.dashboards.items():
        for title, expr in panel_queries(dashboard):
            for metric in metric_names(expr):
                read.setdefault(metric, set()).add(f"{name} / {title}")
    rule_exprs = {**recording, **{name: str(rule["expr"])
                                  for name, rule in shipped.alerting_rules.items()}}
    for rule_name, expr in rule_exprs.items():
        for metric in metric_names(expr):
            read.setdefault(metric, set()).add(f"rule {rule_name}")
    unknown = {metric: sorted(where) for metric, where in read.items()
               if metric not in exported and metric not in recording
               and metric not in PROMETHEUS_SERIES}
    assert not unknown, "read but neither exported nor recorded: " + json.dumps(
        unknown, indent=1, sort_keys=True)


def firing(stack: Stack, alertname: str) -> list[dict[str, Any]]:
    return [alert for alert in stack.prometheus.alerts()
            if alert["labels"].get("alertname") == alertname and alert["state"] == "firing"]


@pytest.mark.parametrize("alertname",
                         ["StemDeadLetterGrowth", "StemRetrySpike", "StemQueueStalled"])
def test_the_alert_reaches_slack_and_pagerduty_through_alertmanager(
    stack: Stack, alertname: str,
) -> None:
    assert stack.alertmanager is not None, stack.shipped.report
    rule = stack.shipped.alerting_rules.get(alertname)
    assert rule is not None, f"alerts/prometheus defines no alert {alertname}"
    critical = (rule.get("labels") or {}).get("severity") == "critical"
    runbook = RUNBOOKS + alertname.lower()
    alerts = wait_for(lambda: firing(stack, alertname), timeout_s=90, interval_s=1,
                      message=f"{alertname} firing in Prometheus")
    queues = {alert["labels"]["queue"] for alert in alerts}

    def delivered(path: str) -> dict[str, Any] | None:
        for payload in payloads(stack.receiver.received(), path):
            text = json.dumps(payload)
            if alertname in text and any(f'"{queue}"' in text or f" {queue}" in text
                                         or f"={queue}" in text for queue in queues):
                return payload
        return None

    slack = wait_for(lambda: delivered("/slack"), timeout_s=30, interval_s=0.5,
                     message=f"a Slack message about {alertname} on {sorted(queues)}")
    assert runbook in json.dumps(slack), slack
    pagerduty = payloads(stack.receiver.received(), "/pagerduty")
    if critical:
        paged = wait_for(lambda: delivered("/pagerduty"), timeout_s=30, interval_s=0.5,
                         message=f"a PagerDuty event about {alertname}")
        assert paged["event_action"] == "trigger"
        assert paged["routing_key"] == "stack-test-routing-key"
        assert paged["dedup_key"]
        assert runbook in json.dumps(paged), paged
    else:
        assert not [p for p in pagerduty if alertname in json.dumps(p)], "paged, not critical"


def is_python_task(exemplar: Mapping[str, Any]) -> bool:
    """Forwarded by the Python worker, whose spans stay in its own process."""
    return str(exemplar["labels"].get("task_id", "")).startswith("py-")


def test_duration_exemplars_carry_task_and_trace_ids(stack: Stack) -> None:
    def traced() -> list[dict[str, Any]] | None:
        series = stack.prometheus.query_exemplars(
            "stem_task_duration_seconds_bucket", start=stack.started_at - 60, end=time.time() + 1)
        exemplars = [exemplar for entry in series for exemplar in entry.get("exemplars", [])]
        if any(re.fullmatch(r"[0-9a-f]{32}", e["labels"].get("trace_id", ""))
               for e in exemplars):
            return exemplars
        return None

    exemplars = wait_for(traced, timeout_s=60, interval_s=1,
                         message="stem_task_duration_seconds exemplars with a trace id")
    assert all(exemplar["labels"].get("task_id") for exemplar in exemplars)
    # Each exemplar's trace is one serve exported spans of: the link from a bucket leads to
    # the trace of that very task.
    exemplar_traces = {e["labels"]["trace_id"]: e["labels"]["task_id"] for e in exemplars
                       if "trace_id" in e["labels"] and not is_python_task(e)}

    def spans_of_exemplars() -> bool:
        spans = {(span.trace_id, span.attributes.get("stem.task.id"))
                 for span in stack.traces.snapshot()}
        return all(pair in spans for pair in exemplar_traces.items())

    wait_for(spans_of_exemplars, timeout_s=30, interval_s=0.5,
             message=f"spans for the exemplars' traces {exemplar_traces}")
    stem_ids = {e["labels"]["task_id"] for e in exemplars if not is_python_task(e)}
    assert stem_ids
    for task_id in sorted(stem_ids)[:20]:  # ids of real tasks: Stem has their status records
        assert stack.workload.client.exists(f"stem:result:{task_id}"), task_id
