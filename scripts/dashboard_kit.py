"""The pieces of Grafana's dashboard JSON model the stem-observe dashboards are made of:
Prometheus targets, panels (time series, stat, table, bar gauge, heatmap, text), template
variables, firing-alert annotations and a grid layout. ``build_dashboards.py`` puts them
together; every panel and target reads the data source chosen at import (``DS_PROMETHEUS``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

Json = dict[str, Any]

DS: Final[Json] = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
GRAFANA_VERSION: Final = "10.4.0"
SCHEMA_VERSION: Final = 39
TAG: Final = "stem-observe"
WIDTH: Final = 24

PER_S: Final = "suffix: /s"

# Label matchers. Task-level series have no namespace label; queue and worker gauges do.
# Multi-value variables (queue, namespace, worker) go in a regex: Grafana regex-escapes each
# value it puts there, and "All" is `.*`. The task variable is single-value, which Grafana
# does not regex-escape, so it is matched exactly: a task name with ( [ + or . stays itself.
Q: Final = 'queue=~"$queue"'
TQ: Final = 'task="$task", queue=~"$queue"'
NQ: Final = 'namespace=~"$namespace", queue=~"$queue"'
NW: Final = 'namespace=~"$namespace", worker=~"$worker"'
NS: Final = 'namespace=~"$namespace"'


# ----------------------------------------------------------------------------- PromQL


def sel(metric: str, matchers: str = "") -> str:
    """``metric{matchers}``, or the bare name without matchers."""
    return f"{metric}{{{matchers}}}" if matchers else metric


# Task-level series (labels task, queue, ...) of the Stem watcher are counted in full by every
# `serve` replica watching the deployment, while fleet consumers and workers' own /metrics
# each count their share. As in the recording rules (alerts/prometheus/recording.yml), a
# task series is a watcher's copy when its instance also exports the queue's gauges
# (stem_queue_depth, which only the Stem watcher exports): copies are taken once (`max`
# across instances), shares are summed. Labels of each family besides job and instance:
TASK_SERIES: Final = {
    "stem_tasks_dead_lettered_total": "task, queue, reason",
    "stem_task_failures_by_error_total": "task, queue, error_type",
    "stem_task_duration_seconds_bucket": "le, task, queue",
    "stem_task_queue_wait_seconds_bucket": "le, task, queue",
    **{f"stem_tasks_{outcome}_total": "task, queue" for outcome in (
        "published", "received", "started", "succeeded", "failed", "retried", "revoked")},
}


def once(metric: str, per_series: str, window: str) -> str:
    """``per_series`` (a function of ``metric``'s series, by series) with the Stem watcher
    replicas' copies of a task-level series taken once; unchanged for other metrics."""
    labels = TASK_SERIES.get(metric)
    if labels is None:
        return per_series
    watched = f"on (job, instance, queue) last_over_time(stem_queue_depth[{window}])"
    return (f"max by (job, {labels}) ({per_series} and {watched}) "
            f"or ({per_series} unless {watched})")


def rate(metric: str, matchers: str = "", window: str = "$__rate_interval") -> str:
    """Per-second rate by series (task-level series once per deployment: :func:`once`)."""
    return once(metric, f"rate({sel(metric, matchers)}[{window}])", window)


def increase(metric: str, matchers: str = "", window: str = "$__rate_interval") -> str:
    """Increase by series over ``window`` (task-level series once: :func:`once`)."""
    return once(metric, f"increase({sel(metric, matchers)}[{window}])", window)


def total_in_range(metric: str, matchers: str = "", by: str = "") -> str:
    """What the counter ``metric`` counted in the dashboard's time range, summed (``by``
    labels). A counter series is only exported once it has counted something, so its first
    sample already holds its first events, which ``increase`` cannot see: a series born in
    the range counts whole instead, as in the rules of alerts/prometheus. The guard keeps the
    totals of a bridge that ran long before Prometheus first scraped it out of the sum: a
    series counts whole only if Prometheus scraped its target at the start of the range or
    the process started within it (the bridge's counters start at zero with the process)."""
    series = sel(metric, matchers)
    born = (f"({series} unless {series} offset $__range) and on (job, instance) "
            "(up offset $__range or time() - process_start_time_seconds < $__range_s)")
    total = f"sum by ({by}) " if by else "sum"
    counted = once(metric, f"(({born}) or increase({series}[$__range]))", "$__range")
    return f"{total}({counted})"


def quantile(q: float, histogram: str, matchers: str = "", by: str = "") -> str:
    labels = f"le, {by}" if by else "le"
    return (f"histogram_quantile({q}, sum by ({labels}) "
            f"({rate(histogram + '_bucket', matchers)}))")


def or_zero(total: str) -> str:
    """For a sum without ``by`` over a counter that has no series until something goes
    wrong (errors, drops): 0 instead of "No data"."""
    return f"{total} or vector(0)"


# ----------------------------------------------------------------------------- targets


def target(expr: str, legend: str = "__auto", *, exemplar: bool = False,
           instant: bool = False, fmt: str = "time_series") -> Json:
    return {
        "datasource": DS,
        "editorMode": "code",
        "exemplar": exemplar,
        "expr": expr,
        "format": fmt,
        "instant": instant,
        "legendFormat": legend,
        "range": not instant,
    }


def quantiles(histogram: str, matchers: str = "", *, exemplar: bool = False) -> list[Json]:
    """p50, p95 and p99; exemplars on p99 only (the three read the same buckets, so more
    would draw every exemplar three times)."""
    return [
        target(quantile(q, histogram, matchers), name, exemplar=exemplar and q == 0.99)
        for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99"))
    ]


# ----------------------------------------------------------------------------- links

QUEUE_LINKS: Final = [
    {"title": "Queue ${__field.labels.queue}: backlog and dead letters",
     "url": "/d/stem-queues?var-queue=${__field.labels.queue}&${__url_time_range}"},
    {"title": "Queue ${__field.labels.queue}: tasks",
     "url": "/d/stem-task?var-queue=${__field.labels.queue}&${__url_time_range}"},
]
WORKER_LINKS: Final = [  # for series by namespace
    {"title": "Workers of ${__field.labels.namespace}",
     "url": "/d/stem-workers?var-namespace=${__field.labels.namespace}&${__url_time_range}"},
]
WORKERS_LINK: Final = [  # for totals: the namespaces selected here
    {"title": "Workers and heartbeats",
     "url": "/d/stem-workers?${namespace:queryparam}&${__url_time_range}"},
]


# ----------------------------------------------------------------------------- panels


def _finish(panel_type: str, title: str, description: str, targets: Sequence[Json], *,
            options: Json, defaults: Json, overrides: Sequence[Json] = ()) -> Json:
    refs = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return {
        "datasource": DS,
        "description": description,
        "fieldConfig": {"defaults": defaults, "overrides": list(overrides)},
        "options": options,
        "targets": [{**t, "refId": refs[n]} for n, t in enumerate(targets)],
        "title": title,
        "type": panel_type,
    }


def _thresholds(*steps: tuple[float, str], base: str = "green") -> Json:
    """``base`` below the first step (Grafana's step with value null), then each
    ``(value, color)`` from its value up."""
    return {"mode": "absolute",
            "steps": [{"color": base, "value": None},
                      *({"color": color, "value": value} for value, color in steps)]}


def timeseries(title: str, description: str, targets: Sequence[Json], *, unit: str = "short",
               links: Sequence[Json] = (), threshold: float | None = None,
               dashed: str | None = None, stepped: bool = False) -> Json:
    """``dashed``: a regex on series names drawn dashed (baselines, limits)."""
    custom: Json = {
        "drawStyle": "line",
        "fillOpacity": 10,
        "lineInterpolation": "stepAfter" if stepped else "linear",
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "none"},
        "thresholdsStyle": {"mode": "off" if threshold is None else "line"},
    }
    defaults: Json = {
        "color": {"mode": "palette-classic"},
        "custom": custom,
        "links": list(links),
        "min": 0,
        "thresholds": _thresholds() if threshold is None else _thresholds((threshold, "red")),
        "unit": unit,
    }
    overrides = [] if dashed is None else [{
        "matcher": {"id": "byRegexp", "options": dashed},
        "properties": [{"id": "custom.lineStyle", "value": {"dash": [10, 10], "fill": "dash"}}],
    }]
    options = {
        "legend": {"calcs": [], "displayMode": "list", "placement": "bottom",
                   "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return _finish("timeseries", title, description, targets, options=options,
                   defaults=defaults, overrides=overrides)


def stat(title: str, description: str, expr: str, *, unit: str = "short",
         steps: Sequence[tuple[float, str]] = (), base: str = "green",
         in_range: bool = False, links: Sequence[Json] = ()) -> Json:
    """``steps`` and ``base``: the value's colours (see :func:`_thresholds`). ``in_range``:
    an instant query over the dashboard's time range (``$__range``)."""
    options = {
        "colorMode": "value",
        "graphMode": "none" if in_range else "area",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "textMode": "auto",
    }
    defaults = {"color": {"mode": "thresholds"}, "links": list(links),
                "thresholds": _thresholds(*steps, base=base), "unit": unit}
    return _finish("stat", title, description, [target(expr, instant=in_range)],
                   options=options, defaults=defaults)


def table(title: str, description: str, columns: Sequence[tuple[str, str]],
          by: Sequence[str], *, units: Sequence[tuple[str, str]] = ()) -> Json:
    """One row per label set of ``by``, one column per ``(name, expr)``."""
    targets = [target(expr, instant=True, fmt="table") for _, expr in columns]
    rename = value_columns([name for name, _ in columns])
    order = {name: n for n, name in enumerate([*by, *rename.values()])}
    transformations = [
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {"excludeByName": {"Time": True},
                                       "indexByName": order, "renameByName": rename}},
    ]
    overrides = [{"matcher": {"id": "byName", "options": name},
                  "properties": [{"id": "unit", "value": unit}]} for name, unit in units]
    options = {"cellHeight": "sm", "showHeader": True,
               "footer": {"countRows": False, "fields": "", "reducer": ["sum"],
                          "show": False}}
    defaults = {"custom": {"align": "auto", "cellOptions": {"type": "auto"}},
                "thresholds": _thresholds()}
    panel = _finish("table", title, description, targets, options=options,
                    defaults=defaults, overrides=overrides)
    panel["transformations"] = transformations
    return panel


