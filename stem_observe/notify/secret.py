"""Secrets: webhook URLs, routing keys and signing keys held so that they never show.

:class:`Secret` prints as ``***``; every secret value is also remembered so :func:`redact`
can scrub it from error texts and from httpx's request log lines.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

from stem_observe.errors import ConfigError

__all__ = ["Secret", "redact", "register_secret_text"]


_KNOWN_SECRETS: set[str] = set()
_KNOWN_LOCK = threading.Lock()


def register_secret_text(text: str) -> None:
    """Have :func:`redact` hide ``text`` too (for example a URL as httpx normalises it)."""
    if len(text) >= 6:
        with _KNOWN_LOCK:
            _KNOWN_SECRETS.add(text)


def redact(text: str) -> str:
    """``text`` with every known secret value replaced by ``***``."""
    with _KNOWN_LOCK:
        known = sorted(_KNOWN_SECRETS, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class Secret:
    """A secret string: ``repr``, ``str`` and formatting give ``***``; :meth:`reveal` gives
    the value to the one place that sends it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise TypeError("a Secret wraps a str")
        self._value = value
        register_secret_text(value)

    @classmethod
    def resolve(
        cls, value: str | Secret | None = None, *, env: str | None = None, key: str,
        environ: Mapping[str, str] | None = None,
    ) -> Secret:
        """The secret given directly, else the one in environment variable ``env``.

        Raises :class:`ConfigError` naming ``key`` (and the variable, never its value).
        """
        if value is not None and env is not None:
            raise ConfigError(key, "give the value or the environment variable, not both")
        if value is not None:
            secret = value if isinstance(value, Secret) else cls(value)
        elif env is not None:
            found = (os.environ if environ is None else environ).get(env)
            if not found:
                raise ConfigError(key, f"environment variable {env} is not set")
            secret = cls(found)
        else:
            raise ConfigError(key, "is required (a value or an environment variable name)")
        if not secret.reveal().strip():
            raise ConfigError(key, "is empty")
        return secret

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret is not pickled")
