"""The shipped Prometheus rules and Alertmanager example, checked by the real tools and read.

``promtool check rules`` and ``promtool test rules`` (the unit tests in
``alerts/prometheus/tests/`` make every alert fire and stay quiet), ``amtool check-config``
and ``amtool template render`` on the Alertmanager example; then what the tools cannot know:
every alert is labelled, annotated, linked to its runbook section and to one of the shipped
dashboards, tested both ways, and reads only metrics the bridge defines. Two things need
the real servers: a real ``prometheus`` loading the rules onto three hours of history (what
``promtool test rules``, which evaluates rules from the first sample on, cannot show), and
a real ``prometheus-alertmanager`` running the example, whose inhibition and grouping must
keep deployments apart. The tools are required: ``scripts/test.sh`` installs them.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import redis
import yaml

from stem_observe.demo import TaskType
from stem_observe.demo_stem import StemWorkload
from stem_observe.sinks._instruments import STEM_PROFILE
from tests.support.dashboards import metric_names
from tests.support.process import Running
from tests.support.prometheus import Alertmanager, Prometheus
from tests.support.recording_server import RecordingServer
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_for

ROOT: Final = Path(__file__).resolve().parents[2]
RULES_DIR: Final = ROOT / "alerts" / "prometheus"
RULE_FILES: Final = sorted(RULES_DIR.glob("*.yml"))
RULE_TESTS: Final = sorted((RULES_DIR / "tests").glob("*.yml"))
ALERTMANAGER: Final = ROOT / "alerts" / "alertmanager" / "alertmanager.yml"
RUNBOOKS: Final = ROOT / "docs" / "runbooks.md"

RUNBOOK_URL: Final = "https://github.com/stem-observe/stem-observe/blob/main/docs/runbooks.md#"
DASHBOARD_URL: Final = re.compile(r"^http://localhost:3000/d/(?P<uid>[a-z-]+)(?:\?(?P<query>.*))?$")
DASHBOARD_UIDS: Final = frozenset(
    {"stem-overview", "stem-task", "stem-queues", "stem-workers", "stem-bridge"})
SEVERITIES: Final = frozenset({"critical", "warning", "info"})
ANNOTATIONS: Final = ("summary", "description", "runbook_url", "dashboard_url")
RECORDING_RULES: Final = frozenset({
    "queue:stem_tasks_started:rate5m", "queue:stem_tasks_succeeded:rate5m",
    "queue:stem_tasks_failed:rate5m", "queue:stem_tasks_retried:rate5m",
    "queue:stem_tasks_dead_lettered:rate5m", "queue:stem_tasks_failure:ratio5m",
    "queue:stem_tasks_retried:rate1h",
})
#: Series the rules may read that the bridge does not define: Prometheus' own ``up`` and the
#: process collector's start time (the default registry ``serve`` exports).
OTHER_SERIES: Final = frozenset({"up", "process_start_time_seconds"})
TOOL_TIMEOUT_S: Final = 60.0

Rule = dict[str, Any]


# ----------------------------------------------------------------------------- reading the files


def tool(name: str) -> str:
    """The path of a required tool: missing, the test fails (it must not pass unproven)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; scripts/test.sh installs it with apt-get")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S,
                            cwd=ROOT, check=False)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> Iterator[Rule]:
    for path in RULE_FILES:
        for group in load(path)["groups"]:
            yield from group["rules"]


def alerts() -> dict[str, Rule]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def recordings() -> dict[str, Rule]:
    return {rule["record"]: rule for rule in rules() if "record" in rule}


def alert_cases() -> Iterator[Mapping[str, Any]]:
    for path in RULE_TESTS:
        for test in load(path)["tests"]:
            yield from test.get("alert_rule_test") or []


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown``."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def defined_metrics() -> set[str]:
    """Every series name the bridge's code defines (counters with ``_total``, histograms
    with ``_bucket``, ``_count`` and ``_sum``), read from the metric definitions."""
    suffixes = {"counter": ("_total",), "gauge": ("",),
                "histogram": ("_bucket", "_count", "_sum")}
    names = {spec.name + suffix for spec in STEM_PROFILE.values()
             for suffix in suffixes[spec.kind]}
    kinds = {"Counter": "counter", "CounterMetricFamily": "counter", "Gauge": "gauge",
             "GaugeMetricFamily": "gauge", "Histogram": "histogram"}
    definition = re.compile(r"\b(Counter|CounterMetricFamily|Gauge|GaugeMetricFamily|"
                            r"Histogram)\(\s*\"(stem_\w+)\"")
    for source in (ROOT / "stem_observe").rglob("*.py"):
        for kind, name in definition.findall(source.read_text(encoding="utf-8")):
            names |= {name + suffix for suffix in suffixes[kinds[kind]]}
    return names