def value_columns(names: Sequence[str]) -> dict[str, str]:
    """Grafana's name of the value column of each instant table query → ``names``: with one
    query it is ``Value``, with several ``Value #<refId>``."""
    if len(names) == 1:
        return {"Value": names[0]}
    return {f"Value #{chr(ord('A') + n)}": name for n, name in enumerate(names)}


def bargauge(title: str, description: str, expr: str, legend: str) -> Json:
    """Totals over the dashboard's time range, one bar per series."""
    options = {
        "displayMode": "gradient",
        "minVizHeight": 16,
        "minVizWidth": 8,
        "orientation": "horizontal",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showUnfilled": True,
        "valueMode": "color",
    }
    defaults = {"color": {"mode": "palette-classic"}, "decimals": 0, "min": 0,
                "thresholds": _thresholds(), "unit": "short"}
    return _finish("bargauge", title, description, [target(expr, legend, instant=True)],
                   options=options, defaults=defaults)


def heatmap(title: str, description: str, histogram: str, matchers: str) -> Json:
    """Buckets of ``histogram`` over time, with its exemplars."""
    expr = f"sum by (le) ({increase(histogram + '_bucket', matchers)})"
    options = {
        "calculate": False,
        "cellGap": 1,
        "color": {"exponent": 0.5, "fill": "dark-orange", "mode": "scheme", "reverse": False,
                  "scale": "exponential", "scheme": "Oranges", "steps": 64},
        "exemplars": {"color": "rgba(255,0,255,0.7)"},
        "filterValues": {"le": 1e-9},
        "legend": {"show": True},
        "rowsFrame": {"layout": "auto"},
        "tooltip": {"mode": "single", "showColorScale": False, "yHistogram": True},
        "yAxis": {"axisPlacement": "left", "reverse": False, "unit": "s"},
    }
    defaults = {"custom": {"hideFrom": {"legend": False, "tooltip": False, "viz": False},
                           "scaleDistribution": {"type": "linear"}}}
    return _finish("heatmap", title, description,
                   [target(expr, "{{le}}", exemplar=True, fmt="heatmap")],
                   options=options, defaults=defaults)


