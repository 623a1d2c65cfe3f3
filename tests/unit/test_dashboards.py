"""The Grafana dashboards in dashboards/: what scripts/build_dashboards.py writes, importable
with the Prometheus data source chosen at import, every query over metrics the bridge exports
and variables the dashboard defines."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from tests.support.dashboards import (
    DASHBOARD_DIR,
    annotation_queries,
    iter_panels,
    label_values_query,
    load_dashboards,
    metric_names,
    panel_queries,
    selectors,
    variable_queries,
    variable_references,
)

ROOT: Final = Path(__file__).resolve().parents[2]
DS: Final = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
UIDS: Final = {
    "stem-overview.json": "stem-overview",
    "stem-task.json": "stem-task",
    "stem-queues.json": "stem-queues",
    "stem-workers.json": "stem-workers",
    "stem-bridge.json": "stem-bridge",
}
PANEL_TYPES: Final = {"timeseries", "stat", "table", "bargauge", "heatmap", "text", "row"}
VARIABLES: Final = {"namespace", "queue", "task", "worker", "trace_url"}
# The recording rules of alerts/prometheus the dashboards may read.
RECORDING_RULES: Final = {
    "queue:stem_tasks_started:rate5m", "queue:stem_tasks_succeeded:rate5m",
    "queue:stem_tasks_failed:rate5m", "queue:stem_tasks_retried:rate5m",
    "queue:stem_tasks_dead_lettered:rate5m", "queue:stem_tasks_failure:ratio5m",
    "queue:stem_tasks_retried:rate1h",
}
# Series that are not the bridge's: Prometheus' own `up`, and the process collector's start
# time (the totals in range tell a bridge that started in the range by it).
NOT_THE_BRIDGES: Final = {"up", "process_start_time_seconds"}
DASHBOARDS: Final = load_dashboards()


def _each() -> pytest.MarkDecorator:
    return pytest.mark.parametrize("name", sorted(UIDS))


def _queries(board: Mapping[str, Any]) -> list[tuple[str, str]]:
    return panel_queries(board) + annotation_queries(board)


def _walk(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    yield key, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key)


# ----------------------------------------------------------------------------- the files


def test_the_five_dashboards_are_there() -> None:
    assert set(DASHBOARDS) == set(UIDS)


def test_committed_json_is_what_the_generator_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    scripts = ROOT / "scripts"
    monkeypatch.syspath_prepend(str(scripts))
    spec = importlib.util.spec_from_file_location("build_dashboards",
                                                  scripts / "build_dashboards.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built: dict[str, str] = module.build()
    assert set(built) == set(UIDS)
    for name, content in built.items():
        committed = (DASHBOARD_DIR / name).read_text(encoding="utf-8")
        assert committed == content, f"{name} is stale: run scripts/build_dashboards.py"


@_each()
def test_importable_with_the_datasource_chosen_at_import(name: str) -> None:
    board = DASHBOARDS[name]
    assert board["uid"] == UIDS[name]
    assert board["id"] is None
    assert board["schemaVersion"] >= 39
    assert board["title"]
    assert board["__inputs"] == [{
        "description": "The Prometheus that scrapes stem-observe", "label": "Prometheus",
        "name": "DS_PROMETHEUS", "pluginId": "prometheus", "pluginName": "Prometheus",
        "type": "datasource"}]
    requires = {(r["type"], r["id"]) for r in board["__requires"]}
    assert {("grafana", "grafana"), ("datasource", "prometheus")} <= requires
    used = {p["type"] for p in iter_panels(board)} - {"row"}
    assert {("panel", t) for t in used} <= requires


def test_titles_and_uids_are_unique() -> None:
    assert len({b["title"] for b in DASHBOARDS.values()}) == len(DASHBOARDS)
    assert len({b["uid"] for b in DASHBOARDS.values()}) == len(DASHBOARDS)


# ----------------------------------------------------------------------------- panels


@_each()
def test_panel_types_are_current(name: str) -> None:
    types = {p["type"] for p in iter_panels(DASHBOARDS[name])}
    assert types <= PANEL_TYPES, types - PANEL_TYPES


@_each()
def test_every_panel_queries_the_import_datasource(name: str) -> None:
    for panel in iter_panels(DASHBOARDS[name]):
        if panel["type"] in {"text", "row"}:
            assert "targets" not in panel
            continue
        assert panel["datasource"] == DS, panel["title"]
        targets = panel["targets"]
        assert targets, panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for t in targets:
            assert t["datasource"] == DS, panel["title"]
            assert t["expr"].strip(), panel["title"]


@_each()
def test_panel_ids_are_unique_and_every_panel_has_a_place(name: str) -> None:
    panels = list(iter_panels(DASHBOARDS[name]))
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids)
    for panel in panels:
        pos = panel["gridPos"]
        assert set(pos) == {"h", "w", "x", "y"}, panel["title"]
        assert min(pos["h"], pos["w"]) > 0, panel["title"]
        assert min(pos["x"], pos["y"]) >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        assert panel["title"], panel


def test_collapsed_rows_hold_their_panels() -> None:
    rows = [p for b in DASHBOARDS.values() for p in b["panels"] if p["type"] == "row"]
    assert any(r["collapsed"] for r in rows)
    for row in rows:
        assert bool(row["panels"]) == row["collapsed"], row["title"]


@_each()
def test_no_datasource_is_hard_coded(name: str) -> None:
    builtin = {"type": "grafana", "uid": "-- Grafana --"}
    for key, value in _walk(DASHBOARDS[name]):
        if key == "datasource":
            assert value in (DS, builtin), value
        assert key != "datasourceUid"
    assert "DS_PROMETHEUS}" in json.dumps(DASHBOARDS[name])


@_each()
def test_rates_use_grafana_windows(name: str) -> None:
    """Ranges are $__rate_interval (follows the scrape interval) or $__range (totals)."""
    for title, expr in _queries(DASHBOARDS[name]):
        for window in re.findall(r"\[([^\]]*)\]", expr):
            assert window in {"$__rate_interval", "$__range"}, (title, expr)


@_each()
def test_zero_fallback_only_on_a_total(name: str) -> None:
    """`or vector(0)` turns "No data" into 0 for counters that have no series until
    something goes wrong; on a sum by labels it would add a label-less series."""
    for title, expr in _queries(DASHBOARDS[name]):
        if "vector(" in expr:
            assert expr.startswith("sum("), (title, expr)
            assert expr.endswith(") or vector(0)"), (title, expr)
            depth = 0
            for index, char in enumerate(expr):  # the sum's parenthesis closes at the `or`
                depth += {"(": 1, ")": -1}.get(char, 0)
                if depth == 0 and char == ")":
                    assert index == len(expr) - len(" or vector(0)") - 1, (title, expr)
                    break


@_each()
def test_totals_in_range_count_a_series_born_in_the_range(name: str) -> None:
    """A counter series appears with its first count already in it; `increase` alone would
    show 0 for the first dead letter while the alert fires for it."""
    for title, expr in _queries(DASHBOARDS[name]):
        for series in re.findall(r"increase\((.*?)\[\$__range\]\)", expr):
            assert f"({series} unless {series} offset $__range)" in expr, (title, expr)
            assert "time() - process_start_time_seconds < $__range_s" in expr, (title, expr)


@_each()
def test_task_series_of_watcher_replicas_count_once(name: str) -> None:
    """Every `serve` replica watching one Stem deployment counts each of its tasks: as in the
    recording rules, the watcher's copies are taken once (max), other series summed."""
    for title, expr in panel_queries(DASHBOARDS[name]):
        task_level = {m for m in metric_names(expr) if m.startswith(("stem_tasks_", "stem_task_"))}
        if task_level:
            for op in ("and", "unless"):
                assert f"{op} on (job, instance, queue) last_over_time(stem_queue_depth[" in expr, (
                    title, expr)
            assert re.search(r"max by \(job, [^)]*\btask\b", expr), (title, expr)


