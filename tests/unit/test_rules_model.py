"""Rule definitions: validation in Python, templates, matchers, label sets of events."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stem_observe import events as ev
from stem_observe import signals
from stem_observe.errors import RulesError
from stem_observe.rules.model import (
    PLACEHOLDERS,
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
from stem_observe.rules.signals_map import (
    SIGNAL_GAUGES,
    SIGNAL_LABELS,
    error_of,
    gauge_value,
    keys_of,
)
from stem_observe.rules.templates import Annotations, Template, format_duration


def test_every_signal_has_its_labels_and_every_gauge_exists() -> None:
    assert set(SIGNAL_LABELS) == {sig.name for sig in signals.SIGNALS.values()}
    by_name = {sig.name: event for event, sig in signals.SIGNALS.items()}
    for signal, gauges in SIGNAL_GAUGES.items():
        names = {f.name for f in dataclasses.fields(by_name[signal])}
        assert gauges <= names, signal


def test_rules_built_in_python_are_validated() -> None:
    rule = RateRule(name="Retries", signals=["task-retry"], group_by=["queue"],  # type: ignore[arg-type]
                    window_s=60, threshold=3, labels={"team": "core"})
    assert rule.signals == ("task-retry",)
    assert rule.group_by == ("queue",)
    assert rule.labels == {"team": "core"}
    assert hash(rule) == hash(dataclasses.replace(rule))
    with pytest.raises(TypeError):
        rule.labels["team"] = "other"  # type: ignore[index]
    with pytest.raises(RulesError) as raised:
        RateRule(name="9lives", signals=("task-retried",), window_s=0, threshold=-1)
    assert [str(p) for p in raised.value.problems] == [
        "rules['9lives'].name: must start with a letter and use letters, digits and _ . : - "
        "(at most 128), got '9lives'",
        "rules['9lives'].signals[0]: unknown signal 'task-retried' (did you mean task-retry?)",
        "rules['9lives'].window: must be positive, got 0",
        "rules['9lives'].threshold: must be a finite, non-negative number, got -1",
    ]
    with pytest.raises(TypeError, match="abstract"):
        Rule(name="x")
    with pytest.raises(RulesError, match="duplicate rule name 'Retries'"):
        RuleSet((rule, rule))


def test_conditions_of_each_kind() -> None:
    ratio = RatioRule(name="R", numerator=("task-failed",),
                      denominator=("task-succeeded", "task-failed"), window_s=60,
                      threshold=0.5, min_denominator=4)
    assert ratio.signals == ("task-failed", "task-succeeded")
    assert not ratio.breached(3, 3)  # too few to judge
    assert ratio.breached(3, 4)
    assert not ratio.breached(2, 4)
    spike = SpikeRule(name="S", signals=("task-retry",), window_s=300, baseline_s=3600,
                      factor=3, min_count=10)
    assert spike.breached(31, 10.0, 300.0)
    assert not spike.breached(30, 10.0, 300.0)
    assert not spike.breached(9, 0.0, 300.0)  # quiet: never pages
    assert not spike.breached(100, 1.0, 200.0)  # baseline too young
    absence = AbsenceRule(name="A", signals=("worker-heartbeat",), group_by=("worker", "queue"),
                          absent_for_s=60, reset_on=("worker-shutdown",),
                          when=GaugeCondition(signal="worker-heartbeat", field="inflight",
                                              threshold=0))
    assert absence.inputs == {"worker-heartbeat", "worker-shutdown"}
    assert absence.breached(61)
    assert not absence.breached(60)
    gauge = GaugeRule(name="G", signal="queue-snapshot", field="pending", op="<=", threshold=0)
    assert gauge.signals == ("queue-snapshot",)
    assert gauge.breached(0)
    assert not gauge.breached(1)
    pill = PoisonPillRule(name="P", group_by=("task",), window_s=600, min_count=3)
    assert pill.signals == ("task-failed",)
    assert pill.breached(3)
    assert not pill.breached(2)


@given(st.text())
def test_escaped_text_renders_as_itself(text: str) -> None:
    escaped = text.replace("{", "{{").replace("}", "}}")
    assert Template(escaped).render({"value": 1}) == text
    assert Template(escaped).fields == ()


@given(st.text(alphabet="ab{}._:!0[] "), st.dictionaries(st.sampled_from(["a", "b"]), st.text()))
def test_templates_either_parse_to_plain_names_or_are_rejected(
    text: str, values: dict[str, str],
) -> None:
    try:
        template = Template(text)
    except ValueError:
        return
    assert all(re.fullmatch(r"[a-z_][a-z0-9_]*", name) for name in template.fields)
    rendered = template.render(values)
    for name in template.fields:  # every placeholder was replaced
        assert values.get(name, "") in rendered


@pytest.mark.parametrize("text", [
    "{queue.__class__}", "{0}", "{queue!r}", "{queue:>10}", "{queue[0]}", "{ queue }",
    "{Queue}", "{", "}", "{queue", "text } more",
])
def test_only_plain_placeholders_are_allowed(text: str) -> None:
    with pytest.raises(ValueError, match=r"placeholder|unclosed|unmatched"):
        Template(text)


def test_rendering_formats_values_briefly() -> None:
    template = Template("{a}|{b}|{c}|{d}|{e}|{f}|{g}|{{literal}}")
    assert template.fields == ("a", "b", "c", "d", "e", "f", "g")
    assert template.render({"a": 0.25, "b": 1234.5, "c": 3.0, "d": True, "e": ("x", "y"),
                            "f": None}) == "0.25|1234|3|true|x, y|||{literal}"
    summary = Annotations(summary=Template("{queue} at {value}"))
    assert summary.render({"queue": "emails", "value": 2 / 3}) == {"summary": "emails at 0.6667"}
    assert [format_duration(s) for s in (0, 0.5, 90, 300, 3661, 86400)] == [
        "0s", "500ms", "1m30s", "5m", "1h1m1s", "1d"]


def test_placeholders_are_checked_against_kind_and_group_by() -> None:
    assert "fingerprint" in PLACEHOLDERS["poison_pill"]
    assert "fingerprint" not in PLACEHOLDERS["rate"]
    with pytest.raises(RulesError, match=r"unknown placeholder \{fingerprint\}"):
        RateRule(name="R", signals=("task-failed",), window_s=60, threshold=1,
                 annotations=Annotations(summary=Template("{fingerprint}")))
    with pytest.raises(RulesError, match=r"unknown placeholder \{task\}"):
        RateRule(name="R", signals=("task-failed",), group_by=("queue",), window_s=60,
                 threshold=1, annotations=Annotations(summary=Template("{task}")))


@pytest.mark.parametrize(("text", "labels", "matches"), [
    ("severity = critical", {"severity": "critical"}, True),
    ("severity=critical", {"severity": "error"}, False),
    ("severity != critical", {}, True),
    ('queue =~ "emails|sms"', {"queue": "sms"}, True),
    ('queue =~ "emails|sms"', {"queue": "sms-eu"}, False),  # regexes match the whole value
    ("queue !~ test.*", {"queue": "testing"}, False),
    ('team = ""', {}, True),  # a missing label is empty
    ('summary = "say \\"hi\\""', {"summary": 'say "hi"'}, True),
])
def test_matchers(text: str, labels: dict[str, str], matches: bool) -> None:
    matcher = Matcher.parse(text)
    assert matcher.matches(labels) is matches
    assert Matcher.parse(str(matcher)) == matcher


def test_inhibition_follows_alertmanager() -> None:
    rule = InhibitRule(source_matchers=(Matcher.parse("severity = critical"),),
                       target_matchers=(Matcher.parse("severity = warning"),),
                       equal=("queue",))
    source = {"severity": "critical", "queue": "emails"}
    assert rule.inhibits(source, {"severity": "warning", "queue": "emails"})
    assert not rule.inhibits(source, {"severity": "warning", "queue": "sms"})
    assert not rule.inhibits(source, {"severity": "critical", "queue": "emails"})
    both = InhibitRule(source_matchers=(Matcher.parse("a = 1"),),
                       target_matchers=(Matcher.parse("b = 1"),))
    # An alert matching both sides is not muted by another that matches both sides.
    assert not both.inhibits({"a": "1", "b": "1"}, {"a": "1", "b": "1"})
    assert both.inhibits({"a": "1"}, {"a": "1", "b": "1"})


def test_receivers_hold_secrets_only_by_variable_name() -> None:
    with pytest.raises(RulesError) as raised:
        Receiver(name="s", kind="slack")
    assert str(raised.value) == "receivers['s'].url_env: required: name the environment " \
                                "variable that holds it"
    with pytest.raises(RulesError, match=r"receivers\['am'\]\.url: required"):
        Receiver(name="am", kind="alertmanager")
    with pytest.raises(RulesError, match="is a secret"):
        Receiver(name="pd", kind="pagerduty", options={"routing_key": "abc"})
    with pytest.raises(RulesError, match="unknown receiver 'nobody'"):
        Routing(receivers={}, route=Route(receiver="nobody"))
    default = Routing.default()
    assert default.route.match({"alertname": "X"}) == (default.route,)


def test_events_map_to_label_sets() -> None:
    failed = ev.TaskFailed(task_id="t1", task_name="emails.send", queue="emails",
                           error_type="SMTPError", error_message="421 try later")
    assert keys_of(failed, ("task", "queue", "error_type", "worker")) == (
        ("emails.send", "emails", "SMTPError", "unknown"),)
    assert keys_of(failed, ()) == ((),)
    beat = ev.WorkerHeartbeat(worker_id="w1", queues=("emails", "sms", "emails"), inflight=3)
    assert keys_of(beat, ("worker", "queue")) == (("w1", "emails"), ("w1", "sms"))
    assert keys_of(ev.WorkerHeartbeat(worker_id="w2"), ("queue",)) == (("unknown",),)
    snapshot = ev.QueueSnapshot(queue="emails", pending=12, oldest_pending_age_s=None)
    assert keys_of(snapshot, ("queue",)) == (("emails",),)
    assert gauge_value(snapshot, "pending") == 12.0
    assert gauge_value(snapshot, "oldest_pending_age_s") is None
    assert gauge_value(beat, "inflight") == 3.0
    dead = ev.TaskDeadLettered(task_id="t", task_name="a", reason="unregistered-task")
    assert keys_of(dead, ("reason",)) == (("unregistered-task",),)
    assert error_of(dead) == ("unregistered-task", "")
    assert error_of(failed) == ("SMTPError", "421 try later")
    assert error_of(snapshot) is None
    rule = RateRule(name="R", signals=("task-failed",), group_by=("queue", "task"),
                    window_s=60, threshold=1)
    assert rule.key({"task": "a", "queue": "q"}) == ("q", "a")