def text(title: str, content: str) -> Json:
    return {"options": {"code": {"language": "plaintext", "showLineNumbers": False,
                                 "showMiniMap": False},
                        "content": content, "mode": "markdown"},
            "title": title, "type": "text"}


# ----------------------------------------------------------------------------- variables


def query_variable(name: str, label: str, query: str, description: str, *,
                   include_all: bool = True) -> Json:
    variable: Json = {
        "current": {},
        "datasource": DS,
        "definition": query,
        "description": description,
        "hide": 0,
        "includeAll": include_all,
        "label": label,
        "multi": include_all,
        "name": name,
        "options": [],
        "query": {"qryType": 1, "query": query,
                  "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,  # on time range change
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }
    if include_all:
        variable["allValue"] = ".*"
    return variable


NAMESPACE: Final = query_variable(
    "namespace", "Namespace", "label_values(stem_queue_depth, namespace)",
    "Stem namespace (the key prefix of a deployment). Queue and worker series carry it; "
    "task series do not.")
QUEUE: Final = query_variable(
    "queue", "Queue", "label_values(stem_tasks_started_total, queue)",
    "Queues that have started tasks.")
QUEUE_BY_DEPTH: Final = query_variable(
    "queue", "Queue", 'label_values(stem_queue_depth{namespace=~"$namespace"}, queue)',
    "Queues the watcher reports, also those where nothing has started yet.")
TASK: Final = query_variable(
    "task", "Task", 'label_values(stem_tasks_started_total{queue=~"$queue"}, task)',
    "The task to drill into.", include_all=False)
WORKER: Final = query_variable(
    "worker", "Worker", 'label_values(stem_worker_up{namespace=~"$namespace"}, worker)',
    "Workers known in the namespace.")
TRACE_URL_DEFAULT: Final = "http://localhost:16686/trace/"
TRACE_URL: Final = {
    "current": {"selected": False, "text": TRACE_URL_DEFAULT, "value": TRACE_URL_DEFAULT},
    "description": (
        "Base URL a trace ID is appended to. Jaeger: http://localhost:16686/trace/ ; "
        "Tempo's API: http://tempo:3200/api/traces/ (for Grafana's trace view of Tempo, "
        "point the data source's exemplar link at the Tempo data source instead). Used by "
        "the exemplar link of the Prometheus data source when its URL is "
        "${trace_url}${__value.raw} (see the README)."),
    "hide": 0,
    "label": "Trace URL",
    "name": "trace_url",
    "options": [{"selected": True, "text": TRACE_URL_DEFAULT, "value": TRACE_URL_DEFAULT}],
    "query": TRACE_URL_DEFAULT,
    "skipUrlSync": False,
    "type": "textbox",
}


# ----------------------------------------------------------------------------- annotations

BUILTIN_ANNOTATION: Final = {
    "builtIn": 1,
    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
    "enable": True,
    "hide": True,
    "iconColor": "rgba(0, 211, 255, 1)",
    "name": "Annotations & Alerts",
    "type": "dashboard",
}


def firing_alerts(alertname: str, *filters: Json) -> Json:
    """Firing Prometheus alerts; each filter is a variable of the dashboard, matched against
    the label of the same name. ``label=~"$var|"`` also keeps alerts that lack the label
    (worker alerts on a queue dashboard filtered to one queue). A single-value variable is
    not regex-escaped by Grafana: it goes in a raw string in Grafana's ``regex`` format."""

    def matcher(variable: Json) -> str:
        name = variable["name"]
        if variable.get("multi") or variable.get("includeAll"):
            return f'{name}=~"${name}|"'
        return f"{name}=~`${{{name}:regex}}|`"

    matchers = ", ".join(['alertstate="firing"', f'alertname=~"{alertname}"',
                          *(matcher(variable) for variable in filters)])
    expr = f"ALERTS{{{matchers}}}"
    return {
        "datasource": DS,
        "enable": True,
        "expr": expr,
        "hide": False,
        "iconColor": "red",
        "name": "Firing alerts",
        "step": "1m",
        "tagKeys": "severity",
        "target": {"expr": expr, "interval": "1m", "refId": "Anno"},
        "textFormat": "{{alertname}} ({{severity}}) queue={{queue}} worker={{worker}}",
        "titleFormat": "{{alertname}}",
        "useValueForTime": False,
    }


# ----------------------------------------------------------------------------- layout


@dataclass
class Section:
    """A row of the dashboard (none for the first) and its panels as (panel, width, height)."""

    title: str | None
    collapsed: bool = False
    panels: list[tuple[Json, int, int]] = field(default_factory=list)

    def add(self, panel: Json, width: int = 12, height: int = 8) -> Section:
        self.panels.append((panel, width, height))
        return self


def _layout(sections: Sequence[Section]) -> list[Json]:
    """Grid positions and ids, panels flowing left to right; a collapsed row keeps its
    panels inside it, laid out where they go when it is expanded."""
    top: list[Json] = []
    next_id = 1
    y = 0
    for section in sections:
        container = top
        row_y = y
        if section.title is not None:
            row: Json = {"collapsed": section.collapsed,
                         "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y}, "id": next_id,
                         "panels": [], "title": section.title, "type": "row"}
            next_id += 1
            top.append(row)
            y += 1
            if section.collapsed:
                container = row["panels"]
        x, line_height = 0, 0
        for panel, width, height in section.panels:
            if x + width > WIDTH:
                x, y, line_height = 0, y + line_height, 0
            container.append({**panel, "gridPos": {"h": height, "w": width, "x": x, "y": y},
                              "id": next_id})
            next_id += 1
            x += width
            line_height = max(line_height, height)
        y += line_height
        if section.collapsed:
            y = row_y + 1
    return top


def dashboard(uid: str, title: str, description: str, *, variables: Sequence[Json],
              annotations: Sequence[Json], sections: Sequence[Section]) -> Json:
    panels = _layout(sections)
    nested = [p for row in panels for p in row.get("panels", [])]
    used = sorted({p["type"] for p in [*panels, *nested]} - {"row"})
    names = {"bargauge": "Bar gauge", "heatmap": "Heatmap", "stat": "Stat", "table": "Table",
             "text": "Text", "timeseries": "Time series"}
    return {
        "__inputs": [{"description": "The Prometheus that scrapes stem-observe",
                      "label": "Prometheus", "name": "DS_PROMETHEUS",
                      "pluginId": "prometheus", "pluginName": "Prometheus",
                      "type": "datasource"}],
        "__elements": {},
        "__requires": [
            {"id": "grafana", "name": "Grafana", "type": "grafana",
             "version": GRAFANA_VERSION},
            {"id": "prometheus", "name": "Prometheus", "type": "datasource",
             "version": "1.0.0"},
            *({"id": t, "name": names[t], "type": "panel", "version": ""} for t in used),
        ],
        "annotations": {"list": [BUILTIN_ANNOTATION, *annotations]},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [{"asDropdown": False, "icon": "external link", "includeVars": False,
                   "keepTime": True, "tags": [TAG], "targetBlank": False,
                   "title": "stem-observe", "tooltip": "", "type": "dashboards",
                   "url": ""}],
        "liveNow": False,
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": [TAG],
        "templating": {"list": list(variables)},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


# ----------------------------------------------------------------------------- dashboards
