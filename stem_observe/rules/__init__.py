"""Alerting rules: definitions (``model`` for rules, ``routing`` for receivers and routes,
``templates`` for annotations, ``signals_map`` for what each signal carries), YAML loading
(``loader``) and the bounded time-bucketed state the engine keeps per label set
(``windows``), one window shared by the rules that read the same signals, grouping and
window length.

Load and validate a rules file or directory — every problem is reported at once, each with
file, line and key path::

    from stem_observe.rules import load_rules

    ruleset = load_rules("alerts/rules")      # RulesError lists what is wrong
    for rule in ruleset.rules:
        print(rule.kind, rule.name, sorted(rule.inputs))
"""

from stem_observe.errors import Problem, RulesError
from stem_observe.rules._checks import Location
from stem_observe.rules.engine import AlertState, Engine
from stem_observe.rules.fingerprints import fingerprint
from stem_observe.rules.loader import load_rules, parse_rules
from stem_observe.rules.model import (
    AbsenceRule,
    GaugeCondition,
    GaugeRule,
    PoisonPillRule,
    RateRule,
    RatioRule,
    Rule,
    RuleSet,
    SpikeRule,
)
from stem_observe.rules.routing import InhibitRule, Matcher, Receiver, Route, Routing
from stem_observe.rules.store import MemoryStore, Silence, Store
from stem_observe.rules.templates import Annotations, Template
from stem_observe.rules.windows import (
    Baseline,
    CountWindows,
    FingerprintCount,
    FingerprintWindows,
    GaugeValues,
    LastSeen,
    Reading,
)

__all__ = [
    "AbsenceRule",
    "AlertState",
    "Annotations",
    "Baseline",
    "CountWindows",
    "Engine",
    "FingerprintCount",
    "FingerprintWindows",
    "GaugeCondition",
    "GaugeRule",
    "GaugeValues",
    "InhibitRule",
    "LastSeen",
    "Location",
    "Matcher",
    "MemoryStore",
    "PoisonPillRule",
    "Problem",
    "RateRule",
    "RatioRule",
    "Reading",
    "Receiver",
    "Route",
    "Routing",
    "Rule",
    "RuleSet",
    "RulesError",
    "Silence",
    "SpikeRule",
    "Store",
    "Template",
    "fingerprint",
    "load_rules",
    "parse_rules",
]