def test_reachability_stats_are_red_until_reached() -> None:
    found = 0
    for board in DASHBOARDS.values():
        for panel in iter_panels(board):
            exprs = [t["expr"] for t in panel.get("targets", [])]
            if panel["type"] == "stat" and any(e.endswith("_redis_up)") for e in exprs):
                steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
                assert steps == [{"color": "red", "value": None},
                                 {"color": "green", "value": 1}], panel["title"]
                found += 1
    assert found == 2


def test_table_value_columns_have_grafanas_names() -> None:
    """An instant table query's value column is `Value` when the panel has one query and
    `Value #<refId>` when it has several: the rename must use those names."""
    tables = [p for b in DASHBOARDS.values() for p in iter_panels(b) if p["type"] == "table"]
    assert any(len(t["targets"]) == 1 for t in tables)
    for table in tables:
        refs = [t["refId"] for t in table["targets"]]
        grafana = ["Value"] if len(refs) == 1 else [f"Value #{ref}" for ref in refs]
        (organize,) = [t for t in table["transformations"] if t["id"] == "organize"]
        assert list(organize["options"]["renameByName"]) == grafana, table["title"]


@_each()
def test_data_links_point_at_the_dashboards(name: str) -> None:
    for key, value in _walk(DASHBOARDS[name]):
        if key == "links" and isinstance(value, list):
            for link in value:
                for uid in re.findall(r"/d/([\w-]+)", link.get("url", "")):
                    assert uid in UIDS.values(), link


