"""tests/support/dashboards.py: panel queries, Grafana variable substitution and the metric
names of a PromQL expression."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.dashboards import (
    annotation_queries,
    metric_names,
    panel_queries,
    substitute,
    variable_defaults,
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


def test_substitute_replaces_every_variable_syntax() -> None:
    expr = ('sum(rate(x{queue=~"$queue", task=~"${task}", ns=~"${namespace:regex}", '
            'w=~"[[worker]]"}[$__rate_interval])) + increase(y[$__range]) + z[$__interval]')
    done = substitute(expr, {"queue": "a|b", "task": ".*", "namespace": "ns1",
                             "worker": "w1"})
    assert done == ('sum(rate(x{queue=~"a|b", task=~".*", ns=~"ns1", w=~"w1"}[1m])) '
                    "+ increase(y[1h]) + z[1m]")


def test_substitute_lets_the_caller_set_builtins_and_names_a_missing_variable() -> None:
    assert substitute("rate(x[$__rate_interval])", {"__rate_interval": "30s"}) == \
        "rate(x[30s])"
    assert substitute('x{q="$queue_name"}', {"queue_name": "a", "queue": "b"}) == 'x{q="a"}'
    with pytest.raises(KeyError, match=r"\$queue"):
        substitute('x{q=~"$queue"}', {})


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
        {"name": "queue", "type": "query", "includeAll": True, "allValue": ".*"},
        {"name": "task", "type": "query", "includeAll": False},
        {"name": "trace_url", "type": "textbox", "query": "http://jaeger/trace/"},
    ]},
}


def test_panel_queries_include_panels_inside_rows() -> None:
    assert panel_queries(BOARD) == [("Top", "a"), ("Top", "b"), ("Inside", "c")]


def test_annotation_queries_read_target_or_legacy_expr() -> None:
    assert annotation_queries(BOARD) == [("Firing", "ALERTS"), ("Legacy", "ALERTS2")]


def test_variable_defaults_match_everything() -> None:
    assert variable_defaults(BOARD) == {"queue": ".*", "task": ".*",
                                        "trace_url": "http://jaeger/trace/"}
