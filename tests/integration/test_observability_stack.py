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

The stack, what it runs and the helpers that read it are in
:mod:`tests.support.observability_stack`; this module holds the fixture and the
assertions.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

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
    variable_queries,
    without_zero_fallback,
)
from tests.support.observability_stack import (
    ANNOTATIONS,
    CONCRETE,
    CONCRETE_VARIABLE_VALUES,
    DASHBOARDS,
    EXPECTED_DASHBOARDS,
    NEEDS_HISTORY,
    ODD_TASK,
    PROMETHEUS_SERIES,
    PY_TASK,
    QUIET,
    RUNBOOKS,
    SELECTIONS,
    VARIABLE_VALUES,
    Stack,
    eventually,
    expanded,
    exported_families,
    firing,
    is_python_task,
    labelled,
    panel_expressions,
    payloads,
    read_shipped,
    running_stack,
    selection,
    the_query_to_run,
    without_nan,
)
from tests.support.prometheus import run_rule_tests
from tests.support.wait import wait_for

# Every test may be the first and pay for starting the stack; the waits for data below have
# their own deadlines (60-90 s) within this.
pytestmark = pytest.mark.timeout(150)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    shipped = read_shipped()
    with running_stack(workdir, shipped) as running:
        yield running
    serve = running.serve
    assert serve.process.returncode == 0, serve.stderr_path.read_text()[-4000:]


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
