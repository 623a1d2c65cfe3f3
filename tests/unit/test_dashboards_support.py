"""tests/support/dashboards.py: panel queries, Grafana variable substitution and the metric
names of a PromQL expression."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.dashboards import (
    ALL,
    annotation_queries,
    label_values_query,
    metric_names,
    panel_queries,
    selectors,
    substitute,
    variable_defaults,
    variable_queries,
    variable_references,
)


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (queue) (rate(x_total{a="b"}[5m])) or vector(0)', {"x_total"}),
    ("histogram_quantile(0.95, sum by (le) (rate(y_bucket[$__rate_interval])))",
     {"y_bucket"}),
    ('queue:stem_tasks_failure:ratio5m{queue=~"$queue"}', {"queue:stem_tasks_failure:ratio5m"}),
    ("sum(rate(a_total[5m])) by (queue, task) / ignoring(task) group_left(reason) b",
     {"a_total", "b"}),
    ("SUM WITHOUT (instance) (c) > bool 0.5e3", {"c"}),
    ("time() - max by (worker) (hb_seconds) offset 1h30m", {"hb_seconds"}),
    ('label_replace(up2, "dst", "$1 by rate(x)", "src", "(.*)")', {"up2"}),
    ('{__name__="named_metric", job="j"} unless on (job) other', {"named_metric", "other"}),
    ("d[5m:1m] and e @ start() or f # g is a comment", {"d", "e", "f"}),
    ('rate(${metric}[1m]) + h{l="}"} * .5 + 0x1f + inf', {"h"}),
    ("topk(3, count_values(\"v\", k)) + atan2 m", {"k", "m"}),
])
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_selectors_with_their_label_matchers() -> None:
    expr = ('sum by (queue) (rate(x_total{queue=~"$queue|", task="a\\"b"}[5m])) '
            "or {__name__=\"y\", le!='1'} unless on (job) up offset $__range "
            'and z{r=~`a\\.b`} # w{c="d"}')
    assert selectors(expr) == [
        ("x_total", [("queue", "=~", "$queue|"), ("task", "=", 'a\\"b')]),
        ("y", [("le", "!=", "1")]),
        ("up", []),
        ("z", [("r", "=~", "a\\.b")]),
    ]


def test_substitute_replaces_every_variable_syntax() -> None:
    expr = ('sum(rate(x{queue=~"$queue", task=~"${task}", ns=~"${namespace:raw}", '
            'w=~"[[worker]]"}[$__rate_interval])) + increase(y[$__range]) + z[$__interval]')
    done = substitute(expr, {"queue": "a|b", "task": ".*", "namespace": "ns1",
                             "worker": "w1"})
    assert done == ('sum(rate(x{queue=~"a|b", task=~".*", ns=~"ns1", w=~"w1"}[1m])) '
                    "+ increase(y[3600s]) + z[1m]")


def test_substitute_lets_the_caller_set_builtins_and_names_a_missing_variable() -> None:
    assert substitute("rate(x[$__rate_interval])", {"__rate_interval": "30s"}) == \
        "rate(x[30s])"
    assert substitute('x{q="$queue_name"}', {"queue_name": "a", "queue": "b"}) == 'x{q="a"}'
    with pytest.raises(KeyError, match=r"\$queue"):
        substitute('x{q=~"$queue"}', {})


def test_substitute_interpolates_like_grafanas_prometheus_data_source() -> None:
    expr = 'x{queue=~"$queue", task="$task"}'
    # "All" is the variable's allValue, as it is.
    assert substitute(expr, {"queue": ALL, "task": "t"}, BOARD) == 'x{queue=~".*", task="t"}'
    # Values of a multi-value variable are regex-escaped for a PromQL string and joined.
    assert substitute(expr, {"queue": ["a.b", "c(d)+"], "task": "t"}, BOARD) == (
        r'x{queue=~"(a\\.b|c\\(d\\)\\+)", task="t"}')
    assert substitute(expr, {"queue": "a.b", "task": "t"}, BOARD) == (
        r'x{queue=~"a\\.b", task="t"}')
    # A single-value variable is not regex-escaped (match it exactly); backslashes doubled.
    assert substitute(expr, {"queue": ALL, "task": "render[pdf]+(v2)"}, BOARD) == (
        'x{queue=~".*", task="render[pdf]+(v2)"}')
    assert substitute(expr, {"queue": ALL, "task": "a\\b"}, BOARD) == (
        r'x{queue=~".*", task="a\\b"}')
    with pytest.raises(KeyError, match="allValue"):
        substitute("$task", {"task": ALL}, {"templating": {"list": [
            {"name": "task", "type": "query", "includeAll": True}]}})


def test_substitute_applies_variable_formats() -> None:
    values = {"queue": ["a.b", "c/d"]}
    assert substitute("${queue:regex}", values, BOARD) == r"(a\.b|c\/d)"
    assert substitute("${queue:pipe}", values, BOARD) == "a.b|c/d"
    assert substitute("${queue:csv}|${queue:raw}", values, BOARD) == "a.b,c/d|a.b,c/d"
    assert substitute("${queue:queryparam}", values, BOARD) == "var-queue=a.b&var-queue=c%2Fd"
    assert substitute("${queue:text}", {"queue": ALL}, BOARD) == "All"
    assert substitute("${queue:regex}", {"queue": ALL}, BOARD) == ".*"
    with pytest.raises(ValueError, match="glob"):
        substitute("${queue:glob}", values, BOARD)


def test_variable_references() -> None:
    assert variable_references('x{a=~"$a", b="${b:csv}"}[$__rate_interval] [[c]]') == {
        "a", "b", "c", "__rate_interval"}
    assert variable_references("${__field.labels.queue}") == set()


BOARD: dict[str, Any] = {
    "annotations": {"list": [
        {"builtIn": 1, "name": "Annotations & Alerts"},
        {"name": "Firing", "target": {"expr": "ALERTS"}},
        {"name": "Legacy", "expr": "ALERTS2"},
    ]},
    "panels": [
        {"type": "text", "title": "Notes"},
        {"type": "timeseries", "title": "Top", "targets": [{"expr": "a"}, {"expr": "b"}]},
        {"type": "row", "title": "Collapsed", "collapsed": True, "panels": [
            {"type": "stat", "title": "Inside", "targets": [{"expr": "c"}, {"expr": ""}]},
        ]},
    ],
    "templating": {"list": [
        {"name": "queue", "type": "query", "includeAll": True, "multi": True,
         "allValue": ".*", "query": {"query": "label_values(x_total, queue)"}},
        {"name": "task", "type": "query", "includeAll": False, "multi": False,
         "definition": 'label_values(x_total{queue=~"$queue"}, task)',
         "query": {"query": 'label_values(x_total{queue=~"$queue"}, task)'}},
        {"name": "trace_url", "type": "textbox", "query": "http://jaeger/trace/"},
    ]},
}


def test_panel_queries_include_panels_inside_rows() -> None:
    assert panel_queries(BOARD) == [("Top", "a"), ("Top", "b"), ("Inside", "c")]


def test_annotation_queries_read_target_or_legacy_expr() -> None:
    assert annotation_queries(BOARD) == [("Firing", "ALERTS"), ("Legacy", "ALERTS2")]


def test_variable_defaults_match_everything() -> None:
    # A single-value variable (task) has no "everything": Grafana picks one of its values.
    assert variable_defaults(BOARD) == {"queue": ALL, "trace_url": "http://jaeger/trace/"}


def test_variable_queries_in_dashboard_order() -> None:
    assert variable_queries(BOARD) == [
        ("queue", "label_values(x_total, queue)"),
        ("task", 'label_values(x_total{queue=~"$queue"}, task)'),
    ]


@pytest.mark.parametrize(("query", "parsed"), [
    ("label_values(x_total, queue)", ("x_total", "queue")),
    ('label_values(x{a=~"$b", c="d,e"}, task)', ('x{a=~"$b", c="d,e"}', "task")),
    (" label_values( worker ) ", (None, "worker")),
])
def test_label_values_query(query: str, parsed: tuple[str | None, str]) -> None:
    assert label_values_query(query) == parsed


def test_other_variable_queries_are_refused() -> None:
    with pytest.raises(ValueError, match="label_values"):
        label_values_query("query_result(up)")
