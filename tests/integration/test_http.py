"""``/metrics`` negotiates Prometheus text or OpenMetrics; ``/healthz`` answers."""

from __future__ import annotations

import gzip
import http.client
import json
from collections.abc import Iterator

import pytest

import stem_observe
from stem_observe import events as ev
from stem_observe.server import HttpServer, json_response
from tests.conftest import Installed

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@pytest.fixture
def server(installed: Installed) -> Iterator[HttpServer]:
    with HttpServer(registry=installed.registry, port=0) as running:
        yield running


def get(server: HttpServer, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_metrics_default_to_prometheus_text_without_exemplars(server: HttpServer) -> None:
    stem_observe.emit(ev.TaskSucceeded(task_id="t-http", task_name="a", runtime_s=0.1))
    stem_observe.emit(ev.TaskFailed(task_id="t-http", task_name="a", runtime_s=0.1))
    status, headers, body = get(server, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert 'stem_tasks_succeeded_total{queue="default",task="a"} 1.0' in text
    assert "t-http" not in text


def test_metrics_in_openmetrics_carry_exemplars(server: HttpServer) -> None:
    stem_observe.emit(ev.TaskFailed(task_id="t-http", task_name="a", runtime_s=0.1))
    status, headers, body = get(server, "/metrics", Accept=OPENMETRICS)
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    text = body.decode()
    assert '# {task_id="t-http"' in text
    assert text.rstrip().endswith("# EOF")


def test_metrics_are_gzipped_when_asked(server: HttpServer) -> None:
    status, headers, body = get(server, "/metrics", **{"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers.get("content-encoding") == "gzip"
    assert b"stem_tasks_started" in gzip.decompress(body)


def test_healthz_and_unknown_paths(server: HttpServer) -> None:
    status, headers, body = get(server, "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert headers["content-type"] == "application/json"
    status, _, body = get(server, "/nope")
    assert status == 404
    assert b"/nope" in body


def test_a_failing_route_answers_500_and_the_server_keeps_serving(server: HttpServer) -> None:
    def broken(headers: dict[str, str]) -> tuple[int, str, bytes]:
        raise RuntimeError("route bug")

    server.route("/broken", broken)
    assert get(server, "/broken")[0] == 500
    assert get(server, "/healthz")[0] == 200


def test_a_taken_port_raises_oserror(server: HttpServer) -> None:
    with pytest.raises(OSError, match="in use"):
        HttpServer(host=server.host, port=server.port).start()


def test_request_routes_get_method_query_and_body(server: HttpServer) -> None:
    from stem_observe.server import Request

    seen: list[Request] = []

    def echo(request: Request) -> tuple[int, str, bytes]:
        seen.append(request)
        return json_response(201, {"method": request.method})

    server.route_request("/api/echo", echo, methods=("POST", "DELETE"))
    connection = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        connection.request("POST", "/api/echo?x=1", body=b'{"a": 1}',
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        assert (response.status, json.loads(response.read())) == (201, {"method": "POST"})
        connection.request("GET", "/api/echo")
        response = connection.getresponse()
        assert response.status == 405
        response.read()
    finally:
        connection.close()
    (request,) = seen
    assert (request.query, request.body) == ({"x": "1"}, b'{"a": 1}')
