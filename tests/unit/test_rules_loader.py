"""Loading rules: the default set loads; every mistake is reported, all at once, located."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stem_observe.errors import StemObserveError
from stem_observe.rules import (
    AbsenceRule,
    GaugeRule,
    PoisonPillRule,
    Problem,
    RateRule,
    RatioRule,
    RulesError,
    SpikeRule,
    load_rules,
    parse_rules,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = REPO / "alerts" / "rules"

VALID = """\
rules:
  - name: RetryBurst
    kind: rate
    signals: [task-retry]
    group_by: [queue]
    window: 5m
    threshold: 10
    annotations:
      summary: "{value} retries on {queue}"
"""


def problems_of(text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The problems of ``text`` loaded as ``alerts/rules/default.yml``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "alerts" / "rules").mkdir(parents=True, exist_ok=True)
    (tmp_path / "alerts" / "rules" / "default.yml").write_text(text)
    with pytest.raises(RulesError) as raised:
        load_rules("alerts/rules")
    return [str(problem) for problem in raised.value.problems]


def test_the_default_set_loads() -> None:
    ruleset = load_rules(DEFAULTS)
    kinds = {rule.name: type(rule) for rule in ruleset.rules}
    assert kinds == {
        "RetrySpike": SpikeRule, "TaskFailureRatio": RatioRule, "PoisonPill": PoisonPillRule,
        "DeadLetterGrowth": RateRule, "DeadLetterStale": GaugeRule, "QueueBacklog": GaugeRule,
        "QueueMessageAge": GaugeRule, "QueueStalled": AbsenceRule, "WorkerDown": AbsenceRule,
    }
    for rule in ruleset.rules:
        assert rule.annotations.summary is not None, rule.name
        assert rule.annotations.runbook_url is not None, rule.name
        assert rule.annotations.dashboard_url is not None, rule.name
        assert rule.source is not None
        assert rule.source.file.endswith("default.yml")
    stalled = ruleset["QueueStalled"]
    assert isinstance(stalled, AbsenceRule)
    assert stalled.when is not None
    assert stalled.when.holds(1.0)
    assert not stalled.when.holds(0.0)
    assert stalled.inputs == {"task-succeeded", "task-failed", "task-retry", "queue-snapshot"}
    age = ruleset["QueueMessageAge"]
    assert isinstance(age, GaugeRule)
    assert age.threshold == 600.0  # "10m" on an age field is seconds


def test_the_default_routing_sends_to_the_console_and_inhibits_by_queue() -> None:
    routing = load_rules(DEFAULTS).routing
    assert routing is not None
    assert list(routing.receivers) == ["console"]
    assert routing.route.group_by == ("alertname", "queue")
    assert routing.route.group_wait_s == 30.0
    assert routing.route.repeat_interval_s == 4 * 3600.0
    assert routing.route.match({"alertname": "RetrySpike"}) == (routing.route,)
    (inhibit,) = routing.inhibit
    down = {"alertname": "WorkerDown", "worker": "w1", "queue": "emails"}
    assert inhibit.inhibits(down, {"alertname": "TaskFailureRatio", "queue": "emails"})
    assert not inhibit.inhibits(down, {"alertname": "TaskFailureRatio", "queue": "sms"})
    assert not inhibit.inhibits(down, {"alertname": "QueueBacklog", "queue": "emails"})


def test_the_example_in_the_brief_is_reported_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = VALID + """\
  - name: FailureBurst
    kind: rate
    signals: [task-failed]
    window: 5m
    threshold: 1
  - name: DeadLetters
    kind: rate
    signals: [task-dead-lettered]
    window: soon
    threshold: 0