# ----------------------------------------------------------------------------- the real tools


def test_promtool_checks_the_rule_files() -> None:
    assert RULE_FILES, f"no rule files in {RULES_DIR}"
    result = run(tool("promtool"), "check", "rules", *map(str, RULE_FILES))
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS, f"no promtool tests in {RULES_DIR / 'tests'}"
    result = run(tool("promtool"), "test", "rules", *map(str, RULE_TESTS))
    assert "FAILED" not in result.stdout + result.stderr


def test_amtool_checks_the_alertmanager_example() -> None:
    result = run(tool("amtool"), "check-config", str(ALERTMANAGER))
    assert "SUCCESS" in result.stdout


def test_the_notification_templates_render(tmp_path: Path) -> None:
    """The Slack and PagerDuty templates, rendered by Alertmanager's own template engine
    for a group of two alerts, name the alert, deployment, queue, summary, runbook and
    dashboard."""
    amtool = tool("amtool")
    rule = alerts()["StemDeadLetterGrowth"]
    base = {"alertname": "StemDeadLetterGrowth", "severity": "warning",
            "job": "stem-observe-prod", "task": "payments.charge",
            "reason": "max-retries-exhausted"}
    group = {
        "receiver": "slack", "status": "firing", "externalURL": "http://alertmanager:9093",
        "groupLabels": {"alertname": "StemDeadLetterGrowth", "job": "stem-observe-prod"},
        "commonLabels": {"alertname": "StemDeadLetterGrowth", "severity": "warning",
                         "job": "stem-observe-prod"},
        "commonAnnotations": {},
        "alerts": [
            {"status": "firing", "labels": {**base, "queue": queue},
             "annotations": {
                 "summary": f"3 payments.charge tasks dead-lettered on queue {queue} in 10m",
                 "description": "replay them",
                 "runbook_url": rule["annotations"]["runbook_url"],
                 "dashboard_url": f"http://localhost:3000/d/stem-queues?var-queue={queue}"},
             "startsAt": "2026-11-28T09:40:00Z", "endsAt": "0001-01-01T00:00:00Z",
             "generatorURL": "http://prometheus:9090/graph", "fingerprint": queue}
            for queue in ("payments", "refunds")
        ],
    }
    data = tmp_path / "group.json"
    data.write_text(json.dumps(group))
    templates = str(ALERTMANAGER.parent / "templates" / "*.tmpl")

    def render(name: str) -> str:
        return run(amtool, "template", "render", f"--template.glob={templates}",
                   f'--template.text={{{{ template "{name}" . }}}}',
                   f"--template.data={data}").stdout

    title = render("stem.slack.title")
    assert "StemDeadLetterGrowth" in title
    assert "(stem-observe-prod)" in title
    text = render("stem.slack.text")
    for queue in ("payments", "refunds"):
        assert f"queue `{queue}`" in text
        assert f"dead-lettered on queue {queue} in 10m" in text
        assert f"<http://localhost:3000/d/stem-queues?var-queue={queue}|Dashboard>" in text
    assert f"<{RUNBOOK_URL}stemdeadlettergrowth|Runbook>" in text
    assert render("stem.pagerduty.severity").strip() == "warning"
    assert "StemDeadLetterGrowth (stem-observe-prod)" in render("stem.pagerduty.description")
    assert RUNBOOK_URL + "stemdeadlettergrowth" in render("stem.pagerduty.details")


# ----------------------------------------------------------------------------- what is shipped


