"""Alerting rules: definitions (``model``), YAML loading (``loader``) and the bounded
time-bucketed state the engine keeps per rule and label set (``windows``).

Load and validate a rules file or directory — every problem is reported at once, each with
file, line and key path::

    from stem_observe.rules import load_rules

    ruleset = load_rules("alerts/rules")      # RulesError lists what is wrong
    for rule in ruleset.rules:
        print(rule.kind, rule.name, sorted(rule.inputs))
"""

from stem_observe.rules.loader import load_rules, parse_rules
from stem_observe.rules.model import (
    AbsenceRule,
    Annotations,
    GaugeCondition,
    GaugeRule,
    InhibitRule,
    Location,
    Matcher,
    PoisonPillRule,
    Problem,
    RateRule,
    RatioRule,
    Receiver,
    Route,
    Routing,
    Rule,
    RulesError,
    RuleSet,
    SpikeRule,
    Template,
)
from stem_observe.rules.windows import (
    Baseline,
    CountWindows,
    FingerprintCount,
    FingerprintWindows,
    GaugeValues,
    LastSeen,
    Reading,
    fingerprint,
)

__all__ = [
    "AbsenceRule",
    "Annotations",
    "Baseline",
    "CountWindows",
    "FingerprintCount",
    "FingerprintWindows",
    "GaugeCondition",
    "GaugeRule",
    "GaugeValues",
    "InhibitRule",
    "LastSeen",
    "Location",
    "Matcher",
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
    "SpikeRule",
    "Template",
    "fingerprint",
    "load_rules",
    "parse_rules",
]
