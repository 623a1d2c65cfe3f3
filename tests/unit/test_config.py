"""Settings: argument over environment over default; errors name the bad key."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stem_observe.config import Settings, to_seconds
from stem_observe.errors import ConfigError


@pytest.mark.parametrize(("value", "seconds"), [
    ("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("2d", 172800.0),
    ("10", 10.0), (" 1.5s ", 1.5), (7, 7.0), (0.25, 0.25), (timedelta(minutes=2), 120.0),
])
def test_durations_normalise_to_seconds(value: float | str | timedelta, seconds: float) -> None:
    assert to_seconds(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", "5 minutes", "-1s", "", "1e3s", True, -3])
def test_bad_durations_name_the_key(value: object) -> None:
    with pytest.raises(ConfigError) as raised:
        to_seconds(value, key="STEM_OBSERVE_X")  # type: ignore[arg-type]
    assert raised.value.key == "STEM_OBSERVE_X"
    assert "STEM_OBSERVE_X" in str(raised.value)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["ms", "s", "m", "h"]))
def test_duration_strings_round_trip(amount: int, unit: str) -> None:
    factor = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    assert to_seconds(f"{amount}{unit}") == pytest.approx(amount * factor)


def test_argument_beats_environment_beats_default() -> None:
    env = {"STEM_OBSERVE_MAX_TASK_NAMES": "42", "STEM_OBSERVE_METRICS_PROFILE": "celery-exporter"}
    settings = Settings.resolve(env, metrics_profile="stem")
    assert settings.max_task_names == 42
    assert settings.metrics_profile == "stem"
    assert Settings.resolve({}).max_task_names == Settings().max_task_names


def test_environment_values_are_parsed() -> None:
    settings = Settings.resolve({
        "STEM_OBSERVE_EXEMPLARS": "off",
        "STEM_OBSERVE_DURATION_BUCKETS": "0.1,1,10",
        "STEM_OBSERVE_TRACE_SAMPLE_RATIO": "0.25",
        "STEM_OBSERVE_OTLP_ENDPOINT": "http://collector:4318",
    })
    assert settings.exemplars is False
    assert settings.duration_buckets == (0.1, 1.0, 10.0)
    assert settings.trace_sample_ratio == 0.25
    assert settings.otlp_endpoint == "http://collector:4318"


@pytest.mark.parametrize(("env", "key"), [
    ({"STEM_OBSERVE_MAX_TASK_NAMES": "many"}, "STEM_OBSERVE_MAX_TASK_NAMES"),
    ({"STEM_OBSERVE_EXEMPLARS": "maybe"}, "STEM_OBSERVE_EXEMPLARS"),
    ({"STEM_OBSERVE_METRICS_PROFILE": "statsd"}, "metrics_profile"),
    ({"STEM_OBSERVE_DURATION_BUCKETS": "1,0.5"}, "duration_buckets"),
    ({"STEM_OBSERVE_MAX_QUEUES": "0"}, "max_queues"),
    ({"STEM_OBSERVE_TRACE_SAMPLE_RATIO": "2"}, "trace_sample_ratio"),
])
def test_invalid_settings_name_the_setting(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.resolve(env)
    assert raised.value.key == key


def test_unknown_argument_is_rejected() -> None:
    with pytest.raises(ConfigError, match="max_tasks: unknown setting"):
        Settings.resolve({}, max_tasks=3)
