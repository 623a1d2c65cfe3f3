"""The public API is a deliberate list; events and signals use Stem's names."""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any, cast

import pytest

import stem_observe
from stem_observe import events as ev
from stem_observe import signals


def test_all_lists_exactly_the_public_names() -> None:
    # Submodules become attributes once imported anywhere; only two are part of the API.
    public = {
        name for name, value in vars(stem_observe).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert set(stem_observe.__all__) == public | {"events", "signals", "__version__"}
    for name in stem_observe.__all__:
        assert hasattr(stem_observe, name), name


STEM_NAMES = {
    "task-received", "task-prerun", "task-postrun", "task-retry", "task-succeeded",
    "task-failed", "task-revoked", "worker-ready", "worker-stopping", "worker-shutdown",
    "worker-heartbeat", "schedule-entry-due", "schedule-entry-dispatched",
    "schedule-entry-failed", "task-dead-lettered", "task-heartbeat", "queue-snapshot",
    "after-task-publish",
}


def test_every_signal_of_the_design_exists_with_its_wire_name() -> None:
    assert {sig.name for sig in signals.SIGNALS.values()} == STEM_NAMES
    assert signals.task_retry.name == "task-retry"
    assert signals.namespace["task-retry"] is signals.task_retry


def test_every_concrete_event_has_a_signal_and_is_frozen() -> None:
    concrete = [
        obj for obj in vars(ev).values()
        if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj in signals.SIGNALS
    ]
    assert len(concrete) == len(STEM_NAMES)
    event = ev.TaskRetry(task_id="t", task_name="a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.task_id = "other"  # type: ignore[misc]
    assert not hasattr(event, "__dict__")  # slots


def test_a_signal_is_found_for_event_subclasses() -> None:
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class CustomRetry(ev.TaskRetry):
        extra: str = ""

    assert signals.signal_for(CustomRetry) is signals.task_retry
    with pytest.raises(TypeError, match="no signal"):
        signals.signal_for(ev.Event)


def test_events_construct_as_dataclasses_define() -> None:
    first = ev.TaskRetry(task_id="t", task_name="a")
    second = ev.TaskRetry(task_id="t", task_name="a")
    assert first.queue == "default"
    assert first.headers is None
    assert first.occurred_at <= second.occurred_at  # the factory runs per instance
    assert ev.TaskRetry(task_id="t", task_name="a", occurred_at=5.0) == ev.TaskRetry(
        task_id="t", task_name="a", occurred_at=5.0)
    with pytest.raises(TypeError):
        ev.TaskRetry(task_name="a")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        cast(Any, ev.TaskRetry)("t", "a")
    with pytest.raises(TypeError):
        ev.TaskRetry(task_id="t", task_name="a", bogus=1)  # type: ignore[call-arg]
    beat = ev.WorkerHeartbeat(worker_id="w")
    assert beat.queue_loads == ()
    assert beat.timestamp > 0


EVENT_TYPES = sorted(signals.SIGNALS, key=lambda cls: cls.__name__)


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=[cls.__name__ for cls in EVENT_TYPES])
def test_the_positional_constructor_builds_what_the_keyword_one_does(
    cls: type[ev.Event],
) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    values = [f"v{i}" for i in range(len(names))]  # distinct, so a swap shows
    by_position = cls._new(*values)
    assert type(by_position) is cls
    assert [getattr(by_position, name) for name in names] == values
    assert by_position == cast(Any, cls)(**dict(zip(names, values, strict=True)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        by_position.occurred_at = 1.0  # type: ignore[misc]