# ----------------------------------------------------------------------------- variables


@_each()
def test_every_variable_a_query_uses_is_defined(name: str) -> None:
    board = DASHBOARDS[name]
    defined = {v["name"] for v in board["templating"]["list"]}
    texts = [expr for _, expr in _queries(board)]
    texts += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    texts += [str(value) for key, value in _walk(board) if key in {"url", "content"}]
    for text in texts:
        used = {v for v in variable_references(text) if not v.startswith("__")}
        assert used <= defined, (text, used - defined)


@_each()
def test_variables(name: str) -> None:
    for variable in DASHBOARDS[name]["templating"]["list"]:
        assert variable["name"] in VARIABLES
        if variable["type"] == "query":
            assert variable["datasource"] == DS
            assert variable["refresh"] == 2  # on time range change
            assert variable["query"]["query"] == variable["definition"]
            assert variable["definition"].startswith("label_values(")
            if variable["includeAll"]:
                assert variable["multi"]
                assert variable["allValue"] == ".*"
        else:
            assert (variable["name"], variable["type"]) == ("trace_url", "textbox")


@_each()
def test_variables_are_matched_the_way_grafana_writes_them(name: str) -> None:
    """Grafana regex-escapes the values of multi-value and include-all variables (a `=~`
    matcher), and puts the value of a single-value variable as it is (an exact match: as a
    regex, a task name with ( [ + would break the query or match others)."""
    board = DASHBOARDS[name]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    texts = [expr for _, expr in _queries(board)] + [q for _, q in variable_queries(board)]
    for text in texts:
        for _metric, matchers in selectors(text):
            for label, op, value in matchers:
                used = variable_references(value) & set(variables)
                for var in used:
                    variable = variables[var]
                    if variable.get("multi") or variable.get("includeAll"):
                        assert op in {"=~", "!~"}, (text, label)
                    elif op in {"=~", "!~"}:  # escaped, in a raw string (single backslashes)
                        assert f"${{{var}:regex}}" in value, (text, label)
                        assert re.search(f"{label}{op}`", text), (text, label)
                    else:
                        assert op in {"=", "!="}, (text, label)
                        assert value == f"${var}", (text, label)


@_each()
def test_variable_queries_are_label_values(name: str) -> None:
    for variable, query in variable_queries(DASHBOARDS[name]):
        selector, label = label_values_query(query)
        assert label == variable
        assert selector is not None, query
        assert metric_names(selector), query


def test_trace_url_where_there_are_exemplars() -> None:
    for name in ("stem-overview.json", "stem-task.json", "stem-queues.json"):
        (trace_url,) = [v for v in DASHBOARDS[name]["templating"]["list"]
                        if v["name"] == "trace_url"]
        assert trace_url["query"] == "http://localhost:16686/trace/"
        assert "Tempo" in trace_url["description"]


