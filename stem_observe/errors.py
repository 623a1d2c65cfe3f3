"""The exception hierarchy: every error the library raises on purpose is a ``StemObserveError``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ConfigError", "Problem", "RulesError", "StemObserveError"]


class StemObserveError(Exception):
    """Base of every error stem-observe raises on purpose."""


class ConfigError(StemObserveError, ValueError):
    """A setting is invalid. ``key`` names it (argument or environment variable)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a rules file; ``str()`` reads ``file:line: path: message``."""

    file: str | None
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = "" if self.file is None else (
            f"{self.file}: " if self.line is None else f"{self.file}:{self.line}: "
        )
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


class RulesError(StemObserveError, ValueError):
    """Rules or routing are invalid. ``problems`` lists every problem found, in file order."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            text = str(self.problems[0])
        else:
            text = f"{len(self.problems)} problems:\n" + "\n".join(
                f"  {p}" for p in self.problems)
        super().__init__(text)