"""
    assert problems_of(text, tmp_path, monkeypatch) == [
        "alerts/rules/default.yml:18: rules[2].window: expected a duration such as 5m, "
        "got 'soon'",
    ]


def mutate(old: str, new: str) -> str:
    assert old in VALID
    return VALID.replace(old, new)


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param(mutate("window: 5m", "window: soon"), [
        "6: rules[0].window: expected a duration such as 5m, got 'soon'",
    ], id="bad duration"),
    pytest.param(mutate("window: 5m", "window: -5m"), [
        "6: rules[0].window: expected a duration such as 5m, got '-5m'",
    ], id="negative duration"),
    pytest.param(mutate("window: 5m", "window: 2d"), [
        "6: rules[0].window: must be at most 86400 s (24h), got 172800.0",
    ], id="window too long"),
    pytest.param(mutate("window: 5m", "windw: 5m"), [
        "2: rules[0]: missing key 'window' (required for a rate rule)",
        "6: rules[0].windw: unknown key for a rate rule (did you mean window?)",
    ], id="unknown key"),
    pytest.param(mutate("threshold: 10", "threshold: ten"), [
        "7: rules[0].threshold: expected a number, got 'ten'",
    ], id="wrong type"),
    pytest.param(mutate("threshold: 10", "threshold: -3"), [
        "7: rules[0].threshold: must be a finite, non-negative number, got -3",
    ], id="negative threshold"),
    pytest.param(mutate("threshold: 10", "threshold: .nan"), [
        "7: rules[0].threshold: must be a finite, non-negative number, got nan",
    ], id="nan threshold"),
    pytest.param(mutate("threshold: 10", "threshold: true"), [
        "7: rules[0].threshold: expected a number, got true",
    ], id="bool threshold"),
    pytest.param(mutate("[task-retry]", "[task-retried]"), [
        "4: rules[0].signals[0]: unknown signal 'task-retried' (did you mean task-retry?)",
    ], id="unknown signal"),
    pytest.param(mutate("[task-retry]", "[queue-snapshot]"), [
        "4: rules[0].signals[0]: signal 'queue-snapshot' is a gauge carrier; use a gauge rule",
    ], id="gauge signal counted"),
    pytest.param(mutate("[task-retry]", "task-retry"), [
        "4: rules[0].signals: expected a list, got 'task-retry'",
    ], id="scalar for a list"),
    pytest.param(mutate("group_by: [queue]", "group_by: [queue, host]"), [
        "5: rules[0].group_by[1]: unknown label 'host'; labels are task, queue, worker, "
        "reason, error_type",
    ], id="unknown label"),
    pytest.param(mutate("group_by: [queue]", "group_by: [queue, reason]"), [
        "5: rules[0].group_by[1]: signal task-retry does not carry label 'reason' "
        "(it carries error_type, queue, task, worker)",
    ], id="label not carried"),
    pytest.param(mutate("group_by: [queue]", "group_by: [queue, queue]"), [
        "5: rules[0].group_by[1]: label 'queue' is listed twice",
    ], id="label twice"),
    pytest.param(mutate("kind: rate", "kind: rat"), [
        "3: rules[0].kind: must be one of rate, ratio, spike, absence, gauge, poison_pill, "
        "got 'rat' (did you mean rate?)",
    ], id="unknown kind"),
    pytest.param(mutate("    kind: rate\n", ""), [
        "2: rules[0]: missing key 'kind' (one of rate, ratio, spike, absence, gauge, "
        "poison_pill)",
    ], id="missing kind"),
    pytest.param(mutate("{value} retries", "{queu} retries"), [
        "9: rules[0].annotations.summary: unknown placeholder {queu} (did you mean queue?); a "
        "rate rule offers {alertname}, {queue}, {severity}, {threshold}, {value}, {window}",
    ], id="unknown placeholder"),
    pytest.param(mutate("{value} retries", "{value.__class__} retries"), [
        "9: rules[0].annotations.summary: {value.__class__} at column 1 is not a placeholder: "
        "use a plain name such as {queue} (write {{ and }} for literal braces)",
    ], id="attribute access"),
    pytest.param(mutate("summary:", "summry:"), [
        "9: rules[0].annotations.summry: unknown key for annotations (did you mean summary?)",
    ], id="unknown annotation"),
    pytest.param(mutate("threshold: 10", "threshold: 10\n    severity: fatal"), [
        "8: rules[0].severity: must be one of critical, error, warning, info, got 'fatal'",
    ], id="bad severity"),
    pytest.param(mutate("threshold: 10", "threshold: 10\n    labels: {alertname: x, team: 7}"), [
        "8: rules[0].labels.team: expected a string, got 7",
        "8: rules[0].labels.alertname: label 'alertname' is set by the engine (alertname, "
        "severity and the group_by labels)",
    ], id="bad labels"),
    pytest.param(mutate("threshold: 10", "threshold: 10\n    window: 1m"), [
        "8: rules[0].window: duplicate key (first at line 6)",
    ], id="duplicate yaml key"),
    pytest.param(mutate("threshold: 10", "threshold: [10"), [
        "8: invalid YAML: expected ',' or ']', but got ':'",
    ], id="yaml syntax"),
    pytest.param(VALID + "alerts: []\n", [
        "10: alerts: unknown key; a rules file has rules and routing",
    ], id="unknown top-level key"),
    pytest.param("- just a list\n", [
        "1: expected a mapping, got a list",
    ], id="not a mapping"),
])
def test_each_mistake_names_file_line_and_key(
    text: str, expected: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = problems_of(text, tmp_path, monkeypatch)
    assert found == [f"alerts/rules/default.yml:{line}" for line in expected]


KIND_MISTAKES = """\
rules:
  - name: Ratio
    kind: ratio
    numerator: [task-failed]
    denominator: []
    window: 10m
    threshold: 0.1
    min_denominator: 0
  - name: Spike
    kind: spike
    signals: [task-retry]
    window: 5m
    baseline: 6m
    factor: 1
    min_count: 2.5
  - name: Stalled
    kind: absence
    signals: [worker-heartbeat]
    group_by: [worker, reason]
    absent_for: 1m
    forget_after: 30s
    when: {signal: queue-snapshot, field: inflight, op: "!", threshold: 0}
  - name: Backlog
    kind: gauge
    signal: queue-snapshot
    field: pendin
    threshold: 10
  - name: Pending
    kind: gauge
    signal: queue-snapshot
    field: pending
    threshold: 10m
  - name: Pill
    kind: poison_pill
    signals: [task-succeeded]
    group_by: [queue]
    window: 30m
    min_count: 1
    max_samples: 50
