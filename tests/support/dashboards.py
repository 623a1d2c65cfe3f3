"""Reading the Grafana dashboards in ``dashboards/``: the queries of every panel, variable
and annotation, Grafana's variables replaced the way Grafana's Prometheus data source
replaces them, and the metric names and label matchers a PromQL expression reads.

Used by the dashboard unit tests and by the end-to-end test that runs every panel query
against a real Prometheus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

__all__ = [
    "ALL",
    "BUILTIN_VARIABLES",
    "DASHBOARD_DIR",
    "annotation_queries",
    "in_range_total",
    "iter_panels",
    "label_values_query",
    "load_dashboards",
    "metric_names",
    "panel_queries",
    "selectors",
    "substitute",
    "variable_defaults",
    "variable_queries",
    "variable_references",
    "without_zero_fallback",
]

Dashboard = Mapping[str, Any]
#: A variable's selection: one value, several (a multi-value variable) or :data:`ALL`.
Selection = str | Sequence[str]

DASHBOARD_DIR: Final = Path(__file__).resolve().parents[2] / "dashboards"

#: Grafana's value of a variable set to "All".
ALL: Final = "$__all"

#: Values for Grafana's global variables when a query runs outside Grafana (a 1h range;
#: Grafana writes ``$__range`` in seconds).
BUILTIN_VARIABLES: Final[Mapping[str, str]] = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "3600s",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

# $var, ${var}, ${var:format}, [[var]], [[var:format]]
_VARIABLE: Final = re.compile(
    r"\$\{(?P<braced>\w+)(?::(?P<format>[^}]*))?\}|\$(?P<plain>\w+)"
    r"|\[\[(?P<old>\w+)(?::(?P<old_format>[^\]]*))?\]\]"
)
_ZERO_FALLBACK: Final = " or vector(0)"
_TOTAL: Final = re.compile(r"(?:sort_desc\()?(?P<total>sum(?: by \([^)]*\))?) ?\(")
_BORN_IN_RANGE: Final = re.compile(r"\((?P<series>[^()]+?) unless (?P=series) offset \$__range\)")
_LABEL_VALUES: Final = re.compile(r"\s*label_values\((?:(?P<match>.*),)?\s*(?P<label>\w+)\s*\)\s*",
                                  re.S)


def load_dashboards(directory: Path = DASHBOARD_DIR) -> dict[str, dict[str, Any]]:
    """Every ``*.json`` in ``directory`` by file name."""
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(directory.glob("*.json"))
    }


def iter_panels(dashboard: Dashboard) -> Iterator[Mapping[str, Any]]:
    """Every panel, rows and the panels of collapsed rows included, in order."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_queries(dashboard: Dashboard) -> list[tuple[str, str]]:
    """``(panel title, expr)`` for every target of every panel that has an expression."""
    return [
        (str(panel.get("title", "")), str(target["expr"]))
        for panel in iter_panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def annotation_queries(dashboard: Dashboard) -> list[tuple[str, str]]:
    """``(annotation name, expr)`` for every Prometheus annotation query."""
    queries = []
    for annotation in dashboard.get("annotations", {}).get("list", []):
        target = annotation.get("target") or {}
        expr = target.get("expr") or annotation.get("expr")
        if expr:
            queries.append((str(annotation.get("name", "")), str(expr)))
    return queries


def variable_queries(dashboard: Dashboard) -> list[tuple[str, str]]:
    """``(variable name, query)`` for every query variable, in the dashboard's order (the
    order Grafana resolves them in)."""
    found = []
    for variable in _variables(dashboard):
        if variable.get("type") == "query":
            query = variable.get("query")
            text = query.get("query") if isinstance(query, Mapping) else query
            found.append((str(variable["name"]), str(text or variable.get("definition", ""))))
    return found


def label_values_query(query: str) -> tuple[str | None, str]:
    """``label_values(selector, label)`` (or ``label_values(label)``) as
    ``(selector or None, label)``; ``ValueError`` for any other variable query."""
    match = _LABEL_VALUES.fullmatch(query)
    if match is None:
        raise ValueError(f"not a label_values() query: {query!r}")
    selector = match["match"]
    return (selector.strip() if selector else None), match["label"]


def without_zero_fallback(expr: str) -> str | None:
    """``expr`` without its trailing ``or vector(0)`` (the 0 a panel shows instead of "No
    data"); ``None`` when it has none."""
    return expr.removesuffix(_ZERO_FALLBACK) if expr.endswith(_ZERO_FALLBACK) else None


def in_range_total(expr: str) -> tuple[str, str] | None:
    """For a total over the dashboard's range written as ``dashboard_kit.total_in_range``
    does, ``(aggregation, series)``: ``("sum by (queue)", 'x_total{queue=~"$queue"}')``.
    ``None`` for any other expression."""
    total, born = _TOTAL.match(expr), _BORN_IN_RANGE.search(expr)
    return (total["total"], born["series"]) if total and born else None


def variable_references(expr: str) -> set[str]:
    """Names of the Grafana variables ``expr`` uses, Grafana's own (``__…``) included."""
    return {
        match["braced"] or match["plain"] or match["old"] for match in _VARIABLE.finditer(expr)
    }


def variable_defaults(dashboard: Dashboard) -> dict[str, str]:
    """The selection that matches everything: :data:`ALL` for variables that offer it, the
    default text of textbox and constant variables. A single-value query variable has no
    such selection (Grafana selects one of its values): it is left out."""
    defaults = {}
    for variable in _variables(dashboard):
        name = variable["name"]
        if variable.get("type") == "query":
            if variable.get("includeAll"):
                defaults[name] = ALL
        else:
            query = variable.get("query", "")
            defaults[name] = query if isinstance(query, str) else ""
    return defaults


def substitute(expr: str, values: Mapping[str, Selection],
               dashboard: Dashboard | None = None) -> str:
    """``expr`` with every Grafana variable replaced as Grafana does before it sends the
    query to Prometheus: the selection from ``values``, then :data:`BUILTIN_VARIABLES`.

    For a variable ``dashboard`` defines, a bare ``$var`` is interpolated like Grafana's
    Prometheus data source does: the values of a multi-value or include-all variable are
    regex-escaped (backslashes doubled for the PromQL string) and joined as ``(a|b)``; the
    value of a single-value variable only has its backslashes doubled (it is not escaped for
    a regex: match it exactly). :data:`ALL` becomes the variable's ``allValue`` unescaped.
    Formats: ``${var:regex}`` (Grafana's regex escape, single backslashes), ``raw``, ``pipe``,
    ``csv``, ``text`` and ``queryparam``. A variable ``dashboard`` does not define goes in
    as given. Raises ``KeyError`` naming a variable that has no value, ``ValueError`` for a
    format this does not know."""
    definitions = {str(v["name"]): v for v in _variables(dashboard)} if dashboard else {}

    def value(match: re.Match[str]) -> str:
        name = match["braced"] or match["plain"] or match["old"]
        fmt = match["format"] or match["old_format"]
        if name in values:
            return _interpolate(name, values[name], definitions.get(name), fmt)
        if name in BUILTIN_VARIABLES:
            return BUILTIN_VARIABLES[name]
        raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")

    return _VARIABLE.sub(value, expr)


def _variables(dashboard: Dashboard | None) -> list[Mapping[str, Any]]:
    if not dashboard:
        return []
    variables: list[Mapping[str, Any]] = dashboard.get("templating", {}).get("list", [])
    return variables


def _regex_escape(value: str) -> str:
    """Grafana's ``regex`` format (``kbn.regexEscape``)."""
    return re.sub(r"[\\^$*+?.()|\[\]{}/]", lambda m: "\\" + m[0], value)


def _prometheus_regex_escape(value: str) -> str:
    """Grafana's ``prometheusSpecialRegexEscape`` (classic): a regex escape written for a
    double-quoted PromQL string."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]+?.()|]", lambda m: "\\\\" + m[0], value)


def _prometheus_escape(value: str) -> str:
    """Grafana's ``prometheusRegularEscape`` (classic)."""
    return value.replace("\\", "\\\\").replace("'", "\\\\'")


def _interpolate(name: str, selection: Selection, variable: Mapping[str, Any] | None,
                 fmt: str | None) -> str:
    chosen = [selection] if isinstance(selection, str) else list(selection)
    if chosen == [ALL] and fmt not in ("text", "queryparam"):
        if variable is None:
            raise KeyError(f"${name} is All, but no dashboard defines it")
        all_value = variable.get("allValue")
        if not all_value:
            raise KeyError(f"${name} is All and has no allValue: its options are unknown here")
        return str(all_value)
    if fmt is None:
        if variable is None:
            return "|".join(chosen)
        if not variable.get("multi") and not variable.get("includeAll"):
            return _prometheus_escape(chosen[0]) if len(chosen) == 1 else ",".join(chosen)
        escaped = [_prometheus_regex_escape(v) for v in chosen]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt == "regex":
        escaped = [_regex_escape(v) for v in chosen]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt in ("raw", "csv"):
        return ",".join(chosen)
    if fmt == "pipe":
        return "|".join(chosen)
    if fmt == "text":
        return "All" if chosen == [ALL] else " + ".join(chosen)
    if fmt == "queryparam":
        return "&".join(f"var-{name}={quote(v, safe='')}" for v in chosen)
    raise ValueError(f"unknown variable format {fmt!r} in ${{{name}:{fmt}}}")


# ----------------------------------------------------------------------------- PromQL names

_AGGREGATORS: Final = frozenset({
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
})
_LABEL_LIST_KEYWORDS: Final = frozenset({"by", "without", "on", "ignoring", "group_left",
                                         "group_right"})
_KEYWORDS: Final = _AGGREGATORS | _LABEL_LIST_KEYWORDS | frozenset({
    "and", "or", "unless", "offset", "bool", "atan2", "inf", "nan",
})
_WORD: Final = re.compile(r"\w*")
_IDENTIFIER: Final = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER: Final = re.compile(r"[0-9.][0-9A-Za-z_.]*")  # 0.95, 1e3, 0x1f, durations: 5m, 1h30m
_MATCHER: Final = re.compile(
    r"""(?P<label>[A-Za-z_]\w*)\s*(?P<op>=~|!~|!=|=)\s*"""
    r"""(?:"(?P<double>(?:[^"\\]|\\.)*)"|'(?P<single>(?:[^'\\]|\\.)*)'|`(?P<raw>[^`]*)`)""")
_CLOSING: Final = {"(": ")", "[": "]", "{": "}"}


def _skip_string(expr: str, i: int) -> int:
    """Index just past the string literal starting at ``expr[i]``."""
    quote = expr[i]
    i += 1
    while i < len(expr) and expr[i] != quote:
        i += 2 if expr[i] == "\\" and quote != "`" else 1
    return i + 1


def _skip_group(expr: str, i: int) -> int:
    """Index just past the bracketed group opening at ``expr[i]`` (strings respected)."""
    closing = _CLOSING[expr[i]]
    opening = expr[i]
    depth = 0
    while i < len(expr):
        char = expr[i]
        if char in "\"'`":
            i = _skip_string(expr, i)
            continue
        if char == opening:
            depth += 1
        elif char == closing:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


def _next_char(expr: str, i: int) -> str:
    while i < len(expr) and expr[i].isspace():
        i += 1
    return expr[i] if i < len(expr) else ""


Matcher = tuple[str, str, str]


def selectors(expr: str) -> list[tuple[str, list[Matcher]]]:
    """Every vector selector of ``expr`` as ``(metric name, [(label, op, value), ...])``,
    in order: ``x{a="b"}`` → ``("x", [("a", "=", "b")])``, a bare ``x`` → ``("x", [])``;
    ``{__name__="x", a=~"b"}`` names ``x`` and keeps its other matchers. Values are the
    string literals as written (escapes not resolved)."""
    return list(_scan(expr))


def metric_names(expr: str) -> set[str]:
    """Metric names ``expr`` selects: identifiers that are not functions, aggregators,
    keywords, label names, durations or Grafana variables. Recording-rule names (with
    colons) count as metric names; ``{__name__="x"}`` selects ``x``."""
    return {name for name, _ in _scan(expr) if name}


def _matchers(text: str) -> list[Matcher]:
    return [(m["label"], m["op"], m["double"] if m["double"] is not None else
             m["single"] if m["single"] is not None else m["raw"])
            for m in _MATCHER.finditer(text)]


def _selector(name: str, text: str) -> tuple[str, list[Matcher]]:
    matchers = _matchers(text)
    named = [m for m in matchers if m[0] == "__name__" and m[1] == "="]
    if named and not name:
        name = named[0][2]
    return name, [m for m in matchers if m[0] != "__name__"]


def _scan(expr: str) -> Iterator[tuple[str, list[Matcher]]]:
    i = 0
    while i < len(expr):
        char = expr[i]
        if char in "\"'`":
            i = _skip_string(expr, i)
        elif char == "#":  # a comment runs to the end of the line
            end = expr.find("\n", i)
            i = len(expr) if end < 0 else end
        elif char == "{":  # a selector without a name before it
            end = _skip_group(expr, i)
            yield _selector("", expr[i + 1:end - 1])
            i = end
        elif char == "[":  # range or subquery: durations only
            i = _skip_group(expr, i)
        elif char == "$":  # a Grafana variable left in the expression
            if expr.startswith("{", i + 1):
                i = _skip_group(expr, i + 1)
            else:
                word_end = _WORD.match(expr, i + 1)
                i = word_end.end() if word_end else i + 1
        elif char.isdigit() or (char == "." and expr[i + 1:i + 2].isdigit()):
            number = _NUMBER.match(expr, i)
            i = number.end() if number else i + 1
        elif identifier := _IDENTIFIER.match(expr, i):
            word = identifier[0]
            i = identifier.end()
            lowered = word.lower()
            following = _next_char(expr, i)
            if lowered in _LABEL_LIST_KEYWORDS:
                if following == "(":
                    i = _skip_group(expr, expr.index("(", i))
            elif lowered in _KEYWORDS or following == "(":
                continue  # a keyword, an aggregator or a function call
            elif following == "{":
                brace = expr.index("{", i)
                end = _skip_group(expr, brace)
                yield _selector(word, expr[brace + 1:end - 1])
                i = end
            else:
                yield word, []
        else:
            i += 1
