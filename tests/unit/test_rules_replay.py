"""``stem-observe rules test``: replaying events through rules on a simulated clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from stem_observe.cli import main
from stem_observe.errors import StemObserveError
from stem_observe.rules import parse_rules
from stem_observe.rules.replay import read_events, replay

RULES = """
rules:
  - name: RetryBurst
    kind: rate
    signals: [task-retry]
    group_by: [queue]
    window: 1m
    threshold: 2
    for: 30s
    keep_firing_for: 1m
"""


def events_file(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text("# a comment\n\n" + "\n".join(lines) + "\n")
    return path


def retry(at: str, task: str, queue: str = "emails") -> str:
    return (f'{{"at": "{at}", "signal": "task-retry", "task_id": "{task}", '
            f'"task_name": "emails.send", "queue": "{queue}"}}')


def test_replay_shows_pending_firing_and_resolved_at_their_times(tmp_path: Path) -> None:
    path = events_file(tmp_path, *(retry(f"{s}s", f"t{s}") for s in (0, 5, 10, 15)),
                       retry("12s", "other", queue="media"))
    transitions = replay(parse_rules(RULES), read_events(path), tick_s=5, tail_s=300)
    timeline = [(t.at_s, t.alert.labels["queue"], t.alert.state) for t in transitions]
    assert timeline[0] == (10.0, "emails", "pending")  # the third retry breaches
    firing = [at for at, _, state in timeline if state == "firing"]
    assert firing == [40.0]  # after `for: 30s`
    resolved = [at for at, _, state in timeline if state == "resolved"]
    assert len(resolved) == 1
    assert resolved[0] >= 60 + 60  # the window empties, then keep_firing_for passes
    assert all(queue == "emails" for _, queue, _ in timeline)  # media never breached


def test_cli_prints_the_timeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    path = events_file(tmp_path, *(retry(f"{s}s", f"t{s}") for s in (0, 5, 10)))
    assert main(["rules", "test", str(rules), str(path), "--tail", "3m"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["10s", 'RetryBurst{queue="emails"}', "pending", "value=3"]
    assert any("firing" in line for line in out)


@pytest.mark.parametrize(("line", "message"), [
    ("not json", ":3: not JSON"),
    ('{"signal": "task-nope"}', ":3: signal: expected one of"),
    ('{"signal": "task-retry", "task_id": "t", "task_name": "a", "colour": "red"}',
     ":3: task-retry has no field 'colour'"),
    ('{"at": "soon", "signal": "task-retry", "task_id": "t", "task_name": "a"}', ":3: at"),
    ('{"signal": "task-retry"}', ":3:"),
])
def test_bad_event_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = events_file(tmp_path, line)
    with pytest.raises(StemObserveError, match=message):
        read_events(path)