"""


def test_kind_specific_mistakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    found = problems_of(KIND_MISTAKES, tmp_path, monkeypatch)
    assert [line.removeprefix("alerts/rules/default.yml:") for line in found] == [
        "5: rules[0].denominator: must name at least one signal",
        "8: rules[0].min_denominator: must be at least 1, got 0",
        "13: rules[1].baseline: must be at least twice the window (360 s < 2 x 300 s)",
        "14: rules[1].factor: must be a number above 1, got 1",
        "15: rules[1].min_count: expected a whole number, got 2.5",
        "19: rules[2].group_by[1]: signal worker-heartbeat does not carry label 'reason' "
        "(it carries queue, worker)",
        "21: rules[2].forget_after: must be longer than absent_for",
        "22: rules[2].when.op: must be one of >, >=, <, <=, got '!'",
        "26: rules[3].field: queue-snapshot has no gauge 'pendin' (did you mean pending?); it "
        "has dead_letters, delayed, delayed_overdue, inflight, oldest_dead_letter_age_s, "
        "oldest_pending_age_s, pending",
        "32: rules[4].threshold: a duration fits only a gauge on an age; pending is a count",
        "35: rules[5].signals[0]: signal 'task-succeeded' carries no error; use task-failed, "
        "task-retry or task-dead-lettered",
        "36: rules[5].group_by: a poison_pill rule must group by task",
        "38: rules[5].min_count: must be at least 2, got 1",
        "39: rules[5].max_samples: must be between 1 and 20, got 50",
    ]


def test_all_problems_are_reported_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = VALID + KIND_MISTAKES.removeprefix("rules:\n").replace("name: Ratio", "name: RetryBurst")
    found = problems_of(text, tmp_path, monkeypatch)
    assert len(found) == 15
    assert "alerts/rules/default.yml:10: rules[1].name: duplicate rule name 'RetryBurst' " \
           "(first defined at alerts/rules/default.yml:2)" in found
    lines = [int(line.split(":")[1]) for line in found]
    assert lines == sorted(lines)
    with pytest.raises(RulesError) as raised:
        load_rules("alerts/rules")
    assert str(raised.value).startswith("15 problems:\n  alerts/rules/default.yml:10: ")
    assert isinstance(raised.value, StemObserveError)


def test_duplicate_names_and_routing_across_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    rules = tmp_path / "rules"
    rules.mkdir()
    routing = ("routing:\n  receivers: [{name: console, kind: console}]\n"
               "  route: {receiver: console}\n")
    (rules / "a.yml").write_text(VALID + routing)
    (rules / "b.yaml").write_text("# the same rule again\n" + VALID + routing)
    (rules / "notes.txt").write_text("not a rules file")
    with pytest.raises(RulesError) as raised:
        load_rules("rules")
    assert [str(p) for p in raised.value.problems] == [
        "rules/b.yaml:3: rules[0].name: duplicate rule name 'RetryBurst' "
        "(first defined at rules/a.yml:2)",
        "rules/b.yaml:11: routing: routing is defined twice (first at rules/a.yml:10)",
    ]


def test_files_and_directories_load_together(tmp_path: Path) -> None:
    (tmp_path / "one.yml").write_text(VALID)
    other = tmp_path / "more"
    other.mkdir()
    (other / "two.yml").write_text(VALID.replace("RetryBurst", "RetryBurst2"))
    (other / "empty.yml").write_text("# nothing yet\n")
    ruleset = load_rules(tmp_path / "one.yml", other)
    assert [rule.name for rule in ruleset.rules] == ["RetryBurst", "RetryBurst2"]
    assert ruleset.routing is None
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RulesError, match=r"no \*\.yml files here"):
        load_rules(empty)
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(tmp_path / "missing.yml")


def test_a_loaded_rule_carries_its_values_in_seconds() -> None:
    ruleset = parse_rules(VALID.replace("threshold: 10", "threshold: 10\n    for: 90s\n"
                                        "    keep_firing_for: 1h"), "inline.yml")
    rule = ruleset["RetryBurst"]
    assert isinstance(rule, RateRule)
    assert (rule.window_s, rule.threshold, rule.for_s, rule.keep_firing_for_s) == (
        300.0, 10, 90.0, 3600.0)
    assert rule.group_by == ("queue",)
    assert str(rule.source) == "inline.yml:2"
    assert rule.annotations.render({"value": 12, "queue": "emails"}) == {
        "summary": "12 retries on emails"}
    assert rule.breached(11)
    assert not rule.breached(10)


ROUTING = """\
routing:
  receivers:
    - {name: console, kind: console}
    - name: slack
      kind: slack
      url_env: SLACK_WEBHOOK_URL
      rate_per_s: 1
    - {name: pd, kind: pagerduty, routing_key_env: PD_KEY, timeout: 5s, severity: critical}
    - {name: am, kind: alertmanager, url: "http://alertmanager:9093", bearer_token_env: AM_TOKEN}
    - name: hook
      kind: webhook
      url_env: HOOK_URL
      secret_envs: [HOOK_SECRET, HOOK_SECRET_OLD]
      max_alerts: 20
      headers: {X-Team: core}
  route:
    receiver: console
    group_by: [alertname, queue]
    group_wait: 10s
    routes:
      - matchers: ['severity = critical']
        receiver: pd
        continue: true
        group_wait: 0s
      - matchers: ['severity =~ "critical|error"', 'queue != test']
        receiver: slack
        send_resolved: false
        routes:
          - {matchers: ['team = data'], receiver: hook}
  inhibit:
    - source_matchers: ['alertname = WorkerDown']
      target_matchers: ['alertname =~ "Task.*"']
      equal: [queue]
