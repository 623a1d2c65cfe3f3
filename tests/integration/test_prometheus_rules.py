"""The shipped Prometheus rules and Alertmanager example, checked by the real tools and read.

``promtool check rules`` and ``promtool test rules`` (the unit tests in
``alerts/prometheus/tests/`` make every alert fire and stay quiet), ``amtool check-config``
and ``amtool template render`` on the Alertmanager example; then what the tools cannot know:
every alert is labelled, annotated, linked to its runbook section and to one of the shipped
dashboards, tested both ways, and reads only metrics the bridge defines.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from stem_observe.sinks._instruments import STEM_PROFILE
from tests.support.dashboards import metric_names

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
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/test.sh installs it with apt-get)")
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
    for a group of two alerts, name the alert, queue, summary, runbook and dashboard."""
    amtool = tool("amtool")
    rule = alerts()["StemDeadLetterGrowth"]
    base = {"alertname": "StemDeadLetterGrowth", "severity": "warning",
            "task": "payments.charge", "reason": "max-retries-exhausted"}
    group = {
        "receiver": "slack", "status": "firing", "externalURL": "http://alertmanager:9093",
        "groupLabels": {"alertname": "StemDeadLetterGrowth"},
        "commonLabels": {"alertname": "StemDeadLetterGrowth", "severity": "warning"},
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

    assert "StemDeadLetterGrowth" in render("stem.slack.title")
    text = render("stem.slack.text")
    for queue in ("payments", "refunds"):
        assert f"queue `{queue}`" in text
        assert f"dead-lettered on queue {queue} in 10m" in text
        assert f"<http://localhost:3000/d/stem-queues?var-queue={queue}|Dashboard>" in text
    assert f"<{RUNBOOK_URL}stemdeadlettergrowth|Runbook>" in text
    assert render("stem.pagerduty.severity").strip() == "warning"
    assert "StemDeadLetterGrowth" in render("stem.pagerduty.description")
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
