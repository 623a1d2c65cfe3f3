"""Helpers shared by the subcommands: argument types and output."""

from __future__ import annotations

import argparse

from stem_observe.config import to_seconds
from stem_observe.errors import StemObserveError

__all__ = ["duration"]


def duration(text: str) -> float:
    """An argparse type: ``30s``, ``500ms``, ``5m`` or seconds, as seconds."""
    try:
        return to_seconds(text, key="duration")
    except StemObserveError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