"""


def test_routing_is_parsed_into_a_resolved_tree() -> None:
    routing = parse_rules(ROUTING).routing
    assert routing is not None
    slack = routing.receivers["slack"]
    assert slack.options == {"url_env": "SLACK_WEBHOOK_URL", "rate_per_s": 1}
    assert slack.env == {"url_env": "SLACK_WEBHOOK_URL"}
    assert slack.config() == {"type": "slack", "url_env": "SLACK_WEBHOOK_URL", "rate_per_s": 1}
    assert routing.receivers["pd"].options["timeout"] == 5.0
    assert routing.receivers["am"].env == {"bearer_token_env": "AM_TOKEN"}
    hook = routing.receivers["hook"]
    assert hook.env == {"url_env": "HOOK_URL", "secret_envs[0]": "HOOK_SECRET",
                        "secret_envs[1]": "HOOK_SECRET_OLD"}
    assert hook.config()["headers"] == {"X-Team": "core"}
    root = routing.route
    pd, slack_route = root.routes
    assert pd.group_wait_s == 0.0
    assert slack_route.group_wait_s == 10.0  # inherited from the root
    assert slack_route.group_by == ("alertname", "queue")
    assert not slack_route.send_resolved
    assert slack_route.routes[0].send_resolved is False  # inherited from its parent
    critical = {"alertname": "X", "severity": "critical", "queue": "emails"}
    assert [r.receiver for r in root.match(critical)] == ["pd", "slack"]  # pd continues
    assert [r.receiver for r in root.match({**critical, "team": "data"})] == ["pd", "hook"]
    assert [r.receiver for r in root.match({**critical, "queue": "test"})] == ["pd"]
    assert [r.receiver for r in root.match({"severity": "info"})] == ["console"]


def test_routing_mistakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = """\
routing:
  receivers:
    - {name: console, kind: console}
    - {name: slack, kind: slack, url: "https://hooks.slack.com/services/T/B/secret"}
    - {name: pd, kind: pagerduty, routing_key_env: "not a variable"}
    - {name: hook, kind: webhook}
    - {name: console, kind: slak}
  route:
    receiver: nobody
    matchers: [a=b]
    group_interval: 0s
    routes:
      - matchers: ['x =~ "("', 'no operator']
        receiver: console
        bogus: 1
  inhibit:
    - source_matchers: []
      equal: [bad-label]
