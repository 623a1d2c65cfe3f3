"""Settings, resolved once: explicit argument, then environment variable, then default.

Every setting has an environment variable ``STEM_OBSERVE_<NAME>``; errors name the
argument or variable that was wrong. Durations accept seconds (``30``, ``0.5``),
``timedelta`` or strings such as ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any, Final, Literal, cast

from stem_observe.errors import ConfigError

__all__ = [
    "DEFAULT_DURATION_BUCKETS",
    "DEFAULT_WAIT_BUCKETS",
    "MetricsProfile",
    "Settings",
    "to_seconds",
]

MetricsProfile = Literal["stem", "celery-exporter"]
_PROFILES: Final = ("stem", "celery-exporter")

DEFAULT_DURATION_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)
DEFAULT_WAIT_BUCKETS: Final = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})


def to_seconds(value: float | int | str | timedelta, *, key: str = "duration") -> float:
    """Normalise a duration to seconds; ``key`` names the setting in the error."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ConfigError(key, f"expected a duration, got {value!r}")
    elif isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ConfigError(key, "expected a duration, got a number too large") from None
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ConfigError(key, f"expected a duration such as 30s, 500ms or 5m, got {value!r}")
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    else:
        raise ConfigError(key, f"expected a duration, got {type(value).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(key, f"must be a finite, non-negative duration, got {value!r}")
    return seconds


@dataclass(frozen=True, slots=True)
class Settings:
    """The bridge's settings. Build with :meth:`resolve` to apply the environment."""

    metrics_profile: MetricsProfile = "stem"
    """``stem`` (Stem-compatible names) or ``celery-exporter`` (celery-exporter's names)."""
    max_task_names: int = 500
    """Distinct task names kept as label values; later ones fold into ``__overflow__``."""
    max_queues: int = 1000
    max_workers: int = 500
    max_label_values: int = 200
    """Limit for other labels: error type, dead-letter reason, schedule entry."""
    exemplars: bool = True
    """Attach ``task_id`` / ``trace_id`` exemplars to counters and histograms."""
    duration_buckets: tuple[float, ...] = DEFAULT_DURATION_BUCKETS
    queue_wait_buckets: tuple[float, ...] = DEFAULT_WAIT_BUCKETS
    max_open_spans: int = 10_000
    """Spans open at once (tasks started and not finished); the oldest is ended past this."""
    messaging_system: str = "stem"
    """Value of the ``messaging.system`` span attribute."""
    service_name: str = "stem-observe"
    trace_sample_ratio: float = 1.0
    """Head sampling for a tracer provider the bridge builds itself (root spans only)."""
    otlp_endpoint: str | None = None
    """OTLP/HTTP traces endpoint for a tracer provider the bridge builds (``otlp`` extra)."""
    worker_heartbeat_interval_s: float = 10.0
    """A worker's heartbeat interval when its heartbeats do not say (Stem's default)."""
    worker_stale_factor: float = 3.0
    """A worker is down once its last heartbeat is older than this many intervals."""
    worker_forget_after_s: float = 600.0
    """A worker unseen for this long loses its series and its label slot."""
    http_host: str = "127.0.0.1"
    http_port: int = 9464

    @classmethod
    def resolve(
        cls, env: Mapping[str, str] | None = None, /, **overrides: Any
    ) -> Settings:
        """Settings from ``overrides``, then ``STEM_OBSERVE_*`` variables, then defaults."""
        environ = os.environ if env is None else env
        known = {f.name: f for f in fields(cls)}
        for key in overrides:
            if key not in known:
                raise ConfigError(key, "unknown setting")
        values: dict[str, Any] = {}
        for name, f in known.items():
            seconds = name.endswith("_s")
            if name in overrides and overrides[name] is not None:
                values[name] = _coerce(name, overrides[name], f.default, seconds)
                continue
            var = f"STEM_OBSERVE_{name.upper()}"
            raw = environ.get(var)
            if raw is not None:
                values[name] = _coerce(var, raw, f.default, seconds)
        return cls(**values)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid setting."""
        if self.metrics_profile not in _PROFILES:
            raise ConfigError(
                "metrics_profile",
                f"must be one of {', '.join(_PROFILES)}, got {self.metrics_profile!r}",
            )
        for name in ("max_task_names", "max_queues", "max_workers", "max_label_values",
                     "max_open_spans"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1")
        for name in ("duration_buckets", "queue_wait_buckets"):
            buckets = getattr(self, name)
            if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] <= 0:
                raise ConfigError(name, "must be positive, strictly increasing numbers")
        for name in ("worker_heartbeat_interval_s", "worker_stale_factor",
                     "worker_forget_after_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(name, "must be positive")
        if not 0.0 <= self.trace_sample_ratio <= 1.0:
            raise ConfigError("trace_sample_ratio", "must be between 0 and 1")
        if not 0 <= self.http_port <= 65535:
            raise ConfigError("http_port", "must be between 0 and 65535")


def _coerce(key: str, value: object, default: object, seconds: bool = False) -> object:
    if seconds:
        return to_seconds(cast(Any, value), key=key)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if isinstance(default, int):
        try:
            return int(cast(Any, value))
        except (TypeError, ValueError):
            raise ConfigError(key, f"expected an integer, got {value!r}") from None
    if isinstance(default, float):
        try:
            return float(cast(Any, value))
        except (TypeError, ValueError):
            raise ConfigError(key, f"expected a number, got {value!r}") from None
    if isinstance(default, tuple):
        items: Sequence[object]
        items = value.split(",") if isinstance(value, str) else cast(Sequence[object], value)
        try:
            return tuple(float(cast(Any, item)) for item in items)
        except (TypeError, ValueError):
            raise ConfigError(key, f"expected comma-separated numbers, got {value!r}") from None
    if value == "":
        return None if default is None else value
    return str(value) if isinstance(value, str) else value
