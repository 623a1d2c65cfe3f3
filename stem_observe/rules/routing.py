"""Routing definitions: receivers, the routing tree and inhibition, as Alertmanager has them.

Label :class:`Matcher` s select alerts; a :class:`Route` tree sends each alert to
:class:`Receiver` s, grouped and throttled; :class:`InhibitRule` s mute alerts while others
fire. :class:`Routing` holds them all, checked to name only receivers that exist.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from types import MappingProxyType
from typing import Any, Final, Literal

from stem_observe.rules._checks import Found, Location, raise_if

__all__ = [
    "RECEIVER_KINDS",
    "RECEIVER_OPTIONS",
    "RECEIVER_REQUIRED",
    "RECEIVER_SECRETS",
    "InhibitRule",
    "MatchOp",
    "Matcher",
    "OptionValue",
    "Receiver",
    "ReceiverKind",
    "Route",
    "Routing",
]

ReceiverKind = Literal["slack", "pagerduty", "webhook", "alertmanager", "console"]
RECEIVER_KINDS: Final[tuple[ReceiverKind, ...]] = (
    "slack", "pagerduty", "webhook", "alertmanager", "console",
)

_ENV_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MATCHER_RE: Final = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*\Z")
MatchOp = Literal["=", "!=", "=~", "!~"]


@dataclass(frozen=True, slots=True)
class Matcher:
    """One label matcher as Alertmanager writes it: ``severity = critical``,
    ``queue =~ "emails|sms"``. Regexes match the whole value; a missing label is ``""``."""

    name: str
    op: MatchOp
    value: str
    _regex: re.Pattern[str] | None = dc_field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        regex = None
        if self.op in ("=~", "!~"):
            try:
                regex = re.compile(self.value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {self.value!r}: {exc}") from None
        object.__setattr__(self, "_regex", regex)

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """``name op value``; the value may be double-quoted. Raises ``ValueError``."""
        match = _MATCHER_RE.match(text)
        if match is None:
            raise ValueError(f"expected a matcher such as 'severity = critical', got {text!r}")
        name, op, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        return cls(name, op, value)  # type: ignore[arg-type]

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self._regex is not None:
            return (self._regex.fullmatch(actual) is not None) == (self.op == "=~")
        return (actual == self.value) == (self.op == "=")

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.name}{self.op}"{escaped}"'


def _all_match(matchers: Sequence[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)


OptionValue = str | int | float | bool | tuple[str, ...] | Mapping[str, str]
#: The settings of each receiver kind and their types, as
#: :func:`stem_observe.notify.config.build_receiver` takes them, less the literal secrets
#: (see :data:`RECEIVER_SECRETS`): secrets are named by environment variable (``*_env``
#: holds a variable name, ``*_envs`` a list of them). Durations are held in seconds.
RECEIVER_OPTIONS: Final[Mapping[ReceiverKind, Mapping[str, str]]] = MappingProxyType({
    "console": {"send_resolved": "bool", "trace_url": "str", "formats": "list"},
    "slack": {"url_env": "env", "send_resolved": "bool", "trace_url": "str",
              "timeout": "duration", "rate_per_s": "number", "burst": "int"},
    "pagerduty": {"routing_key_env": "env", "url": "url", "send_resolved": "bool",
                  "source": "str", "severity": "str", "severity_label": "str",
                  "client_url": "url", "trace_url": "str", "timeout": "duration",
                  "throttle_wait": "duration", "rate_per_s": "number", "burst": "int"},
    "webhook": {"url_env": "env", "secret_envs": "envs", "max_alerts": "int",
                "send_resolved": "bool", "external_url": "url", "headers": "mapping",
                "timeout": "duration"},
    "alertmanager": {"url": "url", "bearer_token_env": "env", "send_resolved": "bool",
                     "firing_ttl": "duration", "timeout": "duration"},
})
#: Settings each kind requires.
RECEIVER_REQUIRED: Final[Mapping[ReceiverKind, frozenset[str]]] = MappingProxyType({
    "console": frozenset(),
    "slack": frozenset({"url_env"}),
    "pagerduty": frozenset({"routing_key_env"}),
    "webhook": frozenset({"url_env"}),
    "alertmanager": frozenset({"url"}),
})
#: Secrets a routing file may not hold literally, with the setting to use instead.
RECEIVER_SECRETS: Final[Mapping[ReceiverKind, Mapping[str, str]]] = MappingProxyType({
    "console": {},
    "slack": {"url": "url_env"},
    "pagerduty": {"routing_key": "routing_key_env"},
    "webhook": {"url": "url_env", "secrets": "secret_envs", "hub_secret": "secret_envs"},
    "alertmanager": {"bearer_token": "bearer_token_env"},
})


@dataclass(frozen=True, slots=True, kw_only=True)
class Receiver:
    """Where notifications go: a kind and its settings (:data:`RECEIVER_OPTIONS`).

    Secrets are held only as environment-variable names (``url_env: SLACK_WEBHOOK_URL``),
    so no secret sits in this object, its repr or an error built from it; the notifier
    reads the variables when it is built (:meth:`config` is what
    :func:`stem_observe.notify.config.build_receiver` takes).
    """

    name: str
    kind: ReceiverKind
    options: Mapping[str, OptionValue] = dc_field(default_factory=dict, hash=False)
    source: Location | None = dc_field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        found: list[tuple[str, str]] = []
        if self.kind not in RECEIVER_KINDS:
            found.append(("kind", f"must be one of {', '.join(RECEIVER_KINDS)}"))
        else:
            schema = RECEIVER_OPTIONS[self.kind]
            for key, value in self.options.items():
                if key in RECEIVER_SECRETS[self.kind]:
                    found.append((key, "is a secret: put it in an environment variable and "
                                       f"write {RECEIVER_SECRETS[self.kind][key]}: "
                                       "VARIABLE_NAME"))
                elif key not in schema:
                    found.append((key, f"a {self.kind} receiver has no setting {key!r}"))
                else:
                    found += [(f"{key}{where}", message)
                              for where, message in _check_option(schema[key], value)]
            for key in sorted(RECEIVER_REQUIRED[self.kind] - set(self.options)):
                found.append((key, "required: name the environment variable that holds it"
                              if schema[key] == "env" else "required"))
        raise_if(found, f"receivers[{self.name!r}]")

    @property
    def env(self) -> dict[str, str]:
        """Every environment variable the receiver reads, by the setting that names it."""
        found: dict[str, str] = {}
        for key, value in self.options.items():
            if key.endswith("_env") and isinstance(value, str):
                found[key] = value
            elif key.endswith("_envs") and isinstance(value, tuple):
                found.update({f"{key}[{i}]": variable for i, variable in enumerate(value)})
        return found

    def config(self) -> dict[str, Any]:
        """The settings as ``stem_observe.notify.config.build_receiver(name, config)`` takes
        them."""
        return {"type": self.kind, **{
            key: dict(value) if isinstance(value, Mapping) else value
            for key, value in self.options.items()}}


def _check_option(kind: str, value: object) -> Found:
    if kind in ("env", "envs"):
        names = value if isinstance(value, tuple) else (value,)
        for i, name in enumerate(names):
            if not isinstance(name, str) or not _ENV_RE.match(name):
                where = f"[{i}]" if kind == "envs" else ""
                yield where, "expected an environment variable name, such as SLACK_WEBHOOK_URL"
    elif kind == "url" and not str(value).startswith(("https://", "http://")):
        yield "", f"expected an http:// or https:// URL, got {value!r}"
    elif kind in ("number", "duration") and not (
            isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        yield "", f"must be a finite, non-negative number, got {value!r}"
    elif kind == "int" and isinstance(value, int) and value < 0:
        yield "", f"must not be negative, got {value!r}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """A node of the routing tree, with every setting resolved (children inherit).

    Alerts are grouped by ``group_by`` (``alertname`` is the rule's name); a new group
    waits ``group_wait_s`` before its first notification, changes go out at most every
    ``group_interval_s``, and an unchanged firing group is re-sent every
    ``repeat_interval_s``. Matching follows Alertmanager: see :meth:`match`.
    """

    receiver: str
    matchers: tuple[Matcher, ...] = ()
    group_by: tuple[str, ...] = ("alertname",)
    group_wait_s: float = 30.0
    group_interval_s: float = 300.0
    repeat_interval_s: float = 14_400.0
    send_resolved: bool = True
    continue_: bool = False
    routes: tuple[Route, ...] = ()
    source: Location | None = dc_field(default=None, compare=False)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return _all_match(self.matchers, labels)

    def match(self, labels: Mapping[str, str]) -> tuple[Route, ...]:
        """The routes an alert with ``labels`` goes to: the deepest matching children,
        depth first, stopping after the first match unless it has ``continue``; this route
        itself when no child matches; nothing when this route does not match."""
        if not self.matches(labels):
            return ()
        found: list[Route] = []
        for child in self.routes:
            matched = child.match(labels)
            if matched:
                found += matched
                if not child.continue_:
                    break
        return tuple(found) or (self,)


@dataclass(frozen=True, slots=True, kw_only=True)
class InhibitRule:
    """While an alert matching ``source_matchers`` fires, alerts matching
    ``target_matchers`` with the same values of the ``equal`` labels are muted."""

    source_matchers: tuple[Matcher, ...]
    target_matchers: tuple[Matcher, ...]
    equal: tuple[str, ...] = ()
    source: Location | None = dc_field(default=None, compare=False)

    def inhibits(self, source: Mapping[str, str], target: Mapping[str, str]) -> bool:
        """Whether a firing alert labelled ``source`` mutes one labelled ``target``.

        As in Alertmanager, a missing label equals an empty one, and an alert matching both
        sides is not muted by another alert that matches both sides.
        """
        if not (_all_match(self.source_matchers, source)
                and _all_match(self.target_matchers, target)):
            return False
        if any(source.get(label, "") != target.get(label, "") for label in self.equal):
            return False
        return not (_all_match(self.source_matchers, target)
                    and _all_match(self.target_matchers, source))


@dataclass(frozen=True, slots=True, kw_only=True)
class Routing:
    """Receivers by name, the routing tree and the inhibition rules."""

    receivers: Mapping[str, Receiver]
    route: Route
    inhibit: tuple[InhibitRule, ...] = ()
    source: Location | None = dc_field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "receivers", MappingProxyType(dict(self.receivers)))
        found = [(f"route{path}", f"unknown receiver {name!r}")
                 for path, name in _route_receivers(self.route, "")
                 if name not in self.receivers]
        raise_if(found, "routing")

    @classmethod
    def default(cls) -> Routing:
        """Everything to one console receiver, grouped by alert name."""
        console = Receiver(name="console", kind="console")
        return cls(receivers={"console": console}, route=Route(receiver="console"))


def _route_receivers(route: Route, path: str) -> Iterator[tuple[str, str]]:
    yield path, route.receiver
    for i, child in enumerate(route.routes):
        yield from _route_receivers(child, f"{path}.routes[{i}]")
