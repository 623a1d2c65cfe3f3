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
          runbook_url: https://runbooks.example.com/stem-observe/retry-spike
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
:class:`~.model.RulesError` listing them as ``file:line: path: message``, lines taken from
the YAML node marks.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Final

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from stem_observe.config import to_seconds
from stem_observe.errors import ConfigError
from stem_observe.rules.model import (
    KINDS,
    RECEIVER_KINDS,
    RECEIVER_OPTIONS,
    RECEIVER_SECRETS,
    RULE_CLASSES,
    SIGNAL_GAUGES,
    Annotations,
    GaugeCondition,
    InhibitRule,
    Location,
    Matcher,
    Problem,
    Receiver,
    Route,
    Routing,
    Rule,
    RulesError,
    RuleSet,
    Template,
)

__all__ = ["load_rules", "parse_rules"]

_MAX_ROUTE_DEPTH: Final = 10
_LABEL_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_RECEIVER_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\Z")
_ANNOTATIONS: Final = tuple(f.name for f in fields(Annotations))
_GAUGE_FIELDS: Final = frozenset().union(*SIGNAL_GAUGES.values())

_Reader = Callable[["_Loader", Node, str], Any]
"""Reads one value node at a path; returns ``None`` after reporting a problem."""


def load_rules(path: str | os.PathLike[str], *more: str | os.PathLike[str]) -> RuleSet:
    """Rules and routing from YAML files and directories (their ``*.yml`` and ``*.yaml``
    files, in name order). Raises :class:`~.model.RulesError` listing every problem."""
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


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.7)
    return f" (did you mean {close[0]}?)" if close else ""


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Loader:
    """Reads documents into rules and routing, collecting problems instead of stopping."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.rules: list[Rule] = []
        self.names: dict[str, Location] = {}
        self.routing: Routing | None = None
        self.routing_at: Location | None = None
        self.file = "<string>"
        self._constructor = SafeConstructor()
        self._nodes: dict[str, Node] = {}  # path -> node, for problems found by the model

    # ------------------------------------------------------------------ plumbing

    def error(self, node: Node | None, path: str, message: str) -> None:
        line = None if node is None else node.start_mark.line + 1
        self.problems.append(Problem(self.file, line, path, message))

    def result(self) -> RuleSet:
        if self.problems:
            order = {file: i for i, file in enumerate(dict.fromkeys(p.file for p in self.problems))}
            raise RulesError(sorted(self.problems,
                                    key=lambda p: (order[p.file], p.line or 0)))
        return RuleSet(tuple(self.rules), self.routing)

    def read(self, text: str, file: str) -> None:
        self.file = file
        self._nodes = {}
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = None if mark is None else mark.line + 1
            self.problems.append(Problem(file, line, "", f"invalid YAML: {exc.problem}"))
            return
        except yaml.YAMLError as exc:
            self.problems.append(Problem(file, None, "", f"invalid YAML: {exc}"))
            return
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
                           + _did_you_mean(key, ("rules", "routing")))

    def mapping(self, node: Node, path: str) -> dict[str, tuple[Node, Node]] | None:
        """The entries of a mapping node; duplicate keys and ``<<`` merges handled."""
        if not isinstance(node, MappingNode):
            self.error(node, path, f"expected a mapping, got {self.show(node)}")
            return None
        seen: dict[object, Node] = {}
        for key_node, _ in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            if key in seen and key != "<<":
                first = seen[key].start_mark.line + 1
                self.error(key_node, _join(path, str(key)),
                           f"duplicate key (first at line {first})")
            seen.setdefault(key, key_node)
        try:
            self._constructor.flatten_mapping(node)
        except ConstructorError as exc:
            self.error(node, path, f"invalid merge: {exc.problem}")
            return None
        entries: dict[str, tuple[Node, Node]] = {}
        for key_node, value in node.value:
            key = self.scalar(key_node)
            if not isinstance(key, str):
                self.error(key_node, path, f"keys must be strings, got {self.show(key_node)}")
                continue
            entries[key] = (key_node, value)
            self._nodes[_join(path, key)] = value
        return entries

    def sequence(self, node: Node, path: str) -> list[Node] | None:
        if not isinstance(node, SequenceNode):
            self.error(node, path, f"expected a list, got {self.show(node)}")
            return None
        for i, item in enumerate(node.value):
            self._nodes[f"{path}[{i}]"] = item
        return list(node.value)

    def scalar(self, node: Node) -> object:
        if not isinstance(node, ScalarNode):
            return node
        try:
            return self._constructor.construct_object(node, deep=True)
        except Exception:  # a bad explicit tag (!!int x, !!binary ...): keep the raw text
            return node.value

    def show(self, node: Node) -> str:
        if isinstance(node, SequenceNode):
            return "a list"
        if isinstance(node, MappingNode):
            return "a mapping"
        value = self.scalar(node)
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "true" if value else "false"
        return repr(value)

    def check_keys(self, entries: Mapping[str, tuple[Node, Node]], path: str,
                   allowed: Iterable[str], what: str) -> None:
        allowed = list(allowed)
        for key, (key_node, _) in entries.items():
            if key not in allowed:
                self.error(key_node, _join(path, key),
                           f"unknown key for {what}" + _did_you_mean(key, allowed))

    def node_for(self, path: str, fallback: Node) -> Node:
        """The node at ``path``, or at the nearest enclosing path that has one."""
        while path:
            node = self._nodes.get(path)
            if node is not None:
                return node
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return fallback

    # ------------------------------------------------------------------ value readers

    def string(self, node: Node, path: str) -> str | None:
        value = self.scalar(node)
        if isinstance(value, str) and isinstance(node, ScalarNode):
            return value
        self.error(node, path, f"expected a string, got {self.show(node)}")
        return None

    def duration(self, node: Node, path: str) -> float | None:
        value = self.scalar(node)
        if isinstance(node, ScalarNode) and isinstance(value, str | int | float) \
                and not isinstance(value, bool):
            try:
                return to_seconds(value, key=path)
            except ConfigError:
                pass
        self.error(node, path, f"expected a duration such as 5m, got {self.show(node)}")
        return None

    def number(self, node: Node, path: str) -> float | None:
        value = self.scalar(node)
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                float(value)
            except OverflowError:
                self.error(node, path, "number too large")
                return None
            return value
        self.error(node, path, f"expected a number, got {self.show(node)}")
        return None

    def threshold(self, node: Node, path: str) -> float | None:
        """A number, or a duration for a gauge on an age (the caller checks which)."""
        value = self.scalar(node)
        if isinstance(value, str):
            try:
                return to_seconds(value, key=path)
            except ConfigError:
                self.error(node, path, "expected a number, or a duration such as 10m for an "
                                       f"age, got {self.show(node)}")
                return None
        return self.number(node, path)

    def integer(self, node: Node, path: str) -> int | None:
        value = self.scalar(node)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        self.error(node, path, f"expected a whole number, got {self.show(node)}")
        return None

    def boolean(self, node: Node, path: str) -> bool | None:
        value = self.scalar(node)
        if isinstance(value, bool):
            return value
        self.error(node, path, f"expected true or false, got {self.show(node)}")
        return None

    def strings(self, node: Node, path: str) -> tuple[str, ...] | None:
        """A list of strings; the good ones when some are not (each is reported)."""
        items = self.sequence(node, path)
        if items is None:
            return None
        values = (self.string(item, f"{path}[{i}]") for i, item in enumerate(items))
        return tuple(value for value in values if value is not None)

    def labels(self, node: Node, path: str) -> dict[str, str] | None:
        entries = self.mapping(node, path)
        if entries is None:
            return None
        values = {key: self.string(value, _join(path, key))
                  for key, (_, value) in entries.items()}
        return {key: value for key, value in values.items() if value is not None}

    def annotations(self, node: Node, path: str) -> Annotations | None:
        entries = self.mapping(node, path)
        if entries is None:
            return None
        self.check_keys(entries, path, _ANNOTATIONS, "annotations")
        templates: dict[str, Template] = {}
        for key, (_, value) in entries.items():
            text = self.string(value, _join(path, key)) if key in _ANNOTATIONS else None
            if text is not None:
                try:
                    templates[key] = Template(text)
                except ValueError as exc:
                    self.error(value, _join(path, key), str(exc))
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
                where = _join(path, problem.path.removeprefix("when."))
                self.error(self.node_for(where, node), where, problem.message)
            return None
        return condition if len(self.problems) == mark else None

    def check_age(self, entries: Mapping[str, tuple[Node, Node]], path: str,
                  values: Mapping[str, Any]) -> None:
        """A threshold written as a duration needs a gauge on an age (a ``*_s`` field)."""
        field = values.get("field")
        if "threshold" in values and field in _GAUGE_FIELDS and not field.endswith("_s") \
                and isinstance(self.scalar(node := entries["threshold"][1]), str):
            self.error(node, _join(path, "threshold"),
                       f"a duration fits only a gauge on an age; {field} is a count")

    def read_values(self, entries: Mapping[str, tuple[Node, Node]], path: str,
                    readers: Mapping[str, _Reader]) -> dict[str, Any]:
        """Each entry that has a reader, read; bad ones (reported) left out."""
        values = {key: readers[key](self, value, _join(path, key))
                  for key, (_, value) in entries.items() if key in readers}
        return {key: value for key, value in values.items() if value is not None}

    # ------------------------------------------------------------------ rules

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
                           + _did_you_mean(kind, KINDS))
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

    # ------------------------------------------------------------------ routing

    def read_routing(self, key_node: Node, node: Node, path: str) -> None:
        here = Location(self.file, key_node.start_mark.line + 1)
        if self.routing_at is not None:
            self.error(key_node, path, f"routing is defined twice (first at {self.routing_at})")
            return
        self.routing_at = here
        entries = self.mapping(node, path)
        if entries is None:
            return
        mark = len(self.problems)
        self.check_keys(entries, path, ("receivers", "route", "inhibit"), "routing")
        for key in ("receivers", "route"):
            if key not in entries:
                self.error(node, path, f"missing key {key!r}")
        receivers: dict[str, Receiver] = {}
        declared: set[str] | None = None  # receiver names, invalid receivers' included
        if "receivers" in entries:
            declared = set()
            self.read_receivers(entries["receivers"][1], f"{path}.receivers", receivers,
                                declared)
        route = None
        if "route" in entries:
            route = self.read_route(entries["route"][1], f"{path}.route", None, declared, 0)
        inhibit: list[InhibitRule] = []
        if "inhibit" in entries:
            for i, item in enumerate(self.sequence(entries["inhibit"][1], f"{path}.inhibit") or ()):
                rule = self.read_inhibit(item, f"{path}.inhibit[{i}]")
                inhibit += [rule] if rule is not None else []
        if len(self.problems) == mark and route is not None:
            self.routing = Routing(receivers=receivers, route=route, inhibit=tuple(inhibit),
                                   source=here)

    def read_receivers(self, node: Node, path: str, out: dict[str, Receiver],
                       names: set[str]) -> None:
        items = self.sequence(node, path)
        if items is None:
            return
        if not items:
            self.error(node, path, "at least one receiver is needed")
        for i, item in enumerate(items):
            receiver = self.read_receiver(item, f"{path}[{i}]", names)
            if receiver is not None:
                out[receiver.name] = receiver

    def read_receiver(self, node: Node, path: str, names: set[str]) -> Receiver | None:
        entries = self.mapping(node, path)
        if entries is None:
            return None
        mark = len(self.problems)
        for key in ("name", "kind"):
            if key not in entries:
                self.error(node, path, f"missing key {key!r}")
        values = self.read_values(entries, path, {"name": _Loader.string, "kind": _Loader.string})
        name, kind = values.get("name"), values.get("kind")
        if name is not None:
            if not _RECEIVER_NAME_RE.match(name):
                self.error(entries["name"][1], f"{path}.name",
                           "use letters, digits and _ . - (at most 100)")
            elif name in names:
                self.error(entries["name"][1], f"{path}.name", f"duplicate receiver {name!r}")
            names.add(name)
        if kind is not None and kind not in RECEIVER_KINDS:
            self.error(entries["kind"][1], f"{path}.kind",
                       f"must be one of {', '.join(RECEIVER_KINDS)}, got {kind!r}"
                       + _did_you_mean(kind, RECEIVER_KINDS))
            return None
        if kind is None:
            return None
        schema, secrets = RECEIVER_OPTIONS[kind], RECEIVER_SECRETS[kind]
        options: dict[str, Any] = {}
        reported: set[str] = set()  # settings whose problem is already told
        for key, (key_node, value) in entries.items():
            where = f"{path}.{key}"
            if key in ("name", "kind"):
                continue
            if key in secrets:
                self.error(key_node, where, f"is a secret: put it in an environment variable "
                                            f"and write {secrets[key]}: VARIABLE_NAME")
                reported.add(secrets[key])
            elif key not in schema:
                self.error(key_node, where, f"unknown key for a {kind} receiver"
                           + _did_you_mean(key, ["name", "kind", *schema]))
            else:
                read = _OPTION_READERS[schema[key]](self, value, where)
                if read is None:
                    reported.add(key)
                else:
                    options[key] = read
        if name is None:
            return None
        try:
            receiver = Receiver(name=name, kind=kind, options=options,
                                source=Location(self.file, node.start_mark.line + 1))
        except RulesError as exc:
            prefix = f"receivers[{name!r}]"
            for problem in exc.problems:
                key = problem.path[len(prefix) + 1:]
                if key.split("[")[0] not in reported:
                    where = _join(path, key)
                    self.error(self.node_for(where, node), where, problem.message)
            return None
        return receiver if len(self.problems) == mark else None

    def read_route(self, node: Node, path: str, parent: Route | None,
                   receivers: set[str] | None, depth: int) -> Route | None:
        entries = self.mapping(node, path)
        if entries is None:
            return None
        if depth > _MAX_ROUTE_DEPTH:
            self.error(node, path, f"routes nest deeper than {_MAX_ROUTE_DEPTH} levels")
            return None
        mark = len(self.problems)
        readers = dict(_ROUTE_KEYS)
        if parent is None:
            for key in ("matchers", "continue"):
                if key in entries:
                    self.error(entries[key][0], f"{path}.{key}",
                               "the root route matches every alert; put matchers on its routes")
                    del readers[key]
            if "receiver" not in entries:
                self.error(node, path, "missing key 'receiver' (the root route needs one)")
        self.check_keys(entries, path, [*_ROUTE_KEYS, "routes"], "a route")
        values = self.read_values(entries, path, readers)
        receiver = values.get("receiver")
        if receivers is not None and receiver is not None and receiver not in receivers:
            self.error(entries["receiver"][1], f"{path}.receiver",
                       f"unknown receiver {receiver!r}" + _did_you_mean(receiver, receivers))
        self.check_label_names(values.get("group_by", ()), f"{path}.group_by", node,
                               allow=("...",))
        for key in ("group_interval", "repeat_interval"):
            if values.get(key) == 0:
                self.error(entries[key][1], f"{path}.{key}", "must be positive")
        settings: dict[str, Any] = {"receiver": ""} if parent is None else {
            "receiver": parent.receiver, "group_by": parent.group_by,
            "group_wait_s": parent.group_wait_s, "group_interval_s": parent.group_interval_s,
            "repeat_interval_s": parent.repeat_interval_s,
            "send_resolved": parent.send_resolved,
        }
        settings.update({_ROUTE_FIELDS.get(key, key): value for key, value in values.items()})
        here = Route(**settings, source=Location(self.file, node.start_mark.line + 1))
        children: list[Route] = []
        if "routes" in entries:  # read even after a problem above, to report theirs too
            items = self.sequence(entries["routes"][1], f"{path}.routes") or []
            for i, item in enumerate(items):
                child = self.read_route(item, f"{path}.routes[{i}]", here, receivers, depth + 1)
                children += [child] if child is not None else []
        if len(self.problems) != mark:
            return None
        return Route(**settings, routes=tuple(children), source=here.source)

    def check_label_names(self, names: Iterable[str], path: str, fallback: Node,
                          allow: Iterable[str] = ()) -> None:
        for i, label in enumerate(names):
            if label not in allow and not _LABEL_NAME_RE.match(label):
                self.error(self.node_for(f"{path}[{i}]", fallback), f"{path}[{i}]",
                           f"not a label name: {label!r}")

    def read_inhibit(self, node: Node, path: str) -> InhibitRule | None:
        entries = self.mapping(node, path)
        if entries is None:
            return None
        mark = len(self.problems)
        readers: dict[str, _Reader] = {"source_matchers": _Loader.matchers,
                                       "target_matchers": _Loader.matchers,
                                       "equal": _Loader.strings}
        self.check_keys(entries, path, readers, "an inhibit rule")
        values = self.read_values(entries, path, readers)
        for key in ("source_matchers", "target_matchers"):
            if key not in entries:
                self.error(node, path, f"missing key {key!r}")
            elif values.get(key) == ():
                self.error(entries[key][1], f"{path}.{key}", "needs at least one matcher")
        self.check_label_names(values.get("equal", ()), f"{path}.equal", node)
        if len(self.problems) != mark:
            return None
        return InhibitRule(**values, source=Location(self.file, node.start_mark.line + 1))

    def matchers(self, node: Node, path: str) -> tuple[Matcher, ...] | None:
        texts = self.sequence(node, path)
        if texts is None:
            return None
        found: list[Matcher] = []
        for i, item in enumerate(texts):
            text = self.string(item, f"{path}[{i}]")
            if text is None:
                continue
            try:
                found.append(Matcher.parse(text))
            except ValueError as exc:
                self.error(item, f"{path}[{i}]", str(exc))
        return tuple(found)

    def url(self, node: Node, path: str) -> str | None:
        text = self.string(node, path)
        if text is not None and not text.startswith(("https://", "http://")):
            self.error(node, path, f"expected an http:// or https:// URL, got {text!r}")
            return None
        return text


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
_ROUTE_KEYS: Final[dict[str, _Reader]] = {
    "receiver": _Loader.string,
    "matchers": _Loader.matchers,
    "group_by": _Loader.strings,
    "group_wait": _Loader.duration,
    "group_interval": _Loader.duration,
    "repeat_interval": _Loader.duration,
    "send_resolved": _Loader.boolean,
    "continue": _Loader.boolean,
}
_WHEN_KEYS: Final[dict[str, _Reader]] = {
    "signal": _Loader.string, "field": _Loader.string, "op": _Loader.string,
    "threshold": _Loader.threshold,
}
_ROUTE_FIELDS: Final = {
    "group_wait": "group_wait_s", "group_interval": "group_interval_s",
    "repeat_interval": "repeat_interval_s", "continue": "continue_",
}
_OPTION_READERS: Final[dict[str, _Reader]] = {
    "str": _Loader.string, "int": _Loader.integer, "number": _Loader.number,
    "bool": _Loader.boolean, "url": _Loader.url, "duration": _Loader.duration,
    "list": _Loader.strings, "env": _Loader.string, "envs": _Loader.strings,
    "mapping": _Loader.labels,
}
