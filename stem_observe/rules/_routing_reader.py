"""Reading the ``routing:`` section of a rules file into :class:`~.routing.Routing`."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Final

from yaml.nodes import Node

from stem_observe.errors import RulesError
from stem_observe.rules._checks import Location, did_you_mean
from stem_observe.rules._yaml import YamlReader, join
from stem_observe.rules.routing import (
    RECEIVER_KINDS,
    RECEIVER_OPTIONS,
    RECEIVER_SECRETS,
    InhibitRule,
    Matcher,
    Receiver,
    Route,
    Routing,
)

__all__ = ["RoutingReader"]

_MAX_ROUTE_DEPTH: Final = 10
_LABEL_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_RECEIVER_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\Z")

_Reader = Callable[["RoutingReader", Node, str], Any]


class RoutingReader(YamlReader):
    """Reads receivers, the routing tree and inhibit rules; at most one routing in all."""

    def __init__(self) -> None:
        super().__init__()
        self.routing: Routing | None = None
        self.routing_at: Location | None = None

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
        values = self.read_values(entries, path, {"name": RoutingReader.string,
                                                  "kind": RoutingReader.string})
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
                       + did_you_mean(kind, RECEIVER_KINDS))
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
                           + did_you_mean(key, ["name", "kind", *schema]))
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
                    where = join(path, key)
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
                       f"unknown receiver {receiver!r}" + did_you_mean(receiver, receivers))
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
        readers: dict[str, _Reader] = {"source_matchers": RoutingReader.matchers,
                                       "target_matchers": RoutingReader.matchers,
                                       "equal": RoutingReader.strings}
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


_ROUTE_KEYS: Final[dict[str, _Reader]] = {
    "receiver": RoutingReader.string,
    "matchers": RoutingReader.matchers,
    "group_by": RoutingReader.strings,
    "group_wait": RoutingReader.duration,
    "group_interval": RoutingReader.duration,
    "repeat_interval": RoutingReader.duration,
    "send_resolved": RoutingReader.boolean,
    "continue": RoutingReader.boolean,
}
_ROUTE_FIELDS: Final = {
    "group_wait": "group_wait_s", "group_interval": "group_interval_s",
    "repeat_interval": "repeat_interval_s", "continue": "continue_",
}
_OPTION_READERS: Final[dict[str, _Reader]] = {
    "str": RoutingReader.string, "int": RoutingReader.integer, "number": RoutingReader.number,
    "bool": RoutingReader.boolean, "url": RoutingReader.url, "duration": RoutingReader.duration,
    "list": RoutingReader.strings, "env": RoutingReader.string, "envs": RoutingReader.strings,
    "mapping": RoutingReader.labels,
}
