"""Load rules and routing from YAML, validated up front, every problem located.

A rules file is a mapping with ``rules:`` (a list), ``routing:`` (at most once across all
files), or both::

    rules:
      - name: RetrySpike
        kind: spike                 # rate | ratio | spike | absence | gauge | poison_pill
        signals: [task-retry]       # Stem's wire names
        group_by: [queue]           # task, queue, worker, reason, error_type
        window: 5m
        baseline: 1h
        factor: 3
        min_count: 20
        for: 2m
        keep_firing_for: 5m
        severity: warning           # critical | error | warning | info
        labels: {team: platform}
        annotations:
          summary: "Retries on {queue}: {value} in {window}, {factor}x the usual {baseline}"
          runbook_url: https://github.com/stem-observe/stem-observe/blob/main/docs/runbooks.md#stemretryspike
    routing:
      receivers:
        - {name: console, kind: console}
        - {name: slack, kind: slack, url_env: SLACK_WEBHOOK_URL}
      route:
        receiver: console
        group_by: [alertname, queue]
        routes:
          - {matchers: ['severity = critical'], receiver: slack}
      inhibit:
        - source_matchers: ['alertname = WorkerDown']
          target_matchers: ['alertname = TaskFailureRatio']
          equal: [queue]

Each kind's keys are those of its class in :mod:`.model` (``window`` is ``window_s`` in
seconds there). Durations are ``500ms``, ``30s``, ``5m``, ``1h``, ``1d`` or seconds.
Loading collects every problem — YAML syntax, unknown or missing keys, wrong types, bad
values, duplicate rule names across files, unknown receivers — and raises one
:class:`~stem_observe.errors.RulesError` listing them as ``file:line: path: message``, lines
taken from the YAML node marks. Reading YAML with line numbers is :mod:`._yaml`'s job,
the ``routing:`` section :mod:`._routing_reader`'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Final

from yaml.nodes import Node

from stem_observe.errors import Problem, RulesError
from stem_observe.rules._checks import Location, did_you_mean
from stem_observe.rules._routing_reader import RoutingReader
from stem_observe.rules._yaml import join
from stem_observe.rules.model import KINDS, RULE_CLASSES, GaugeCondition, Rule, RuleSet
from stem_observe.rules.signals_map import SIGNAL_GAUGES
from stem_observe.rules.templates import Annotations, Template

__all__ = ["load_rules", "parse_rules"]

_ANNOTATIONS: Final = tuple(f.name for f in fields(Annotations))
_GAUGE_FIELDS: Final = frozenset().union(*SIGNAL_GAUGES.values())

_Reader = Callable[["_Loader", Node, str], Any]
"""Reads one value node at a path; returns ``None`` after reporting a problem."""


def load_rules(path: str | os.PathLike[str], *more: str | os.PathLike[str]) -> RuleSet:
    """Rules and routing from YAML files and directories (their ``*.yml`` and ``*.yaml``
    files, in name order). Raises :class:`~stem_observe.errors.RulesError` listing every problem."""
    loader = _Loader()
    for entry in map(Path, (path, *more)):
        if entry.is_dir():
            files = sorted(p for p in entry.iterdir()
                           if p.suffix in (".yml", ".yaml") and p.is_file())
            if not files:
                loader.problems.append(Problem(str(entry), None, "", "no *.yml files here"))
        else:
            files = [entry]
        for file in files:
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                loader.problems.append(Problem(str(file), None, "", f"cannot read: {reason}"))
                continue
            loader.read(text, str(file))
    return loader.result()


def parse_rules(text: str, filename: str = "<string>") -> RuleSet:
    """Rules and routing from YAML text; ``filename`` names it in problems."""
    loader = _Loader()
    loader.read(text, filename)
    return loader.result()


class _Loader(RoutingReader):
    """Reads documents into rules and routing, collecting problems instead of stopping."""

    def __init__(self) -> None:
        super().__init__()
        self.rules: list[Rule] = []
        self.names: dict[str, Location] = {}

    def result(self) -> RuleSet:
        if self.problems:
            order = {file: i for i, file in enumerate(dict.fromkeys(p.file for p in self.problems))}
            raise RulesError(sorted(self.problems,
                                    key=lambda p: (order[p.file], p.line or 0)))
        return RuleSet(tuple(self.rules), self.routing)

    def read(self, text: str, file: str) -> None:
        root = self.compose(text, file)
        if root is None:
            return
        top = self.mapping(root, "")
        if top is None:
            return
        for key, (key_node, value) in top.items():
            if key == "rules":
                items = self.sequence(value, "rules")
                for i, item in enumerate(items or ()):
                    self.rule(item, f"rules[{i}]")
            elif key == "routing":
                self.read_routing(key_node, value, "routing")
            else:
                self.error(key_node, key, "unknown key; a rules file has rules and routing"
                           + did_you_mean(key, ("rules", "routing")))

    # ------------------------------------------------------------------ rules

    def annotations(self, node: Node, path: str) -> Annotations | None:
        entries = self.mapping(node, path)
        if entries is None:
            return None
        self.check_keys(entries, path, _ANNOTATIONS, "annotations")
        templates: dict[str, Template] = {}
        for key, (_, value) in entries.items():
            text = self.string(value, join(path, key)) if key in _ANNOTATIONS else None
            if text is not None:
                try:
                    templates[key] = Template(text)
                except ValueError as exc:
                    self.error(value, join(path, key), str(exc))
        return Annotations(**templates)

    def when(self, node: Node, path: str) -> GaugeCondition | None:
        entries = self.mapping(node, path)
        if entries is None:
            return None
        mark = len(self.problems)
        self.check_keys(entries, path, _WHEN_KEYS, "when")
        values = self.read_values(entries, path, _WHEN_KEYS)
        for key in ("signal", "field", "threshold"):
            if key not in entries:
                self.error(node, path, f"missing key {key!r} (when: {{signal, field, op, "
                                       "threshold}})")
        self.check_age(entries, path, values)
        if values.get("signal") is None or values.get("field") is None:
            return None
        try:  # checks signal, field and op even when the threshold was bad
            condition = GaugeCondition(**{"threshold": 0.0, **values})
        except RulesError as exc:
            for problem in exc.problems:
                where = join(path, problem.path.removeprefix("when."))
                self.error(self.node_for(where, node), where, problem.message)
            return None
        return condition if len(self.problems) == mark else None

    def check_age(self, entries: Mapping[str, tuple[Node, Node]], path: str,
                  values: Mapping[str, Any]) -> None:
        """A threshold written as a duration needs a gauge on an age (a ``*_s`` field)."""
        field = values.get("field")
        if "threshold" in values and field in _GAUGE_FIELDS and not field.endswith("_s") \
                and isinstance(self.scalar(node := entries["threshold"][1]), str):
            self.error(node, join(path, "threshold"),
                       f"a duration fits only a gauge on an age; {field} is a count")

    def rule(self, node: Node, path: str) -> None:
        entries = self.mapping(node, path)
        if entries is None:
            return
        mark = len(self.problems)
        cls: type[Rule] | None = None
        if "kind" not in entries:
            self.error(node, path, f"missing key 'kind' (one of {', '.join(KINDS)})")
        else:
            kind = self.string(entries["kind"][1], f"{path}.kind")
            if kind is not None and kind not in RULE_CLASSES:
                self.error(entries["kind"][1], f"{path}.kind",
                           f"must be one of {', '.join(KINDS)}, got {kind!r}"
                           + did_you_mean(kind, KINDS))
            elif kind is not None:
                cls = RULE_CLASSES[kind]  # type: ignore[index]
        readers = dict(_COMMON_KEYS)
        if cls is not None:  # with no kind, its keys cannot be checked: only the common ones
            readers.update(_KIND_KEYS[cls.kind])
            self.check_keys(entries, path, ["kind", *readers], f"a {cls.kind} rule")
        values = {_field_name(key, readers[key]): value
                  for key, value in self.read_values(entries, path, readers).items()}
        if "name" in values:
            first = self.names.get(values["name"])
            if first is not None:
                self.error(entries["name"][1], f"{path}.name",
                           f"duplicate rule name {values['name']!r} (first defined at {first})")
            else:
                self.names[values["name"]] = Location(self.file, node.start_mark.line + 1)
        if cls is None:
            return
        if cls.kind == "gauge":
            self.check_age(entries, path, values)
        for f in fields(cls):
            key = _yaml_key(f.name)
            if f.default is MISSING and f.default_factory is MISSING and key not in entries:
                self.error(node, path, f"missing key {key!r} (required for a {cls.kind} rule)")
        defaults = {f.name: f.default if f.default_factory is MISSING else f.default_factory()
                    for f in fields(cls) if f.name not in values
                    and (f.default is not MISSING or f.default_factory is not MISSING)}
        for where, message in cls.check({**defaults, **values}):
            self.error(self.node_for(f"{path}.{where}", node), f"{path}.{where}", message)
        if len(self.problems) == mark:
            self.rules.append(cls(**values, source=Location(self.file, node.start_mark.line + 1)))


def _yaml_key(name: str) -> str:
    return name[:-2] if name.endswith("_s") else name


def _field_name(key: str, reader: _Reader) -> str:
    return f"{key}_s" if reader is _Loader.duration else key


_COMMON_KEYS: Final[dict[str, _Reader]] = {
    "name": _Loader.string,
    "group_by": _Loader.strings,
    "for": _Loader.duration,
    "keep_firing_for": _Loader.duration,
    "severity": _Loader.string,
    "labels": _Loader.labels,
    "annotations": _Loader.annotations,
}
_KIND_KEYS: Final[dict[str, dict[str, _Reader]]] = {
    "rate": {"signals": _Loader.strings, "window": _Loader.duration,
             "threshold": _Loader.number},
    "ratio": {"numerator": _Loader.strings, "denominator": _Loader.strings,
              "window": _Loader.duration, "threshold": _Loader.number,
              "min_denominator": _Loader.integer},
    "spike": {"signals": _Loader.strings, "window": _Loader.duration,
              "baseline": _Loader.duration, "factor": _Loader.number,
              "min_count": _Loader.integer},
    "absence": {"signals": _Loader.strings, "absent_for": _Loader.duration,
                "reset_on": _Loader.strings, "when": _Loader.when,
                "forget_after": _Loader.duration},
    "gauge": {"signal": _Loader.string, "field": _Loader.string, "op": _Loader.string,
              "threshold": _Loader.threshold},
    "poison_pill": {"signals": _Loader.strings, "window": _Loader.duration,
                    "min_count": _Loader.integer, "max_samples": _Loader.integer},
}
_WHEN_KEYS: Final[dict[str, _Reader]] = {
    "signal": _Loader.string, "field": _Loader.string, "op": _Loader.string,
    "threshold": _Loader.threshold,
}
