"""Helpers shared by the subcommands: argument types, the connection options, password
masking and output (tables, ages, one JSON document)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from typing import Final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from stem_observe.config import to_seconds
from stem_observe.errors import StemObserveError

__all__ = [
    "age",
    "connection_options",
    "duration",
    "mask_url",
    "print_json",
    "scrub",
    "seconds",
    "table",
]

_MASK: Final = "***"


# --------------------------------------------------------------------------- arguments


def duration(text: str) -> float:
    """An argparse type: ``30s``, ``500ms``, ``5m`` or seconds, as seconds."""
    try:
        return to_seconds(text, key="duration")
    except StemObserveError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def connection_options(*, with_json: bool = True) -> argparse.ArgumentParser:
    """A parent parser with ``--broker``, ``--backend``, ``--namespace`` and
    ``--backend-namespace`` (resolved by ``_stem.resolve``), and ``--json`` if ``with_json``."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument("--broker", metavar="URL",
                       help="broker Redis URL (default: $STEM_BROKER_URL)")
    group.add_argument("--backend", metavar="URL",
                       help="result backend Redis URL (default: $STEM_RESULT_BACKEND_URL)")
    group.add_argument("--namespace", metavar="NS",
                       help="broker key namespace (default: $STEM_OBSERVE_NAMESPACE or stem)")
    group.add_argument("--backend-namespace", metavar="NS",
                       help="backend key namespace (default: "
                            "$STEM_OBSERVE_BACKEND_NAMESPACE or --namespace)")
    if with_json:
        common.add_argument("--json", action="store_true",
                            help="print one JSON document instead of a table")
    return common


# --------------------------------------------------------------------------- passwords


def mask_url(url: str) -> str:
    """``url`` with its password (userinfo, or a ``password`` query value) replaced by ``***``.

    A userinfo without ``:`` is masked whole: Stem sends it as the password.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}:{_MASK}@{hostport}" if sep else f"{_MASK}@{hostport}"
    query = parts.query
    if query:
        pairs = [(k, _MASK if k.lower() == "password" else v)
                 for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _secrets(url: str) -> set[str]:
    try:
        parts = urlsplit(url)
    except ValueError:
        return {url}
    found: set[str] = set()
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        user, sep, password = userinfo.partition(":")
        found.add(password if sep else user)
    found.update(v for k, v in parse_qsl(parts.query) if k.lower() == "password")
    return {s for secret in found if secret for s in (secret, unquote(secret))}


def scrub(text: str, urls: Sequence[str | None]) -> str:
    """``text`` without any password of ``urls`` (errors may quote what they were given)."""
    for url in urls:
        if url:
            for secret in sorted(_secrets(url), key=len, reverse=True):
                text = text.replace(secret, _MASK)
    return text


# --------------------------------------------------------------------------- output


def print_json(document: object) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]],
          right: frozenset[int] = frozenset()) -> Iterator[str]:
    """The lines of a ``|``-separated table; columns in ``right`` are right-aligned."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return " | ".join(cell.rjust(w) if i in right else cell.ljust(w)
                          for i, (cell, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    yield line(headers)
    yield "-+-".join("-" * w for w in widths)
    for row in rows:
        yield line(row)


def age(value_s: float | None) -> str:
    """An age for people: ``4.2s``, ``3m 5s``, ``2h 10m``, ``1d 3h`` (``-`` for none)."""
    if value_s is None:
        return "-"
    if value_s < 60:
        return f"{value_s:.1f}s"
    whole = int(value_s)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60}m"
    return f"{whole // 86400}d {whole % 86400 // 3600}h"


def seconds(value: float | None) -> float | None:
    """Seconds for JSON: rounded to milliseconds."""
    return None if value is None else round(value, 3)
