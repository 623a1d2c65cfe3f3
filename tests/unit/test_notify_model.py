"""Alerts and notifications: stable identities, bounded samples, derived fields."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stem_observe.errors import ConfigError
from stem_observe.notify.model import (
    Alert,
    Notification,
    TaskSample,
    check_trace_template,
    rfc3339,
    truncate,
)

LABELS = {"queue": "emails", "task": "emails.send"}


def alert(**changes: object) -> Alert:
    base = Alert(name="retry_spike", labels=LABELS, starts_at=100.0)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_fingerprint_is_a_stable_hash_of_sorted_labels_only() -> None:
    first = Alert(name="a", labels={"x": "1", "y": "2"}, annotations={"summary": "s"})
    second = Alert(name="a", labels={"y": "2", "x": "1"}, annotations={"summary": "other"},
                   status="resolved", starts_at=5.0)
    assert first.fingerprint == second.fingerprint
    assert len(first.fingerprint) == 16
    int(first.fingerprint, 16)
    assert Alert(name="b", labels={"x": "1", "y": "2"}).fingerprint != first.fingerprint
    assert Alert(name="a", labels={"x": "1", "y": "3"}).fingerprint != first.fingerprint
    # a known value, so a change of the hash is a deliberate one
    assert Alert(name="a").fingerprint == Alert(name="a", labels={}).fingerprint


@given(st.dictionaries(st.text(min_size=1), st.text(), max_size=5))
def test_fingerprint_ignores_insertion_order(labels: dict[str, str]) -> None:
    reordered = dict(reversed(list(labels.items())))
    assert Alert(name="n", labels=labels).fingerprint == Alert(
        name="n", labels=reordered).fingerprint


def test_alerts_keep_at_most_five_samples_and_freeze_their_mappings() -> None:
    samples = [TaskSample(f"t-{i}", f"trace-{i}") for i in range(8)]
    made = Alert(name="a", labels={"q": "1"}, samples=tuple(samples))
    assert [s.task_id for s in made.samples] == [f"t-{i}" for i in range(5)]
    with pytest.raises(TypeError):
        made.labels["q"] = "2"  # type: ignore[index]
    assert hash(made) == hash(Alert(name="a", labels={"q": "1"}, starts_at=made.starts_at))


def test_alert_validates_name_and_status() -> None:
    with pytest.raises(ValueError, match="name"):
        Alert(name="")
    with pytest.raises(ValueError, match="status"):
        Alert(name="a", status="pending")  # type: ignore[arg-type]


def test_where_summary_and_value_text() -> None:
    made = alert(value=0.4213, threshold=0.1)
    assert made.where == "queue emails, task emails.send"
    assert made.summary == "retry_spike on queue emails, task emails.send"
    assert made.value_text == "0.4213 (threshold 0.1)"
    assert alert(value=120.0, baseline=12.0).value_text == "120 (baseline 12)"
    assert alert().value_text is None
    assert alert(annotations={"summary": "Retries up"}).summary == "Retries up"
    assert alert(labels={}).summary == "retry_spike"


def test_trace_urls_come_from_a_checked_template() -> None:
    template = check_trace_template("https://tempo/trace/{trace_id}?task={task_id}")
    assert TaskSample("t-1", "abc").trace_url(template) == "https://tempo/trace/abc?task=t-1"
    assert TaskSample("t-1").trace_url(template) is None
    assert TaskSample("t-1", "abc").trace_url(None) is None
    with pytest.raises(ConfigError, match="trace_url"):
        check_trace_template("https://tempo/{span}")
    with pytest.raises(ConfigError, match="no \\{trace_id\\}"):
        check_trace_template("https://tempo/{task_id}")


def test_notification_status_is_firing_if_any_alert_fires() -> None:
    firing, resolved = alert(), alert(labels={"queue": "b"}, status="resolved")
    assert Notification(receiver="r", group_key="g", alerts=(firing, resolved)).status == "firing"
    both = Notification(receiver="r", group_key="g", alerts=(resolved,))
    assert both.status == "resolved"
    assert both.title == "[RESOLVED] retry_spike"
    mixed = Notification(receiver="r", group_key="g", alerts=(firing, resolved))
    assert mixed.title == "[FIRING:1] retry_spike"
    assert mixed.firing == (firing,)
    assert mixed.resolved == (resolved,)


def test_notification_id_is_stable_for_one_state_change_and_differs_otherwise() -> None:
    one, two = alert(), alert(labels={"queue": "other"})
    base = Notification(receiver="slack", group_key="g", alerts=(one, two))
    again = Notification(receiver="slack", group_key="g", alerts=(two, one))
    assert base.notification_id == again.notification_id
    assert base.notification_id.startswith("ntf_")
    assert len(base.notification_id) == 36
    variants = [
        dataclasses.replace(base, receiver="pagerduty"),
        dataclasses.replace(base, group_key="h"),
        dataclasses.replace(base, reason="repeat", sequence=1),
        dataclasses.replace(base, alerts=(one, dataclasses.replace(two, status="resolved"))),
        dataclasses.replace(base, alerts=(one, dataclasses.replace(two, starts_at=200.0))),
        dataclasses.replace(base, alerts=(one,)),
    ]
    ids = {v.notification_id for v in variants}
    assert len(ids) == len(variants)
    assert base.notification_id not in ids


def test_common_labels_and_annotations() -> None:
    first = alert(annotations={"summary": "x", "runbook": "r"})
    second = alert(labels={"queue": "emails", "task": "other"},
                   annotations={"summary": "y", "runbook": "r"})
    note = Notification(receiver="r", group_key="g", alerts=(first, second))
    assert note.common_labels == {"alertname": "retry_spike", "queue": "emails"}
    assert note.common_annotations == {"runbook": "r"}
    assert Notification(receiver="r", group_key="g", alerts=()).common_labels == {}


def test_rfc3339_and_truncate() -> None:
    assert rfc3339(0.0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1.5) == "1970-01-01T00:00:01.500Z"
    assert rfc3339(None) == "0001-01-01T00:00:00Z"
    assert truncate("abcdef", 4) == "abc…"
    assert truncate("abc", 3) == "abc"
    assert truncate("ééééé", 3) == "éé…"
    assert len(truncate("x" * 5000, 1024)) == 1024


def test_the_notify_package_exports_a_deliberate_list() -> None:
    import types

    from stem_observe import notify

    public = {name for name, value in vars(notify).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)}
    assert set(notify.__all__) == public