def test_every_alert_is_labelled_annotated_and_waits() -> None:
    shipped = alerts()
    assert len(shipped) == sum(1 for rule in rules() if "alert" in rule), "duplicate names"
    problems = []
    for name, rule in shipped.items():
        if not name.startswith("Stem"):
            problems.append(f"{name}: the name does not start with Stem")
        if (rule.get("labels") or {}).get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity must be one of {sorted(SEVERITIES)}")
        if not rule.get("for"):
            problems.append(f"{name}: no `for`, one odd scrape would page")
        annotations = rule.get("annotations") or {}
        problems += [f"{name}: no {key}" for key in ANNOTATIONS if not annotations.get(key)]
        description = str(annotations.get("description", ""))
        if "$value" not in description or "$labels" not in description:
            problems.append(f"{name}: the description does not template $value and $labels")
    assert not problems, "\n".join(problems)


def test_runbook_urls_lead_to_a_section_of_the_runbooks() -> None:
    anchors = github_anchors(RUNBOOKS.read_text(encoding="utf-8"))
    problems = []
    for name, rule in alerts().items():
        url = rule["annotations"]["runbook_url"]
        if url != RUNBOOK_URL + name.lower():
            problems.append(f"{name}: runbook_url {url}")
        if name.lower() not in anchors:
            problems.append(f"{name}: docs/runbooks.md has no section #{name.lower()}")
    assert not problems, "\n".join(problems)


def test_dashboard_urls_name_a_shipped_dashboard() -> None:
    problems = []
    for name, rule in alerts().items():
        url = rule["annotations"]["dashboard_url"]
        match = DASHBOARD_URL.match(url)
        if match is None or match["uid"] not in DASHBOARD_UIDS:
            problems.append(f"{name}: {url} is not one of {sorted(DASHBOARD_UIDS)}")
            continue
        # Variables are filled from the alert's own labels.
        for param in filter(None, (match["query"] or "").split("&")):
            variable, _, value = param.partition("=")
            label = variable.removeprefix("var-")
            if not variable.startswith("var-") or f"$labels.{label}" not in value:
                problems.append(f"{name}: {param} is not var-<label> from $labels.<label>")
    assert not problems, "\n".join(problems)


def test_the_recording_rules_are_the_shared_ones() -> None:
    assert set(recordings()) == RECORDING_RULES


