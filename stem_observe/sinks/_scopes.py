"""Which in-process task is running in the current context, robust to odd workers.

A worker sends ``task-prerun`` and ``task-postrun`` around each execution, normally in the
same thread. Sinks bind something to the context in between (the current span, the task's
log fields). A per-context stack of :class:`Scope` keeps that binding correct when:

* tasks nest (a task runs another inline): scopes stack and unwind in order;
* the same task id runs in two threads at once (at-least-once redelivery): each thread
  finds its own scope first;
* postrun arrives in another thread: the scope is marked done wherever it is, and the owning
  context drops done scopes the next time it starts a task (``on_unwind`` then undoes the
  binding, in the context that made it);
* postrun never arrives: the task's outcome marked its scope ``ended``, and the next task
  started in that context drops it the same way.

Scopes not yet ended are bounded (``max_open``); past it the oldest is marked done.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any, Final

from opentelemetry import context as otel_context

from stem_observe import events as ev

__all__ = ["SCOPE_HOOKS", "TASKS", "Scope", "ScopeStack"]


class Scope:
    """One in-process task execution bound to a context."""

    __slots__ = ("done", "ended", "task_id", "token", "value")

    def __init__(self, task_id: str, value: Any, token: Any = None) -> None:
        self.task_id = task_id
        self.value = value
        self.token = token
        self.done = False  # popped: its binding is to be undone
        self.ended = False  # its outcome was seen; only postrun is left


class ScopeStack:
    """Per-context stacks of scopes. ``on_unwind(scope)`` runs in the owning context when a
    scope is removed from its stack (to detach what was attached); it must not raise."""

    def __init__(
        self, name: str, *, on_unwind: Callable[[Scope], None] | None = None,
        max_open: int = 10_000,
    ) -> None:
        self._stack: contextvars.ContextVar[tuple[Scope, ...]] = contextvars.ContextVar(
            name, default=()
        )
        self._on_unwind = on_unwind
        self._max_open = max_open
        self._open: dict[int, Scope] = {}  # id(scope) -> scope, insertion-ordered
        self._lock = threading.Lock()

    def prune(self) -> None:
        """Drop this context's stale scopes (done elsewhere, or ended with no postrun).

        Call it before binding anything new: unwinding restores the context as it was
        before the stale scopes, which would also undo a newer binding made on top.
        """
        stack = self._stack.get()
        if stack and (stack[-1].done or stack[-1].ended):
            for stale in stack:  # a task ended here and its postrun never came
                if stale.ended and not stale.done:
                    self._finish(stale)
            self._stack.set(self._unwind(stack))

    def push(self, scope: Scope) -> None:
        """Bind ``scope`` to the current context (after :meth:`prune`)."""
        self.prune()
        self._stack.set((*self._stack.get(), scope))
        self._open[id(scope)] = scope  # atomic under the GIL; the lock guards eviction
        if len(self._open) > self._max_open:
            self._evict()

    def end(self, task_id: str) -> None:
        """Note that ``task_id``'s outcome was seen in this context (postrun should follow)."""
        for scope in reversed(self._stack.get()):
            if scope.task_id == task_id and not scope.done:
                scope.ended = True
                return

    def current(self) -> Scope | None:
        """The innermost scope of this context that is not done."""
        for scope in reversed(self._stack.get()):
            if not scope.done:
                return scope
        return None

    def pop(self, task_id: str) -> Scope | None:
        """End the scope of ``task_id``: this context's innermost one, else any open one."""
        stack = self._stack.get()
        for scope in reversed(stack):
            if scope.task_id == task_id and not scope.done:
                self._finish(scope)
                if stack[-1].done:
                    self._stack.set(self._unwind(stack))
                return scope
        with self._lock:  # sent from another context: mark it; its owner unwinds it
            found = next((s for s in list(self._open.values()) if s.task_id == task_id), None)
        if found is not None:
            self._finish(found)
        return found

    def _evict(self) -> None:
        with self._lock:
            while len(self._open) > self._max_open:
                try:
                    oldest = self._open.pop(next(iter(self._open)))
                except (RuntimeError, KeyError, StopIteration):  # changed meanwhile
                    continue
                oldest.done = True

    def clear(self) -> None:
        """Mark every open scope done (at uninstall or after fork)."""
        with self._lock:
            for scope in self._open.values():
                scope.done = True
            self._open.clear()

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._open = {}

    def __len__(self) -> int:
        return len(self._open)

    def _finish(self, scope: Scope) -> None:
        scope.done = True
        self._open.pop(id(scope), None)

    def _unwind(self, stack: tuple[Scope, ...]) -> tuple[Scope, ...]:
        end = len(stack)
        while end and stack[end - 1].done:
            end -= 1
            if self._on_unwind is not None:
                self._on_unwind(stack[end])
        return stack[:end] if end != len(stack) else stack


def _detach(scope: Scope) -> None:
    """Undo what a sink attached to the scope (the task's span made current)."""
    if scope.token is not None:
        otel_context.detach(scope.token)


#: The in-process tasks of every context. The bridge opens a scope at prerun and closes it
#: at postrun, around the sinks; sinks read it (log fields) or attach to it (the span).
TASKS: Final = ScopeStack("stem_observe_tasks", on_unwind=_detach)


def _before_received(event: ev.TaskEvent) -> None:
    if event.in_process:
        TASKS.prune()  # so a stale span cannot become the new task's parent


def _before_prerun(event: ev.TaskEvent) -> None:
    if event.in_process:
        TASKS.push(Scope(event.task_id, event.task_name))


def _after_outcome(event: ev.TaskEvent) -> None:
    if event.in_process:
        TASKS.end(event.task_id)


def _after_postrun(event: ev.TaskEvent) -> None:
    if event.in_process:
        TASKS.pop(event.task_id)


Hook = Callable[[ev.TaskEvent], None]
#: Event type -> (run before the sinks, run after them).
SCOPE_HOOKS: Final[dict[type[ev.Event], tuple[Hook | None, Hook | None]]] = {
    ev.TaskReceived: (_before_received, None),
    ev.TaskPrerun: (_before_prerun, None),
    ev.TaskSucceeded: (None, _after_outcome),
    ev.TaskFailed: (None, _after_outcome),
    ev.TaskRetry: (None, _after_outcome),
    ev.TaskRevoked: (None, _after_outcome),
    ev.TaskPostrun: (None, _after_postrun),
}
