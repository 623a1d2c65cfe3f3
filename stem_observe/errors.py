"""The exception hierarchy: every error the library raises on purpose is a ``StemObserveError``."""

from __future__ import annotations

__all__ = ["ConfigError", "StemObserveError"]


class StemObserveError(Exception):
    """Base of every error stem-observe raises on purpose."""


class ConfigError(StemObserveError, ValueError):
    """A setting is invalid. ``key`` names it (argument or environment variable)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
