"""Reading the Grafana dashboards in ``dashboards/``: the queries of every panel, Grafana's
variables replaced by concrete values, and the metric names a PromQL expression reads.

Used by the dashboard unit tests and by the end-to-end test that runs every panel query
against a real Prometheus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

__all__ = [
    "BUILTIN_VARIABLES",
    "DASHBOARD_DIR",
    "annotation_queries",
    "iter_panels",
    "load_dashboards",
    "metric_names",
    "panel_queries",
    "substitute",
    "variable_defaults",
    "variable_references",
]

Dashboard = Mapping[str, Any]

DASHBOARD_DIR: Final = Path(__file__).resolve().parents[2] / "dashboards"

#: Values for Grafana's global variables when a query runs outside Grafana.
BUILTIN_VARIABLES: Final[Mapping[str, str]] = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

# $var, ${var}, ${var:format}, [[var]], [[var:format]]
_VARIABLE: Final = re.compile(
    r"\$\{(?P<braced>\w+)(?::[^}]*)?\}|\$(?P<plain>\w+)|\[\[(?P<old>\w+)(?::[^\]]*)?\]\]"
)


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


def variable_references(expr: str) -> set[str]:
    """Names of the Grafana variables ``expr`` uses, Grafana's own (``__…``) included."""
    return {
        match["braced"] or match["plain"] or match["old"] for match in _VARIABLE.finditer(expr)
    }


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """``expr`` with every Grafana variable replaced: first from ``variables``, then from
    :data:`BUILTIN_VARIABLES`. Formats (``${queue:regex}``) are ignored: the value goes in
    as given, so pass values already shaped for where they stand (``.*`` for "all").
    Raises ``KeyError`` naming a variable that has no value."""

    def value(match: re.Match[str]) -> str:
        name = match["braced"] or match["plain"] or match["old"]
        if name in variables:
            return variables[name]
        if name in BUILTIN_VARIABLES:
            return BUILTIN_VARIABLES[name]
        raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")

    return _VARIABLE.sub(value, expr)


def variable_defaults(dashboard: Dashboard) -> dict[str, str]:
    """A value for each template variable that matches everything it can: ``allValue`` (or
    ``.*``) for query variables, the default text of textbox and constant variables."""
    defaults = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        name = variable["name"]
        if variable.get("type") == "query":
            defaults[name] = variable.get("allValue") or ".*"
        else:
            query = variable.get("query", "")
            defaults[name] = query if isinstance(query, str) else ""
    return defaults


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
_NAME_MATCHER: Final = re.compile(r"""__name__\s*=\s*(?:"([^"]*)"|'([^']*)')""")
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


def metric_names(expr: str) -> set[str]:
    """Metric names ``expr`` selects: identifiers that are not functions, aggregators,
    keywords, label names, durations or Grafana variables. Recording-rule names (with
    colons) count as metric names; ``{__name__="x"}`` selects ``x``."""
    names: set[str] = set()
    i = 0
    while i < len(expr):
        char = expr[i]
        if char in "\"'`":
            i = _skip_string(expr, i)
        elif char == "#":  # a comment runs to the end of the line
            end = expr.find("\n", i)
            i = len(expr) if end < 0 else end
        elif char == "{":
            end = _skip_group(expr, i)
            for match in _NAME_MATCHER.finditer(expr, i, end):
                names.add(match[1] if match[1] is not None else match[2])
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
            if lowered in _LABEL_LIST_KEYWORDS:
                if _next_char(expr, i) == "(":
                    i = _skip_group(expr, expr.index("(", i))
            elif lowered in _KEYWORDS or _next_char(expr, i) == "(":
                continue  # a keyword, an aggregator or a function call
            else:
                names.add(word)
        else:
            i += 1
    return names
