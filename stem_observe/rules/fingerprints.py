"""Error fingerprints: what a poison-pill rule counts as "the same failure".

A fingerprint is ``"<error type>: <message>"`` with what varies between occurrences of one
failure (numbers, ids, hashes) collapsed, so one bug shows up as one fingerprint.
"""

from __future__ import annotations

import re
from typing import Final

from stem_observe import events as ev
from stem_observe.rules.signals_map import error_of

__all__ = ["MAX_FINGERPRINT", "event_fingerprint", "fingerprint"]

_UUID_RE: Final = re.compile(r"(?<![0-9a-zA-Z])[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                             r"[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![0-9a-fA-F])")
_HEX_RE: Final = re.compile(r"(?<![0-9a-zA-Z])0[xX][0-9a-fA-F]+(?![0-9a-fA-F])")
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9]*[0-9][A-Za-z0-9]*")
_DIGITS_RE: Final = re.compile(r"[0-9]+")
_QUANTITY_RE: Final = re.compile(r"[0-9]+([A-Za-z]{0,3})\Z")
_SPACE_RE: Final = re.compile(r"\s+")
MAX_FINGERPRINT: Final = 240


def _token(match: re.Match[str]) -> str:
    token = match.group()
    unit = _QUANTITY_RE.match(token)
    if unit is not None:
        return "<n>" + unit.group(1)
    if len(token) >= 8:
        return "<id>"
    return _DIGITS_RE.sub("<n>", token)


def fingerprint(error_type: str, message: str) -> str:
    """``"<error type>: <message>"`` with what varies between occurrences collapsed.

    Numbers become ``<n>``, with a unit of up to three letters kept (``30s``, ``512MB``);
    UUIDs, ``0x…`` hex and other words of 8 or more letters and digits that contain a digit
    (hashes, ULIDs, ``ORD000123X``) become ``<id>``; digit runs in shorter words become
    ``<n>`` (``user_42`` → ``user_<n>``, ``v2`` → ``v<n>``); whitespace collapses. So
    ``Timeout after 30s for order 7f3a9c2e11`` and ``Timeout after 45s for order
    0b41d2e9aa`` share one fingerprint. (A hex id that happens to be all digits reads
    ``<n>``.) At most :data:`MAX_FINGERPRINT` characters.
    """
    text = _HEX_RE.sub("<id>", _UUID_RE.sub("<id>", message))
    text = _SPACE_RE.sub(" ", _TOKEN_RE.sub(_token, text)).strip()
    kind = _SPACE_RE.sub(" ", error_type).strip()[:100] or "unknown"
    return f"{kind}: {text}"[:MAX_FINGERPRINT] if text else kind


def event_fingerprint(event: ev.Event) -> str | None:
    """The fingerprint of a failure, retry or dead letter (see :func:`~.model.error_of`)."""
    error = error_of(event)
    return None if error is None else fingerprint(*error)
