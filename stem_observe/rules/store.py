"""Where the engine keeps what must outlive one tick or be shared: silences and a snapshot
of the alert states, which an engine restores when it starts (after a restart, or as a
second instance sharing the store).

:class:`Store` is the plugin point (a Redis store shares both between ``serve`` instances);
:class:`MemoryStore` is the default and the test double. Silences are created by the CLI
and the HTTP API and read by the engine on each tick::

    store = MemoryStore()
    silence = store.add(["alertname = QueueBacklog", "queue = emails"],
                        ends_at=time.time() + 3600, created_by="ana", comment="migration")
    store.expire(silence.id)
"""

from __future__ import annotations

import builtins
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from stem_observe.errors import StemObserveError
from stem_observe.notify.clock import SYSTEM_CLOCK, Clock
from stem_observe.rules.routing import Matcher

if TYPE_CHECKING:
    from stem_observe.rules.engine import AlertState

__all__ = ["MemoryStore", "Silence", "SilenceError", "Store"]

MAX_SILENCES: Final = 10_000
EXPIRED_RETENTION_S: Final = 86_400.0
"""How long an expired silence stays listed (``list(include_expired=True)``)."""


class SilenceError(StemObserveError, ValueError):
    """A silence cannot be created as asked (no matchers, an end in the past, too many)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Silence:
    """Mutes every alert whose labels match all ``matchers`` from ``starts_at`` until
    ``ends_at`` (epoch seconds)."""

    id: str
    matchers: tuple[Matcher, ...]
    starts_at: float
    ends_at: float
    created_by: str = ""
    comment: str = ""

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(matcher.matches(labels) for matcher in self.matchers)

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "matchers": [str(m) for m in self.matchers],
                "starts_at": self.starts_at, "ends_at": self.ends_at,
                "created_by": self.created_by, "comment": self.comment}


def parse_matchers(matchers: Sequence[Matcher | str]) -> tuple[Matcher, ...]:
    """Matchers as objects; strings such as ``queue = emails`` are parsed."""
    parsed: list[Matcher] = []
    for i, matcher in enumerate(matchers):
        if isinstance(matcher, Matcher):
            parsed.append(matcher)
            continue
        try:
            parsed.append(Matcher.parse(matcher))
        except ValueError as exc:
            raise SilenceError(f"matchers[{i}]: {exc}") from None
    if not parsed:
        raise SilenceError("matchers: a silence needs at least one matcher")
    if all(m.matches({}) for m in parsed):
        raise SilenceError("matchers: at least one matcher must not match an empty label "
                           "(this silence would mute every alert)")
    return tuple(parsed)


class Store(Protocol):
    """Silences and the alert-state snapshot.

    :meth:`silences` and :meth:`save_states` are called from the engine's tick thread once
    per tick, :meth:`load_states` once when an engine is built; :meth:`add`, :meth:`list`
    and :meth:`expire` from the CLI or an HTTP handler thread. Implementations must be
    thread-safe. They may block (a network store waits on its server), which delays that
    tick only. The engine catches and logs whatever they raise, but a store should not
    raise for an unreachable backend: log, and return what it last knew. :meth:`add`
    raises :class:`SilenceError` for an invalid silence.
    """

    def add(self, matchers: Sequence[Matcher | str], ends_at: float, created_by: str = "",
            comment: str = "", *, starts_at: float | None = None) -> Silence:
        """Create a silence (starting now unless ``starts_at``)."""
        ...

    def list(self, *, include_expired: bool = False) -> builtins.list[Silence]:
        """Silences not yet ended (and recently ended ones), oldest first."""
        ...

    def expire(self, silence_id: str) -> bool:
        """End a silence now; ``False`` if there is no such silence or it already ended."""
        ...

    def silences(self, now: float) -> builtins.list[Silence]:
        """The silences active at ``now`` (what the engine applies)."""
        ...

    def save_states(self, states: Sequence[AlertState]) -> None:
        """Replace the stored snapshot of pending, firing and resolved alerts."""
        ...

    def load_states(self) -> builtins.list[AlertState]:
        """The last snapshot saved (empty if none). States the engine cannot use (a rule
        that is gone, bad labels) are skipped and counted by the engine."""
        ...


class MemoryStore:
    """The in-process store. Time comes from ``clock`` (its ``time()``). At most
    :data:`MAX_SILENCES` silences are kept; ended ones are dropped after
    :data:`EXPIRED_RETENTION_S`."""

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self._silences: dict[str, Silence] = {}
        self._states: builtins.list[AlertState] = []
        self._lock = threading.Lock()

    def add(self, matchers: Sequence[Matcher | str], ends_at: float, created_by: str = "",
            comment: str = "", *, starts_at: float | None = None) -> Silence:
        parsed = parse_matchers(matchers)
        now = self.clock.time()
        start = now if starts_at is None else starts_at
        if not ends_at > max(now, start):
            raise SilenceError(f"ends_at: must be after the start and in the future, "
                               f"got {ends_at!r}")
        silence = Silence(id=uuid.uuid4().hex, matchers=parsed, starts_at=start,
                          ends_at=ends_at, created_by=created_by, comment=comment)
        with self._lock:
            self._purge(now)
            if len(self._silences) >= MAX_SILENCES:
                raise SilenceError(f"too many silences (at most {MAX_SILENCES}); expire some")
            self._silences[silence.id] = silence
        return silence

    def list(self, *, include_expired: bool = False) -> builtins.list[Silence]:
        now = self.clock.time()
        with self._lock:
            self._purge(now)
            found = list(self._silences.values())
        return found if include_expired else [s for s in found if s.ends_at > now]

    def expire(self, silence_id: str) -> bool:
        now = self.clock.time()
        with self._lock:
            silence = self._silences.get(silence_id)
            if silence is None or silence.ends_at <= now:
                return False
            self._silences[silence_id] = Silence(
                id=silence.id, matchers=silence.matchers, starts_at=min(silence.starts_at, now),
                ends_at=now, created_by=silence.created_by, comment=silence.comment)
            return True

    def silences(self, now: float) -> builtins.list[Silence]:
        with self._lock:
            return [s for s in self._silences.values() if s.active(now)]

    def save_states(self, states: Sequence[AlertState]) -> None:
        with self._lock:
            self._states = list(states)

    def load_states(self) -> builtins.list[AlertState]:
        with self._lock:
            return list(self._states)

    def _purge(self, now: float) -> None:
        cutoff = now - EXPIRED_RETENTION_S
        for silence_id in [k for k, s in self._silences.items() if s.ends_at < cutoff]:
            del self._silences[silence_id]

    def __repr__(self) -> str:
        return f"MemoryStore(silences={len(self._silences)})"


