"""Reading YAML with line numbers: values checked one node at a time, problems collected.

:class:`YamlReader` composes a document into nodes (keeping their marks), reads mappings,
lists and typed scalars from them, and records each problem with its file, line and key
path instead of stopping, so a loader can report everything wrong at once. It knows
nothing of rules; :mod:`.loader` builds on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Self

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from stem_observe.config import to_seconds
from stem_observe.errors import ConfigError, Problem
from stem_observe.rules._checks import did_you_mean

__all__ = ["YamlReader", "join"]


def join(path: str, key: str) -> str:
    """The path of ``key`` inside the mapping at ``path``."""
    return f"{path}.{key}" if path else key


class YamlReader:
    """Reads value nodes at key paths, collecting problems instead of stopping.

    Each value reader takes ``(node, path)`` and returns the value, or ``None`` after
    reporting a problem.
    """

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.file = "<string>"
        self._constructor = SafeConstructor()
        self._nodes: dict[str, Node] = {}  # path -> node, for problems found by the model

    # ------------------------------------------------------------------ plumbing

    def error(self, node: Node | None, path: str, message: str) -> None:
        line = None if node is None else node.start_mark.line + 1
        self.problems.append(Problem(self.file, line, path, message))

    def compose(self, text: str, file: str) -> Node | None:
        """The root node of ``text`` (``None`` when empty or invalid, which is reported)."""
        self.file = file
        self._nodes = {}
        try:
            return yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = None if mark is None else mark.line + 1
            self.problems.append(Problem(file, line, "", f"invalid YAML: {exc.problem}"))
            return None
        except yaml.YAMLError as exc:
            self.problems.append(Problem(file, None, "", f"invalid YAML: {exc}"))
            return None

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
                self.error(key_node, join(path, str(key)),
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
            self._nodes[join(path, key)] = value
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
                self.error(key_node, join(path, key),
                           f"unknown key for {what}" + did_you_mean(key, allowed))

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
        values = {key: self.string(value, join(path, key))
                  for key, (_, value) in entries.items()}
        return {key: value for key, value in values.items() if value is not None}

    def read_values(self, entries: Mapping[str, tuple[Node, Node]], path: str,
                    readers: Mapping[str, Callable[[Self, Node, str], Any]]) -> dict[str, Any]:
        """Each entry that has a reader, read; bad ones (reported) left out."""
        values = {key: readers[key](self, value, join(path, key))
                  for key, (_, value) in entries.items() if key in readers}
        return {key: value for key, value in values.items() if value is not None}
