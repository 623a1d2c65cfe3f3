"""The shipped dashboards and Prometheus rules against the real servers, end to end.

One stack for the module: a private ``redis-server``; simulated Stem workers and Beat
filling it (:class:`~stem_observe.demo_stem.StemWorkload`: flaky tasks that retry, payments
that fail into the dead-letter list, a slow queue, heartbeats, schedules on time, late and
failing) and a queue whose only consumer hangs; a Python worker forwarding a few events to
the fleet stream and exposing its forwarder's metrics; ``stem-observe serve`` watching all
of it with built-in alert rules, shared state, fleet consumption and traces sent to a local
OTLP receiver; a real ``prometheus`` scraping serve and the worker every second and
evaluating ``alerts/prometheus/*.yml``; a real ``prometheus-alertmanager`` running
``alerts/alertmanager/alertmanager.yml`` with Slack and PagerDuty pointed at a local server
that records what it receives.

Then every dashboard panel's query must return data through Prometheus' HTTP API (with
"all" and with concrete variable values), every metric family exported must be on some
panel (and every name the panels and rules read must be exported or recorded), the
dead-letter, retry and stalled-queue alerts must arrive as Slack payloads (and the critical
one as a PagerDuty event), and the duration histogram's exemplars must be queryable and
lead to the traces of their tasks.
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
from stem_observe.sinks.fleet import FleetForwarder
from stem_observe.sources.stem.simulator import StemSimulator
from tests.support.dashboards import (
    annotation_queries,
    load_dashboards,
    metric_names,
    panel_queries,
    substitute,
    variable_defaults,
)
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.process import Running
from tests.support.prometheus import Alertmanager, Prometheus
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
PY_WORKER, PY_QUEUE, PY_TASK = "py-worker-1", "python", "invoices.render"
#: Concrete values for the dashboards' variables: a queue, task and worker the workload has.
CONCRETE = {"namespace": "stem", "queue": "payments", "task": "payments.charge",
            "worker": "stem-demo-worker-1"}

# The bridge's built-in alerting, delivering to the recording server (/bridge) through its
# outbox in Redis: its notification, outbox and alert-state metrics get data.
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
routing:
  receivers:
    - name: hook
      kind: webhook
      url_env: STACK_WEBHOOK_URL
  route:
    receiver: hook
    group_by: [alertname, queue]
    group_wait: 0s
    group_interval: 1s
    repeat_interval: 4h
    send_resolved: true
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
    """A Python worker's events through the fleet stream: successes, a retry, a failure."""
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
    """Prometheus with the shipped rule files (``for:`` at 0s), or with none (and a problem
    noted) when it refuses them."""
    workdir.mkdir()
    rule_paths = []
    for name, content in shipped.rule_files.items():
        path = workdir / name
        path.write_text(yaml.safe_dump(without_for(content), sort_keys=False))
        rule_paths.append(path)
    address = alertmanager.address if alertmanager else None
    try:
        return Prometheus(workdir, targets=targets, rule_files=rule_paths,
                          alertmanager=address).start()
    except RuntimeError as exc:
        shipped.problems.append(f"Prometheus refused the rules: {exc}")
        shipped.rule_files.clear()
    return Prometheus(workdir, targets=targets, alertmanager=address).start()


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
        rules = workdir / "serve-rules.yml"
        rules.write_text(SERVE_RULES)
        serve = Running(
            ["serve", "--broker", redis_server.url, "--state-redis", redis_server.url,
             "--fleet", redis_server.url, "--rules", str(rules), "--tick", "1s",
             "--poll-interval", "0.5s", "--discover-interval", "1s",
             "--heartbeat-interval", "1s", "--reconcile-interval", "10s",
             "--notifications", "enable", "--port", "0"],
            workdir, name="serve", env={"STACK_WEBHOOK_URL": f"{receiver.url}/bridge",
                                        "STEM_OBSERVE_OTLP_ENDPOINT": traces.endpoint})
        cleanup.callback(serve.stop)
        serve_url = serve.base_url()
        wait_for(lambda: httpx.get(f"{serve_url}/readyz", timeout=5).status_code == 200,
                 timeout_s=30, interval_s=0.1, message="serve ready")
        # A Python worker forwarding to the fleet stream exposes its forwarder's health.
        worker_registry = CollectorRegistry()
        forwarder = FleetForwarder(redis_server.url, worker=PY_WORKER, flush_interval_s=0.05,
                                   registry=worker_registry).start()
        cleanup.callback(forwarder.close, timeout_s=5)
        worker_metrics = HttpServer(registry=worker_registry, host="127.0.0.1", port=0).start()
        cleanup.callback(worker_metrics.stop)
        forward_python_worker_events(forwarder)

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


def panel_expressions(shipped: Shipped, values: Mapping[str, str],
                      ) -> list[tuple[str, str, str]]:
    """``(dashboard file, panel title, expr with variables)`` for every panel query."""
    found = []
    for name, dashboard in shipped.dashboards.items():
        for title, expr in panel_queries(dashboard):
            found.append((name, title, substitute(expr, {**variable_defaults(dashboard),
                                                          **values})))
    return found


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
    assert stack.shipped.dashboards, stack.shipped.report
    values = {} if variables == "all" else CONCRETE
    queries = panel_expressions(stack.shipped, values)

    def empty() -> list[str]:
        problems = []
        for dashboard, title, expr in queries:
            try:
                if not stack.prometheus.query(expr):
                    problems.append(f"{dashboard} / {title!r}: no data from {expr}")
            except AssertionError as exc:  # Prometheus refused the query
                problems.append(f"{dashboard} / {title!r}: {exc}")
        return problems

    problems = eventually(empty, timeout_s=60)
    assert not problems, (f"{len(problems)} of {len(queries)} panel queries "
                          f"({variables} variables) returned nothing:\n" + "\n".join(problems))


def test_annotation_queries_are_valid_and_show_the_firing_alerts(stack: Stack) -> None:
    assert stack.shipped.dashboards, stack.shipped.report
    queries = [(name, title, substitute(expr, variable_defaults(dashboard)))
               for name, dashboard in stack.shipped.dashboards.items()
               for title, expr in annotation_queries(dashboard)]
    assert queries, "no dashboard has an annotation query"

    def shown() -> list[str]:
        refused, empty = [], []
        for dashboard, title, expr in queries:
            try:
                if not stack.prometheus.query(expr):
                    empty.append(f"{dashboard} / {title!r}: {expr}")
            except AssertionError as exc:
                refused.append(f"{dashboard} / {title!r}: {exc}")
        # A healthy bridge fires no alert of its own: not every annotation has data.
        return refused + (empty if len(empty) == len(queries) else [])

    problems = eventually(shown, timeout_s=90)
    assert not problems, "annotation queries refused or all empty:\n" + "\n".join(problems)


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
