"""``emit`` follows blinker's semantics: connections, senders, weak receivers, muting."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from stem_observe import events as ev
from stem_observe import signals

EVENT = ev.TaskPrerun(task_id="t", task_name="a")


class Listener:
    def __init__(self) -> None:
        self.seen: list[tuple[object, ev.Event]] = []

    def receive(self, sender: object, *, event: ev.Event) -> None:
        self.seen.append((sender, event))


@pytest.fixture
def listener() -> Iterator[Listener]:
    item = Listener()
    yield item
    signals.task_prerun.disconnect(item.receive)


def test_connecting_after_an_emit_takes_effect(listener: Listener) -> None:
    signals.emit(EVENT)
    signals.task_prerun.connect(listener.receive)
    signals.emit(EVENT)
    assert listener.seen == [("python", EVENT)]
    signals.task_prerun.disconnect(listener.receive)
    signals.emit(EVENT)
    assert len(listener.seen) == 1


def test_sender_specific_receivers_get_only_their_sender(listener: Listener) -> None:
    signals.task_prerun.connect(listener.receive, sender="celery")
    signals.emit(EVENT, "python")
    signals.emit(EVENT, "celery")
    assert [sender for sender, _ in listener.seen] == ["celery"]


def test_a_dead_weak_receiver_is_neither_called_nor_kept_alive() -> None:
    item = Listener()
    signals.task_prerun.connect(item.receive)  # weak by default
    signals.emit(EVENT)
    assert len(item.seen) == 1
    alive = weakref.ref(item)
    del item
    gc.collect()
    assert alive() is None
    signals.emit(EVENT)  # the dead receiver is skipped
    assert not signals.task_prerun.receivers


def test_strong_lambdas_keep_working(listener: Listener) -> None:
    calls: list[ev.Event] = []
    receiver = signals.task_prerun.connect(
        lambda sender, *, event: calls.append(event), weak=False
    )
    try:
        signals.emit(EVENT)
        gc.collect()
        signals.emit(EVENT)
    finally:
        signals.task_prerun.disconnect(receiver)
    assert calls == [EVENT, EVENT]


def test_muted_signals_send_nothing(listener: Listener) -> None:
    signals.task_prerun.connect(listener.receive)
    with signals.task_prerun.muted():
        signals.emit(EVENT)
    assert listener.seen == []