def test_every_alert_fires_and_stays_quiet_in_a_promtool_test() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in alert_cases():
        (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    shipped = set(alerts())
    assert shipped - fires == set(), "no promtool test case where these fire"
    assert shipped - quiet == set(), "no promtool test case where these stay quiet"
    assert (fires | quiet) - shipped == set(), "promtool tests of alerts that do not exist"


def test_annotations_are_checked_exactly_for_retry_spike_and_dead_letters() -> None:
    checked = {case["alertname"] for case in alert_cases()
               for alert in case.get("exp_alerts") or []
               if set(ANNOTATIONS) <= set(alert.get("exp_annotations") or {})}
    assert {"StemRetrySpike", "StemDeadLetterGrowth"} <= checked


def test_every_recording_rule_value_is_tested() -> None:
    tested = set()
    for path in RULE_TESTS:
        for test in load(path)["tests"]:
            for case in test.get("promql_expr_test") or []:
                tested |= metric_names(case["expr"])
    assert RECORDING_RULES - tested == set()


def test_the_rules_read_only_metrics_the_bridge_defines() -> None:
    defined = defined_metrics() | set(recordings()) | OTHER_SERIES
    unknown = {}
    for rule in rules():
        name = rule.get("alert") or rule["record"]
        missing = metric_names(str(rule["expr"])) - defined
        if missing:
            unknown[name] = sorted(missing)
    assert not unknown, f"metrics no code defines: {unknown}"


def test_alertmanager_routes_critical_to_pagerduty_and_everything_to_slack() -> None:
    config = load(ALERTMANAGER)
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    route = config["route"]
    by_receiver = {child["receiver"]: child for child in route["routes"]}
    assert by_receiver["pagerduty"]["matchers"] == ['severity = "critical"']
    assert by_receiver["pagerduty"]["continue"] is True
    assert route["receiver"] == "slack"
    assert "alertname" in route["group_by"]
    pagerduty = receivers["pagerduty"]["pagerduty_configs"][0]
    slack = receivers["slack"]["slack_configs"][0]
    # Secrets come from files, never from the example itself.
    assert "routing_key" not in pagerduty
    assert pagerduty["routing_key_file"]
    assert "api_url" not in slack
    assert config["global"]["slack_api_url_file"]
    for names in (rule["source_matchers"] + rule["target_matchers"]
                  for rule in config["inhibit_rules"]):
        for matcher in names:
            for alertname in re.findall(r"Stem\w+", matcher):
                assert alertname in alerts(), f"inhibit rule names unknown alert {alertname}"
    assert {"alertname", "job", "namespace"} <= set(route["group_by"])


# ----------------------------------------------------------------------------- a real Prometheus


def openmetrics_history(end: float, series: Mapping[str, Any], *, hours: float = 3,
                        step_s: int = 15) -> str:
    """OpenMetrics text with timestamps: each ``series`` ("family{labels}" with its type)
    sampled every ``step_s`` over the ``hours`` before ``end`` from a function of the
    minutes before ``end`` (None: no sample)."""
    lines = []
    for family, (kind, by_series) in series.items():
        lines.append(f"# TYPE {family} {kind}")
        suffix = "_total" if kind == "counter" else ""
        for labels, value_at in by_series.items():
            for index in range(int(hours * 3600 / step_s), -1, -1):
                minutes_before = index * step_s / 60
                value = value_at(minutes_before)
                if value is not None:
                    lines.append(f"{family}{suffix}{{{labels}}} {value} "
                                 f"{end - index * step_s:.3f}")
    return "\n".join([*lines, "# EOF", ""])


def test_the_retry_baseline_is_there_as_soon_as_the_rules_are_loaded(tmp_path: Path) -> None:
    """Prometheus has three hours of a bridge's counters when the rules are first loaded:
    StemRetrySpike compares with the queues' history at once. A queue that retries as it
    always did stays quiet, a queue whose retries jumped is a spike, and a queue whose
    first retries came three minutes ago (while Prometheus was scraping) has no history
    and fires on the minimum count alone."""
    promtool = tool("promtool")
    end = time.time()
    bridge = 'job="stem-observe",instance="bridge:9464"'

    def steady(per_minute: float) -> Any:
        return lambda minutes_before: 10_000 + per_minute * (180 - minutes_before)

    def jumped(minutes_before: float) -> float:  # 2 a minute, 20 a minute for 4 minutes
        if minutes_before > 4:
            return 2 * (180 - minutes_before)
        return 2 * 176 + 20 * (4 - minutes_before)

    def new(minutes_before: float) -> float | None:  # 10 a minute from 3 minutes ago
        return None if minutes_before > 3 else 1 + 10 * (3 - minutes_before)

    history = openmetrics_history(end, {
        "up": ("gauge", {bridge: lambda _: 1}),
        "process_start_time_seconds": ("gauge", {bridge: lambda _: end - 86_400}),
        "stem_tasks_retried": ("counter", {
            f'{bridge},task="emails.send",queue="emails"': steady(6),
            f'{bridge},task="reports.build",queue="reports"': jumped,
            f'{bridge},task="imports.run",queue="imports"': new,
        }),
    })
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    (tmp_path / "history.om").write_text(history)
    run(promtool, "tsdb", "create-blocks-from", "openmetrics", str(tmp_path / "history.om"),
        str(workdir / "data"))
    rule_files = []
    for path in RULE_FILES:
        copy = workdir / path.name
        copy.write_text(path.read_text(encoding="utf-8"))
        rule_files.append(copy)

    with Prometheus(workdir, targets=[], rule_files=rule_files) as prometheus:
        def spiking() -> set[str] | None:
            queues = {alert["labels"]["queue"] for alert in prometheus.alerts()
                      if alert["labels"]["alertname"] == "StemRetrySpike"}
            return queues if {"reports", "imports"} <= queues else None

        queues = wait_for(spiking, timeout_s=30, interval_s=0.2,
                          message="StemRetrySpike pending for reports and imports")
        # Evaluated together with the others, from the same data.
        assert queues == {"reports", "imports"}, "emails retries as it always did"
        baseline = {sample["metric"]["queue"]: float(sample["value"][1]) * 300
                    for sample in prometheus.query("queue:stem_tasks_retried:rate1h")}
        assert baseline["emails"] == pytest.approx(30, rel=0.02)
        assert baseline["reports"] == pytest.approx(10, rel=0.1)
        assert "imports" not in baseline


@pytest.mark.timeout(120)
def test_serve_replicas_on_one_deployment_count_each_task_once(tmp_path: Path) -> None:
    """Two real ``serve`` processes watch the same Stem deployment (as in the --state-redis
    setup): each counts every task. Prometheus scrapes both; the recording rules count the
    tasks once (the replicas' `max`), where a plain sum over instances counts them twice."""
    (tmp_path / "redis").mkdir()
    redis_server = RedisServer(tmp_path / "redis")
    with contextlib.ExitStack() as cleanup:
        redis_server.start()
        cleanup.callback(redis_server.stop)
        client = redis.Redis.from_url(redis_server.url)
        cleanup.callback(client.close)
        workload = StemWorkload(client, (TaskType("emails.send", "emails", 1, 0.01),),
                                rate=20, workers=2, seed=5, schedules=(),
                                heartbeat_interval_s=1.0).start()
        cleanup.callback(workload.close)
        replicas = []
        for name in ("serve-a", "serve-b"):
            replica = Running(
                ["serve", "--broker", redis_server.url, "--state-redis", redis_server.url,
                 "--notifications", "enable", "--poll-interval", "0.5s",
                 "--discover-interval", "1s", "--heartbeat-interval", "1s", "--port", "0"],
                tmp_path, name=name)
            cleanup.callback(replica.stop)
            replicas.append(replica)
        targets = [replica.base_url().removeprefix("http://") for replica in replicas]
        workdir = tmp_path / "prometheus"
        workdir.mkdir()
        recording = workdir / "recording.yml"
        recording.write_text((RULES_DIR / "recording.yml").read_text(encoding="utf-8"))
        prometheus = Prometheus(workdir, targets=targets, rule_files=[recording]).start()
        cleanup.callback(prometheus.stop)

        def recorded() -> tuple[float, float] | None:
            """The recorded rate and its evaluation time, once both replicas have counted
            the queue's tasks for 10 scrapes."""
            scraped = prometheus.query(
                'count_over_time(stem_tasks_started_total{queue="emails"}[5m]) >= 10')
            samples = prometheus.query('queue:stem_tasks_started:rate5m{queue="emails"}')
            if len(scraped) < 2 or not samples:
                return None
            at, value = samples[0]["value"]
            return float(at), float(value)

        at, value = wait_for(recorded, timeout_s=60, interval_s=0.5,
                             message="both replicas scraped 10 times and the rate recorded")

        def at_time(expr: str) -> float:
            result = prometheus.get("/api/v1/query", query=expr, time=at)["result"]
            assert len(result) == 1, (expr, result)
            return float(result[0]["value"][1])

        started = 'rate(stem_tasks_started_total{queue="emails"}[5m])'
        each = at_time(f"max({started})")
        summed = at_time(f"sum({started})")
        assert summed > 1.6 * each, "both replicas count every task"
        # Once, not twice (samples scraped during the rule's evaluation make up the rest).
        assert value < 0.6 * summed
        assert value == pytest.approx(each, rel=0.1)


# ----------------------------------------------------------------------------- a real Alertmanager


def example_alertmanager_config(workdir: Path, receiver_url: str) -> str:
    """The shipped example as it is, with its secret files filled (the Slack webhook and
    PagerDuty's URL pointing at ``receiver_url``) and its templates found where they ship."""
    config = load(ALERTMANAGER)
    secrets = workdir / "secrets"
    secrets.mkdir(parents=True)
    webhook = secrets / "slack-webhook-url"
    webhook.write_text(f"{receiver_url}/slack\n")
    key = secrets / "pagerduty-routing-key"
    key.write_text("rules-test-routing-key\n")
    config["global"]["slack_api_url_file"] = str(webhook)
    config["global"]["pagerduty_url"] = f"{receiver_url}/pagerduty"
    for receiver in config["receivers"]:
        for pagerduty in receiver.get("pagerduty_configs") or []:
            pagerduty["routing_key_file"] = str(key)
    config["templates"] = [str(ALERTMANAGER.parent / template)
                           for template in config["templates"]]
    return yaml.safe_dump(config, sort_keys=False)


PROD: Final = {"job": "stem-observe-prod"}
STAGING: Final = {"job": "stem-observe-staging"}
#: Two Prometheus servers with the same job name, told apart by their external label.
EU: Final = {"cluster": "eu", "job": "stem-observe"}
US: Final = {"cluster": "us", "job": "stem-observe"}

#: What is held back, by what: (source, target) names of INHIBITION_ALERTS; targets not
#: named here must stay active.
INHIBITIONS: Final = {
    "queue stalled, prod": "no worker up, prod",
    "worker stale, prod bridge-2": "bridge-2 down, prod",
    "backlog, prod bridge-2": "bridge-2 down, prod",
    "worker stale, prod bridge-3": "bridge-3 lost the fleet Redis, prod",
    "backlog, prod bridge-4": "bridge-4 lost the Stem Redis, prod",
    "queue stalled, eu": "no worker up, eu",
}
INHIBITION_ALERTS: Final[dict[str, dict[str, str]]] = {
    # Sources.
    "no worker up, prod": {"alertname": "StemWorkerDown", "severity": "critical", **PROD,
                           "instance": "bridge:9464", "namespace": "stem"},
    "bridge-2 down, prod": {"alertname": "StemObserveDown", "severity": "critical", **PROD,
                            "instance": "bridge-2:9464"},
    "bridge-3 lost the fleet Redis, prod": {
        "alertname": "StemObserveSidecarRedisDown", "severity": "critical", **PROD,
        "instance": "bridge-3:9464", "redis": "fleet"},
    "bridge-4 lost the Stem Redis, prod": {
        "alertname": "StemObserveSidecarRedisDown", "severity": "critical", **PROD,
        "instance": "bridge-4:9464", "redis": "stem"},
    "no worker up, eu": {"alertname": "StemWorkerDown", "severity": "critical", **EU,
                         "instance": "bridge:9464", "namespace": "stem"},
    # Targets: Stem's default namespace everywhere, the same instance names.
    "queue stalled, prod": {"alertname": "StemQueueStalled", "severity": "critical", **PROD,
                            "instance": "bridge:9464", "namespace": "stem", "queue": "emails"},
    "queue stalled, staging": {"alertname": "StemQueueStalled", "severity": "critical",
                               **STAGING, "instance": "bridge:9464", "namespace": "stem",
                               "queue": "emails"},
    "worker stale, prod bridge-2": {
        "alertname": "StemWorkerHeartbeatStale", "severity": "warning", **PROD,
        "instance": "bridge-2:9464", "namespace": "billing", "worker": "w-2"},
    "worker stale, staging bridge-2": {
        "alertname": "StemWorkerHeartbeatStale", "severity": "warning", **STAGING,
        "instance": "bridge-2:9464", "namespace": "billing", "worker": "w-2"},
    "backlog, prod bridge-2": {"alertname": "StemBacklogHigh", "severity": "warning", **PROD,
                               "instance": "bridge-2:9464", "namespace": "billing",
                               "queue": "invoices"},
    "worker stale, prod bridge-5": {
        "alertname": "StemWorkerHeartbeatStale", "severity": "warning", **PROD,
        "instance": "bridge-5:9464", "namespace": "billing", "worker": "w-5"},
    "backlog, prod bridge-3": {"alertname": "StemBacklogHigh", "severity": "warning", **PROD,
                               "instance": "bridge-3:9464", "namespace": "batch",
                               "queue": "reports"},
    "worker stale, prod bridge-3": {
        "alertname": "StemWorkerHeartbeatStale", "severity": "warning", **PROD,
        "instance": "bridge-3:9464", "namespace": "batch", "worker": "w-3"},
    "backlog, prod bridge-4": {"alertname": "StemBacklogHigh", "severity": "warning", **PROD,
                               "instance": "bridge-4:9464", "namespace": "media",
                               "queue": "media"},
    "retry spike, prod": {"alertname": "StemRetrySpike", "severity": "warning", **PROD,
                          "queue": "emails"},
    "queue stalled, eu": {"alertname": "StemQueueStalled", "severity": "critical", **EU,
                          "instance": "bridge:9464", "namespace": "stem", "queue": "emails"},
    "queue stalled, us": {"alertname": "StemQueueStalled", "severity": "critical", **US,
                          "instance": "bridge:9464", "namespace": "stem", "queue": "emails"},
}


def test_alertmanager_inhibits_within_one_deployment_and_groups_deployments_apart(
    tmp_path: Path,
) -> None:
    """The example's inhibition rules, run by Alertmanager itself: each source holds back
    the alerts of its own bridge or namespace, never those of another deployment (another
    job, or another Prometheus' `cluster`) that has the same namespace and instance names;
    and no notification group mixes two deployments."""
    tool("amtool")  # the Alertmanager package
    now = datetime.now(UTC)
    posted = [{"labels": labels, "annotations": {"summary": name},
               "startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=1)).isoformat(),
               "generatorURL": "http://prometheus:9090/graph"}
              for name, labels in INHIBITION_ALERTS.items()]

    def name_of(alert: Mapping[str, Any]) -> str:
        for name, labels in INHIBITION_ALERTS.items():
            if alert["labels"] == labels:
                return name
        raise AssertionError(f"an alert nobody posted: {alert['labels']}")

    with RecordingServer() as receiver:
        workdir = tmp_path / "alertmanager"
        workdir.mkdir()
        config = example_alertmanager_config(workdir, receiver.url)
        with Alertmanager(workdir, config) as alertmanager:
            response = httpx.post(f"{alertmanager.url}/api/v2/alerts", json=posted, timeout=10)
            assert response.status_code == 200, response.text

            def wrong_statuses() -> list[str]:
                held = {name_of(alert): alert for alert in alertmanager.alerts()}
                missing = [f"{name}: not held" for name in INHIBITION_ALERTS
                           if name not in held]
                fingerprints = {name: alert["fingerprint"] for name, alert in held.items()}
                found = []
                for name, alert in held.items():
                    status = alert["status"]
                    expected = INHIBITIONS.get(name)
                    by = sorted(name_of(other) for other in held.values()
                                if other["fingerprint"] in status["inhibitedBy"])
                    if expected is None and status["inhibitedBy"]:
                        found.append(f"{name}: held back by {by}")
                    if expected is not None and (
                            status["inhibitedBy"] != [fingerprints.get(expected)]):
                        found.append(f"{name}: held back by {by}, not by {expected!r}")
                    if status["state"] != ("suppressed" if expected else "active"):
                        found.append(f"{name}: {status['state']}")
                return missing + found

            # Alertmanager takes in the sources asynchronously: wait (with a deadline) until
            # what it reports is right, and report what is wrong at the deadline.
            deadline = time.monotonic() + 20
            while (wrong := wrong_statuses()) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not wrong, "\n".join(wrong)

            def grouped() -> list[dict[str, Any]] | None:
                groups: list[dict[str, Any]] = alertmanager.get("/api/v2/alerts/groups")
                slack = sum(len(group["alerts"]) for group in groups
                            if group["receiver"]["name"] == "slack")
                return groups if slack == len(INHIBITION_ALERTS) else None

            groups = wait_for(grouped, timeout_s=20, interval_s=0.1,
                              message="every alert in a Slack group")
            problems = []
            group_of: dict[tuple[str, str], int] = {}
            for index, group in enumerate(groups):
                members = [name_of(alert) for alert in group["alerts"]]
                deployments = {(INHIBITION_ALERTS[name].get("cluster", ""),
                                INHIBITION_ALERTS[name]["job"]) for name in members}
                if len(deployments) != 1:
                    problems.append(f"group {group['labels']} mixes {sorted(deployments)}: "
                                    f"{members}")
                for name in members:
                    group_of[(group["receiver"]["name"], name)] = index
            assert not problems, "\n".join(problems)
            for receiver_name in ("slack", "pagerduty"):
                for one, other in (("queue stalled, prod", "queue stalled, staging"),
                                   ("queue stalled, eu", "queue stalled, us")):
                    assert group_of[(receiver_name, one)] != group_of[(receiver_name, other)]
