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
    close = difflib.get_close_matches(word, list(choices), n=1)
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
                self.read_routing(value, "routing")
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
        except ConstructorError:
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
            return float(value)
        self.error(node, path, f"expected a number, got {self.show(node)}")
        return None

    def number_or_duration(self, node: Node, path: str) -> float | None:
        value = self.scalar(node)
        if isinstance(value, str):
            return self.duration(node, path)
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
        items = self.sequence(node, path)
        if items is None:
            return None
        values = [self.string(item, f"{path}[{i}]") for i, item in enumerate(items)]
        return None if None in values else tuple(v for v in values if v is not None)

    def labels(self, node: Node, path: str) -> dict[str, str] | None:
        entries = self.mapping(node, path)
        if entries is None:
            return None
        values = {key: self.string(value, _join(path, key))
                  for key, (_, value) in entries.items()}
        return None if None in values.values() else {
            k: v for k, v in values.items() if v is not None}

    def annotations(self, node: Node, path: str) -> Annotations | None:
        entries = self.mapping(node, path)
        if entries is None:
            return None
        self.check_keys(entries, path, _ANNOTATIONS, "annotations")
        templates: dict[str, Template] = {}
        good = True
        for key, (_, value) in entries.items():
            text = self.string(value, _join(path, key)) if key in _ANNOTATIONS else None
            if text is None:
                good = False
                continue
            try:
                templates[key] = Template(text)
            except ValueError as exc:
                self.error(value, _join(path, key), str(exc))
                good = False
        return Annotations(**templates) if good else None

    def when(self, node: Node, path: str) -> GaugeCondition | None:
        entries = self.mapping(node, path)
        if entries is None:
            return None
        self.check_keys(entries, path, ("signal", "field", "op", "threshold"), "when")
        readers: dict[str, _Reader] = {
            "signal": _Loader.string, "field": _Loader.string, "op": _Loader.string,
            "threshold": _Loader.number_or_duration,
        }
        values = self.read_values(entries, path, readers)
        missing = [key for key in ("signal", "field", "threshold") if key not in entries]
        for key in missing:
            self.error(node, path, f"missing key {key!r} (when: {{signal, field, op, threshold}})")
        if missing or None in values.values():
            return None
        try:
            return GaugeCondition(**values)
        except RulesError as exc:
            for problem in exc.problems:
                self.error(self.node_for(_join(path, problem.path.removeprefix("when.")), node),
                           _join(path, problem.path.removeprefix("when.")), problem.message)
            return None

    def read_values(self, entries: Mapping[str, tuple[Node, Node]], path: str,
                    readers: Mapping[str, _Reader]) -> dict[str, Any]:
        return {key: readers[key](self, value, _join(path, key))
                for key, (_, value) in entries.items() if key in readers}

    # ------------------------------------------------------------------ rules

    def rule(self, node: Node, path: str) -> None:
        entries = self.mapping(node, path)
        if entries is None:
            return
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
        allowed = dict(_COMMON_KEYS)
        if cls is not None:
            allowed.update(_KIND_KEYS[cls.kind])
            self.check_keys(entries, path, ["kind", *allowed], f"a {cls.kind} rule")
        values: dict[str, Any] = {}
        good = cls is not None
        for key, (_, value) in entries.items():
            if key not in allowed:
                continue
            read = allowed[key](self, value, f"{path}.{key}")
            if read is None:
                good = False
            else:
                values[_field_name(key, allowed[key])] = read
        if "name" in values:
            first = self.names.get(values["name"])
            if first is not None:
                self.error(entries["name"][1], f"{path}.name",
                           f"duplicate rule name {values['name']!r} (first defined at {first})")
                good = False
            else:
                self.names[values["name"]] = Location(self.file, node.start_mark.line + 1)
        if cls is None:
            return
        for f in fields(cls):
            if f.default is MISSING and f.default_factory is MISSING and f.name not in values \
                    and _yaml_key(f.name) not in entries:
                self.error(node, path, f"missing key {_yaml_key(f.name)!r} "
                                       f"(required for a {cls.kind} rule)")
                good = False
        for where, message in cls.check(values):
            self.error(self.node_for(f"{path}.{where}", node), f"{path}.{where}", message)
            good = False
        if good:
            values.setdefault("source", Location(self.file, node.start_mark.line + 1))
            self.rules.append(cls(**values))

    # ------------------------------------------------------------------ routing

    def read_routing(self, node: Node, path: str) -> None:
        here = Location(self.file, node.start_mark.line + 1)
        if self.routing_at is not None:
            self.error(node, path, f"routing is defined twice (first at {self.routing_at})")
            return
        self.routing_at = here
        entries = self.mapping(node, path)
        if entries is None:
            return
        self.check_keys(entries, path, ("receivers", "route", "inhibit"), "routing")
        receivers: dict[str, Receiver] = {}
        declared: set[str] | None = None  # receiver names, even of invalid receivers
        good = True
        for key in ("receivers", "route"):
            if key not in entries:
                self.error(node, path, f"missing key {key!r}")
                good = False
        if "receivers" in entries:
            declared = set()
            good &= self.read_receivers(entries["receivers"][1], f"{path}.receivers",
                                        receivers, declared)
        route = None
        if "route" in entries:
            route = self.read_route(entries["route"][1], f"{path}.route", None, declared, 0)
        inhibit: list[InhibitRule] = []
        if "inhibit" in entries:
            for i, item in enumerate(self.sequence(entries["inhibit"][1], f"{path}.inhibit") or ()):
                rule = self.read_inhibit(item, f"{path}.inhibit[{i}]")
                good &= rule is not None
                inhibit += [rule] if rule is not None else []
        if good and route is not None:
            self.routing = Routing(receivers=receivers, route=route, inhibit=tuple(inhibit),
                                   source=here)

    def read_receivers(self, node: Node, path: str, out: dict[str, Receiver],
                       names: set[str]) -> bool:
        items = self.sequence(node, path)
        if items is None:
            return False
        if not items:
            self.error(node, path, "at least one receiver is needed")
        good = bool(items)
        for i, item in enumerate(items):
            receiver = self.read_receiver(item, f"{path}[{i}]", names)
            if receiver is None:
                good = False
            else:
                out[receiver.name] = receiver
        return good

    def read_receiver(self, node: Node, path: str, names: set[str]) -> Receiver | None:
        entries = self.mapping(node, path)
        if entries is None:
            return None
        good = True
        for key in ("name", "kind"):
            if key not in entries:
                self.error(node, path, f"missing key {key!r}")
                good = False
        name = kind = None
        if "name" in entries:
            name = self.string(entries["name"][1], f"{path}.name")
            if name is not None and not _RECEIVER_NAME_RE.match(name):
                self.error(entries["name"][1], f"{path}.name",
                           "use letters, digits and _ . - (at most 100)")
                name = None
            elif name is not None and name in names:
                self.error(entries["name"][1], f"{path}.name", f"duplicate receiver {name!r}")
                name = None
            if name is not None:
                names.add(name)
        if "kind" in entries:
            kind = self.string(entries["kind"][1], f"{path}.kind")
            if kind is not None and kind not in RECEIVER_KINDS:
                self.error(entries["kind"][1], f"{path}.kind",
                           f"must be one of {', '.join(RECEIVER_KINDS)}, got {kind!r}"
                           + _did_you_mean(kind, RECEIVER_KINDS))
                kind = None
        if kind is None:
            return None
        options_schema = RECEIVER_OPTIONS[kind]  # type: ignore[index]
        secrets = RECEIVER_SECRETS[kind]  # type: ignore[index]
        allowed = ["name", "kind", "timeout", *options_schema, *(f"{s}_env" for s in secrets)]
        env: dict[str, str] = {}
        options: dict[str, Any] = {}
        timeout = 10.0
        for key, (key_node, value) in entries.items():
            where = f"{path}.{key}"
            read: Any
            if key in ("name", "kind"):
                continue
            if key == "timeout":
                read = self.duration(value, where)
                timeout = read if read is not None else timeout
            elif key in options_schema:
                read = _OPTION_READERS[options_schema[key]](self, value, where)
                options[key] = read
            elif key.endswith("_env") and key[:-4] in secrets:
                read = self.string(value, where)
                env[key[:-4]] = read or ""
            elif key in secrets:
                self.error(key_node, where, f"is a secret: put it in an environment variable "
                                            f"and write {key}_env: VARIABLE_NAME")
                read = None
            else:
                self.error(key_node, where, f"unknown key for a {kind} receiver"
                           + _did_you_mean(key, allowed))
                read = None
            good &= read is not None
        if not good or name is None:
            return None
        try:
            return Receiver(name=name, kind=kind, env=env,  # type: ignore[arg-type]
                            options=options, timeout_s=timeout,
                            source=Location(self.file, node.start_mark.line + 1))
        except RulesError as exc:
            prefix = f"receivers[{name!r}]"
            for problem in exc.problems:
                key = problem.path[len(prefix) + 1:]
                self.error(self.node_for(_join(path, key), node), _join(path, key),
                           problem.message)
            return None

    def read_route(self, node: Node, path: str, parent: Route | None,
                   receivers: set[str] | None, depth: int) -> Route | None:
        entries = self.mapping(node, path)
        if entries is None:
            return None
        if depth > _MAX_ROUTE_DEPTH:
            self.error(node, path, f"routes nest deeper than {_MAX_ROUTE_DEPTH} levels")
            return None
        keys = list(_ROUTE_KEYS)
        if parent is None:
            for key in ("matchers", "continue"):
                if key in entries:
                    self.error(entries[key][0], f"{path}.{key}",
                               "the root route matches every alert; put matchers on its routes")
            keys = [k for k in keys if k not in ("matchers", "continue")]
        self.check_keys(entries, path, keys, "a route")
        values = self.read_values(entries, path, {k: _ROUTE_KEYS[k] for k in keys})
        good = None not in values.values()
        if parent is None and "receiver" not in entries:
            self.error(node, path, "missing key 'receiver' (the root route needs one)")
            good = False
        if receivers is not None and values.get("receiver") not in (None, *receivers):
            self.error(entries["receiver"][1], f"{path}.receiver",
                       f"unknown receiver {values['receiver']!r}"
                       + _did_you_mean(values["receiver"], receivers))
            good = False
        for i, label in enumerate(values.get("group_by") or ()):
            if label != "..." and not _LABEL_NAME_RE.match(label):
                self.error(self.node_for(f"{path}.group_by[{i}]", node), f"{path}.group_by[{i}]",
                           f"not a label name: {label!r}")
                good = False
        for key in ("group_interval", "repeat_interval"):
            if values.get(key) == 0:
                self.error(entries[key][1], f"{path}.{key}", "must be positive")
                good = False
        if not good:
            return None
        settings: dict[str, Any] = {} if parent is None else {
            "receiver": parent.receiver, "group_by": parent.group_by,
            "group_wait_s": parent.group_wait_s, "group_interval_s": parent.group_interval_s,
            "repeat_interval_s": parent.repeat_interval_s,
            "send_resolved": parent.send_resolved,
        }
        for key, value in values.items():
            if key != "routes":
                settings[_ROUTE_FIELDS.get(key, key)] = value
        template = Route(**settings, source=Location(self.file, node.start_mark.line + 1))
        children: list[Route] = []
        for i, child in enumerate(self.sequence(entries["routes"][1], f"{path}.routes") or ()
                                  if "routes" in entries else ()):
            route = self.read_route(child, f"{path}.routes[{i}]", template, receivers, depth + 1)
            good &= route is not None
            children += [route] if route is not None else []
        if not good:
            return None
        return Route(**settings, routes=tuple(children), source=template.source)

    def read_inhibit(self, node: Node, path: str) -> InhibitRule | None:
        entries = self.mapping(node, path)
        if entries is None:
            return None
        keys = ("source_matchers", "target_matchers", "equal")
        self.check_keys(entries, path, keys, "an inhibit rule")
        values = self.read_values(entries, path, {"source_matchers": _Loader.matchers,
                                                  "target_matchers": _Loader.matchers,
                                                  "equal": _Loader.strings})
        good = None not in values.values()
        for key in keys[:2]:
            if key not in entries:
                self.error(node, path, f"missing key {key!r}")
                good = False
            elif values.get(key) == ():
                self.error(entries[key][1], f"{path}.{key}", "needs at least one matcher")
                good = False
        for i, label in enumerate(values.get("equal") or ()):
            if not _LABEL_NAME_RE.match(label):
                self.error(self.node_for(f"{path}.equal[{i}]", node), f"{path}.equal[{i}]",
                           f"not a label name: {label!r}")
                good = False
        if not good:
            return None
        return InhibitRule(**values, source=Location(self.file, node.start_mark.line + 1))

    def matchers(self, node: Node, path: str) -> tuple[Matcher, ...] | None:
        texts = self.strings(node, path)
        if texts is None:
            return None
        found: list[Matcher] = []
        for i, text in enumerate(texts):
            try:
                found.append(Matcher.parse(text))
            except ValueError as exc:
                self.error(self.node_for(f"{path}[{i}]", node), f"{path}[{i}]", str(exc))
        return tuple(found) if len(found) == len(texts) else None

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
              "threshold": _Loader.number_or_duration},
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
    "routes": lambda loader, node, path: (),  # read by read_route, depth first
}
_ROUTE_FIELDS: Final = {
    "group_wait": "group_wait_s", "group_interval": "group_interval_s",
    "repeat_interval": "repeat_interval_s", "continue": "continue_",
}
_OPTION_READERS: Final[dict[str, _Reader]] = {
    "str": _Loader.string, "int": _Loader.integer, "bool": _Loader.boolean,
    "url": _Loader.url, "duration": _Loader.duration,
}
