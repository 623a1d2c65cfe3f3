"""Annotation templates: text with ``{name}`` placeholders and nothing else.

A :class:`Template` parses once and renders without running code; :class:`Annotations`
holds an alert's templated texts. Which placeholders each kind of rule offers is
:data:`~stem_observe.rules.model.PLACEHOLDERS`; :func:`format_duration` writes durations
as the rules files do.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from dataclasses import field as dc_field
from typing import Final

__all__ = ["Annotations", "Template", "format_duration", "format_value"]

_PLACEHOLDER_RE: Final = re.compile(r"[a-z_][a-z0-9_]*\Z")


@dataclass(frozen=True, slots=True)
class Template:
    """Text with ``{name}`` placeholders; ``{{`` and ``}}`` are literal braces.

    Only plain lower-case names are placeholders: no attribute access, indexing, format
    specs or expressions, so rendering cannot run code. Raises ``ValueError`` on bad syntax;
    which names a rule may use is checked by the rule (:data:`.model.PLACEHOLDERS`).
    """

    text: str
    fields: tuple[str, ...] = dc_field(init=False, compare=False)
    """The placeholders used, in order of first use."""
    _parts: tuple[str, ...] = dc_field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        parts: list[str] = []
        literal: list[str] = []
        text, i = self.text, 0
        while i < len(text):
            char = text[i]
            if text.startswith("{{", i) or text.startswith("}}", i):
                literal.append(char)
                i += 2
            elif char == "{":
                end = text.find("}", i + 1)
                if end < 0:
                    raise ValueError(f"unclosed '{{' at column {i + 1} (write {{{{ for a brace)")
                name = text[i + 1:end]
                if not _PLACEHOLDER_RE.match(name):
                    raise ValueError(
                        f"{{{name}}} at column {i + 1} is not a placeholder: use a plain "
                        "name such as {queue} (write {{ and }} for literal braces)")
                parts += ["".join(literal), name]
                literal = []
                i = end + 1
            elif char == "}":
                raise ValueError(f"unmatched '}}' at column {i + 1} (write }}}} for a brace)")
            else:
                literal.append(char)
                i += 1
        parts.append("".join(literal))
        object.__setattr__(self, "_parts", tuple(parts))
        object.__setattr__(self, "fields", tuple(dict.fromkeys(parts[1::2])))

    def render(self, values: Mapping[str, object]) -> str:
        """The text with each placeholder replaced; a missing value renders empty.

        Numbers render briefly (``0.25``, ``1234``), sequences comma-separated. Values are
        inserted as they are: receivers escape for their own format.
        """
        parts = self._parts
        out = [parts[0]]
        for i in range(1, len(parts), 2):
            out += [format_value(values.get(parts[i])), parts[i + 1]]
        return "".join(out)


def format_duration(seconds: float) -> str:
    """``seconds`` as the rules files write durations: ``500ms``, ``90s`` → ``1m30s``, ``1h``.

    What an engine should pass for duration placeholders (``{window}``, ``{absent_for}``,
    ``{silent_for}``, ``{baseline_window}``).
    """
    if not math.isfinite(seconds) or seconds < 0:
        return str(seconds)
    if 0 < seconds < 1:
        return f"{round(seconds * 1000)}ms"
    parts: list[str] = []
    rest = round(seconds)
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size or (unit == "s" and not parts):
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


def format_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence):
        return ", ".join(format_value(item) for item in value)
    return str(value)


@dataclass(frozen=True, slots=True)
class Annotations:
    """The templated texts of an alert."""

    summary: Template | None = None
    description: Template | None = None
    runbook_url: Template | None = None
    dashboard_url: Template | None = None

    def items(self) -> Iterator[tuple[str, Template]]:
        """The annotations that are set, as (name, template)."""
        for f in fields(self):
            template = getattr(self, f.name)
            if template is not None:
                yield f.name, template

    def render(self, values: Mapping[str, object]) -> dict[str, str]:
        """Every set annotation rendered with ``values``."""
        return {name: template.render(values) for name, template in self.items()}