def test_task_drill_down_has_task_and_queue() -> None:
    variables = {v["name"]: v for v in DASHBOARDS["stem-task.json"]["templating"]["list"]}
    assert {"task", "queue"} <= set(variables)
    assert not variables["task"]["includeAll"]


# ----------------------------------------------------------------------------- exemplars, alerts


@_each()
def test_duration_graphs_show_exemplars(name: str) -> None:
    for panel in iter_panels(DASHBOARDS[name]):
        if panel["type"] not in {"timeseries", "heatmap"}:
            continue  # a stat or table draws no exemplars
        exprs = [t["expr"] for t in panel.get("targets", [])]
        if any("stem_task_duration_seconds_bucket" in e for e in exprs):
            assert any(t["exemplar"] for t in panel["targets"]), panel["title"]


@pytest.mark.parametrize("name", ["stem-overview.json", "stem-queues.json",
                                  "stem-workers.json"])
def test_firing_alerts_are_annotations(name: str) -> None:
    annotations = [a for a in DASHBOARDS[name]["annotations"]["list"] if not a.get("builtIn")]
    assert annotations
    for annotation in annotations:
        assert annotation["datasource"] == DS
        expr = annotation["target"]["expr"]
        assert expr == annotation["expr"]
        assert expr.startswith('ALERTS{alertstate="firing", alertname=~"Stem.*"')


# ----------------------------------------------------------------------------- metric names

_KINDS: Final = {"Counter": "counter", "CounterMetricFamily": "counter", "_c": "counter",
                 "Gauge": "gauge", "GaugeMetricFamily": "gauge", "_g": "gauge",
                 "Histogram": "histogram"}


def exported_families() -> dict[str, str]:
    """Family name → kind of every ``stem_*`` metric defined in stem_observe (read from the
    source: prometheus-client constructors, custom collectors and the profile's specs)."""
    families: dict[str, str] = {}
    for path in sorted((ROOT / "stem_observe").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = (func.id if isinstance(func, ast.Name)
                      else func.attr if isinstance(func, ast.Attribute) else "")
            args = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
            if called in _KINDS and args and isinstance(args[0], str):
                kind, family = _KINDS[called], args[0]
            elif called == "Spec" and len(args) > 1:
                kind, family = str(args[0]), str(args[1])
            else:
                continue
            if family.startswith("stem_"):
                families[family] = kind
    return families


def sample_names(family: str, kind: str) -> set[str]:
    if kind == "counter":
        return {f"{family}_total"}
    if kind == "histogram":
        return {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
    return {family}


FAMILIES: Final = exported_families()
REFERENCED: Final = {n for b in DASHBOARDS.values() for _, e in panel_queries(b)
                     for n in metric_names(e)}


def test_the_source_scan_finds_the_metrics() -> None:
    assert FAMILIES["stem_tasks_started"] == "counter"
    assert FAMILIES["stem_task_duration_seconds"] == "histogram"
    assert FAMILIES["stem_observe_open_spans"] == "gauge"
    assert FAMILIES["stem_observe_fleet_dropped_events"] == "counter"
    assert FAMILIES["stem_observe_stem_poll_seconds"] == "histogram"
    assert len(FAMILIES) >= 50


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_exported_metric_is_on_a_panel(family: str) -> None:
    assert sample_names(family, FAMILIES[family]) & REFERENCED, f"no panel reads {family}"


def test_every_metric_a_panel_reads_is_exported_or_a_recording_rule() -> None:
    exported = {s for f, k in FAMILIES.items() for s in sample_names(f, k)}
    unknown = REFERENCED - RECORDING_RULES - exported - NOT_THE_BRIDGES
    assert not unknown


def test_recording_rules_the_panels_read_are_recorded() -> None:
    recorded = set()
    for path in sorted((ROOT / "alerts" / "prometheus").glob("*.yml")):
        for group in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("groups", []):
            recorded |= {r["record"] for r in group.get("rules", []) if "record" in r}
    if not recorded:
        pytest.skip("no recording rules in alerts/prometheus yet")
    assert not (REFERENCED & RECORDING_RULES) - recorded
