"""``/api/silences`` answers bad input with 4xx, never 500, and never stores it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from stem_observe.commands._alerting import Alerting, start_alerting
from stem_observe.notify.recording import RecordingReceiver
from stem_observe.server import HttpServer

RULES = """
rules:
  - name: Retries
    kind: rate
    signals: [task-retry]
    group_by: [queue]
    window: 1m
    threshold: 5
routing:
  receivers:
    - name: console
      kind: console
  route:
    receiver: console
"""


@pytest.fixture
def api(tmp_path: Path) -> Iterator[str]:
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    server = HttpServer(port=0, registry=CollectorRegistry())
    alerting: Alerting = start_alerting(
        [str(rules)], server, registry=CollectorRegistry(), tick_s=0.5,
        receivers=[RecordingReceiver("console")])
    server.start()
    try:
        yield f"{server.url}/api/silences"
    finally:
        server.stop()
        alerting.stop()


@pytest.mark.parametrize("body", [
    b'{"matchers": ["queue = a"], "duration": ' + b"9" * 400 + b"}",  # int too big for float
    b"[" * 100_000,  # nesting deeper than the parser's recursion limit
    b'{"matchers": ["queue = a"], "duration": 1e300}',  # a silence that would never end
    b'{"matchers": ["queue = a"], "duration": -5}',
    b'{"matchers": [], "duration": "1h"}',
    b"not json",
    b'{"matchers": ["queue = \xff\xfe"], "duration": "1h"}',  # invalid UTF-8
    b'{"duration": "1h"}',  # no matchers
])
def test_bad_silences_are_refused_with_400_and_not_stored(api: str, body: bytes) -> None:
    response = httpx.post(api, content=body, timeout=10)
    assert response.status_code == 400, response.text
    assert httpx.get(api, timeout=5).json() == {"silences": []}


def test_a_body_over_the_size_limit_is_refused_with_413(api: str) -> None:
    """Matrix row 32: a 5 MB body is refused before it is read, and nothing is stored."""
    body = b'{"matchers": ["queue = a"], "comment": "' + b"x" * (5 << 20) + b'"}'
    response = httpx.post(api, content=body, timeout=30)
    assert response.status_code == 413
    assert httpx.get(api, timeout=5).json() == {"silences": []}


def test_a_good_silence_is_stored_listed_and_expired(api: str) -> None:
    created = httpx.post(api, json={"matchers": ["queue = emails"], "duration": "2h"},
                         timeout=5)
    assert created.status_code == 201
    silence_id = created.json()["id"]
    assert [s["id"] for s in httpx.get(api, timeout=5).json()["silences"]] == [silence_id]
    assert httpx.delete(api, params={"id": silence_id}, timeout=5).status_code == 200
    assert httpx.delete(api, params={"id": silence_id}, timeout=5).status_code == 404
