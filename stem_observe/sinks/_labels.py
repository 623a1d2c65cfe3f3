"""Bounded label values: past a limit, new values fold into one overflow value."""

from __future__ import annotations

import threading
from typing import Final

__all__ = ["OVERFLOW", "UNKNOWN", "LabelLimiter", "clean_label_value"]

#: The value every label past its limit takes.
OVERFLOW: Final = "__overflow__"
#: The value of a label whose source did not know it (a task with no worker).
UNKNOWN: Final = "unknown"


def clean_label_value(value: str) -> str:
    """``value`` as valid UTF-8: lone surrogates (from undecodable bytes) become ``?``.

    prometheus-client encodes the exposition as UTF-8 and fails on the whole scrape if any
    label value or exemplar cannot be encoded.
    """
    return value.encode("utf-8", "replace").decode("utf-8")


class LabelLimiter:
    """Admits at most ``limit`` distinct values for one label; later ones become ``OVERFLOW``.

    ``folded`` counts the values that were folded (each call, not each distinct value:
    remembering refused values would itself be unbounded). Thread-safe; the fast path for a
    value already admitted is one set lookup.
    """

    __slots__ = ("_lock", "_seen", "folded", "label", "limit")

    def __init__(self, label: str, limit: int) -> None:
        self.label = label
        self.limit = limit
        self.folded = 0
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def admit(self, value: str | None) -> str:
        """The label value to use for ``value``."""
        if value is None or value == "":
            return UNKNOWN
        if value in self._seen:
            return value
        if not isinstance(value, str) or not value.isascii():
            value = clean_label_value(str(value))
            if value in self._seen:
                return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
            self.folded += 1
            return OVERFLOW

    def after_fork(self) -> None:
        self._lock = threading.Lock()

    def forget(self, value: str) -> None:
        """Free the slot of a value whose series were removed."""
        with self._lock:
            self._seen.discard(value)

    def __len__(self) -> int:
        return len(self._seen)