"""
    found = problems_of(text, tmp_path, monkeypatch)
    assert [line.removeprefix("alerts/rules/default.yml:") for line in found] == [
        "4: routing.receivers[1].url: is a secret: put it in an environment variable and "
        "write url_env: VARIABLE_NAME",
        "5: routing.receivers[2].routing_key_env: expected an environment variable name, "
        "such as SLACK_WEBHOOK_URL",
        "6: routing.receivers[3].url_env: required: name the environment variable that "
        "holds it",
        "7: routing.receivers[4].name: duplicate receiver 'console'",
        "7: routing.receivers[4].kind: must be one of slack, pagerduty, webhook, "
        "alertmanager, console, got 'slak' (did you mean slack?)",
        "9: routing.route.receiver: unknown receiver 'nobody'",
        "10: routing.route.matchers: the root route matches every alert; put matchers on its "
        "routes",
        "11: routing.route.group_interval: must be positive",
        "13: routing.route.routes[0].matchers[0]: invalid regular expression '(': missing ), "
        "unterminated subpattern at position 0",
        "13: routing.route.routes[0].matchers[1]: expected a matcher such as "
        "'severity = critical', got 'no operator'",
        "15: routing.route.routes[0].bogus: unknown key for a route",
        "17: routing.inhibit[0].source_matchers: needs at least one matcher",
        "17: routing.inhibit[0]: missing key 'target_matchers'",
        "18: routing.inhibit[0].equal[0]: not a label name: 'bad-label'",
    ]
    assert not any("secret" in line and "hooks.slack.com" in line for line in found)


def test_defaults_take_part_in_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = """\
rules:
  - name: Pill
    kind: poison_pill
    group_by: [task, reason]
    window: 10m
    min_count: 3
  - name: Silent
    kind: absence
    signals: [worker-heartbeat]
    group_by: [worker]
    absent_for: 2h
"""
    found = problems_of(text, tmp_path, monkeypatch)
    assert [line.removeprefix("alerts/rules/default.yml:") for line in found] == [
        "4: rules[0].group_by[1]: signal task-failed does not carry label 'reason' "
        "(it carries error_type, queue, task, worker)",
        "7: rules[1].forget_after: must be longer than absent_for",
    ]


def parse_problems(text: str) -> tuple[Problem, ...] | None:
    """The problems of ``text``, or ``None`` when it loads."""
    try:
        parse_rules(text)
    except RulesError as exc:
        return exc.problems
    return None


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_any_text_loads_or_is_reported(text: str) -> None:
    problems = parse_problems(text)
    if problems is not None:
        assert problems
        assert all(p.file == "<string>" for p in problems)


FRAGMENTS = ["5m", "soon", "-1", "1e999", "99999999999999999999999999", ".nan", "true", "~", "[]",
             "{}", "[task-retry, 3]", "!!int x", "'{a.b}'", "{queue}", "&a x", "*a", "[{a: 1}]",
             "!!binary abc", "2020-13-45", "\"\\u0000\""]


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(1, 8), st.sampled_from(FRAGMENTS)), max_size=4))
def test_mutated_rules_load_or_are_reported(edits: list[tuple[int, str]]) -> None:
    lines = VALID.splitlines()
    for index, fragment in edits:
        key = lines[index].split(":", 1)[0]
        lines[index] = f"{key}: {fragment}"
    problems = parse_problems("\n".join(lines) + "\n") or ()
    assert all(p.line is None or 1 <= p.line <= len(lines) + 1 for p in problems)


def test_parsed_receivers_build_as_the_notifiers_expect() -> None:
    """What the routing file accepts, ``notify.config.build_receiver`` builds."""
    from stem_observe.notify.config import build_receiver

    routing = parse_rules(ROUTING).routing
    assert routing is not None
    environ = {"SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/x", "PD_KEY": "k" * 32,
               "AM_TOKEN": "token", "HOOK_URL": "https://hooks.example.com/in",
               "HOOK_SECRET": "whsec_" + "a" * 32, "HOOK_SECRET_OLD": "whsec_" + "b" * 32}
    for receiver in routing.receivers.values():
        assert set(receiver.env.values()) <= set(environ)
        built = build_receiver(receiver.name, receiver.config(), environ=environ)
        assert built is not None
        close = getattr(built, "close", None)
        if callable(close):
            close()


def test_the_format_example_in_the_loader_docs_loads() -> None:
    import textwrap

    from stem_observe.rules import loader

    doc = loader.__doc__ or ""
    example = textwrap.dedent(doc[doc.index("    rules:"):doc.index("\nEach kind")])
    ruleset = parse_rules(example, "example.yml")
    assert [rule.name for rule in ruleset.rules] == ["RetrySpike"]
    assert ruleset.routing is not None
