"""A real ``prometheus`` and ``prometheus-alertmanager`` on free ports, with query helpers.

Both run from a temporary directory (configuration, storage, log) and are stopped with
SIGTERM, then killed after a grace period. Nothing here depends on a service the Debian
packages may have started: each process gets its own ports, storage and configuration.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import yaml

from tests.support.redis_server import free_port


def _binary(*names: str, package: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    raise RuntimeError(
        f"{' or '.join(names)} not found on PATH; install it (apt-get install {package}) "
        "or run the suite through scripts/test.sh, which does"
    )


def promtool() -> str:
    """The path of ``promtool`` (Prometheus' rule checker and rule test runner)."""
    return _binary("promtool", package="prometheus")


def check_rules(paths: Sequence[Path]) -> str | None:
    """``promtool check rules`` on ``paths``: ``None`` when it accepts every file, else what
    it said."""
    if not paths:
        return None
    result = subprocess.run([promtool(), "check", "rules", *map(str, paths)],
                            capture_output=True, text=True, timeout=60, check=False)
    return None if result.returncode == 0 else (result.stdout + result.stderr).strip()


def run_rule_tests(path: Path) -> str | None:
    """``promtool test rules`` on the test file ``path``: ``None`` when every test passes,
    else the failures."""
    result = subprocess.run([promtool(), "test", "rules", path.name], cwd=path.parent,
                            capture_output=True, text=True, timeout=60, check=False)
    return None if result.returncode == 0 else (result.stdout + result.stderr).strip()


class _Server:
    """A server process with an HTTP API, ready when ``GET /-/ready`` answers 200."""

    name = "server"

    def __init__(self, workdir: Path, binary: str) -> None:
        self.workdir = workdir
        self.binary = binary
        self.port = free_port()
        self.log_path = workdir / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(base_url=self.url, timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arguments(self) -> list[str]:
        raise NotImplementedError

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:] if self.log_path.exists() else ""

    def start(self, timeout_s: float = 30.0) -> Self:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.binary, *self.arguments()], cwd=self.workdir,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._http.get("/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self._process.poll() is not None:
                returncode = self._process.returncode
                self.stop()
                raise RuntimeError(f"{self.name} exited with {returncode}:\n{self.log()}")
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(f"{self.name} was not ready within {timeout_s}s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._http.close()

    def get(self, path: str, **params: str | float) -> Any:
        """``GET`` an API path; the ``data`` of a Prometheus-style envelope, else the body."""
        response = self._http.get(path, params=params)
        if response.status_code >= 400:
            raise AssertionError(
                f"{self.name} {path} {params} answered {response.status_code}: {response.text}")
        body = response.json()
        if isinstance(body, dict) and "status" in body and "data" in body:
            return body["data"]
        return body

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class Prometheus(_Server):
    """``prometheus`` scraping ``targets`` every ``interval_s`` (OpenMetrics is its preferred
    format, so exemplars are kept with ``exemplar-storage``), evaluating ``rule_files`` as
    often and sending alerts to ``alertmanager`` (a ``host:port``)."""

    name = "prometheus"

    def __init__(self, workdir: Path, *, targets: Sequence[str], rule_files: Sequence[Path] = (),
                 alertmanager: str | None = None, interval_s: float = 1.0,
                 job: str = "stem-observe") -> None:
        super().__init__(workdir, _binary("prometheus", package="prometheus"))
        interval = f"{round(interval_s * 1000)}ms"
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval,
                       "scrape_timeout": interval},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
        }
        if alertmanager is not None:
            config["alerting"] = {"alertmanagers": [
                {"static_configs": [{"targets": [alertmanager]}]}]}
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def arguments(self) -> list[str]:
        return [
            f"--config.file={self.config_path}", f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--enable-feature=exemplar-storage",
            "--rules.alert.resend-delay=1s", "--log.level=warn",
        ]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) ``expr`` evaluates to now (or at
        the Unix time ``at``)."""
        params: dict[str, str | float] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self.get("/api/v1/query", **params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def series(self, match: str, *, start: float, end: float) -> list[dict[str, str]]:
        """``/api/v1/series``: the label sets of the series ``match`` selects in the range."""
        series: list[dict[str, str]] = self.get("/api/v1/series", start=start, end=end,
                                                **{"match[]": match})
        return series

    def label_values(self, label: str, match: str, *, start: float, end: float) -> list[str]:
        """``/api/v1/label/<label>/values`` of the series ``match`` selects in the range:
        what Grafana's ``label_values(match, label)`` variable query asks."""
        values: list[str] = self.get(f"/api/v1/label/{label}/values", start=start, end=end,
                                     **{"match[]": match})
        return values

    def query_exemplars(self, expr: str, *, start: float, end: float) -> list[dict[str, Any]]:
        """``/api/v1/query_exemplars``: series with their exemplars between start and end."""
        result: list[dict[str, Any]] = self.get(
            "/api/v1/query_exemplars", query=expr, start=start, end=end)
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts the rules hold now (pending and firing)."""
        alerts: list[dict[str, Any]] = self.get("/api/v1/alerts")["alerts"]
        return alerts

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self.get("/api/v1/rules")["groups"]
        return groups

    def targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self.get("/api/v1/targets")["activeTargets"]
        return targets


class Alertmanager(_Server):
    """``prometheus-alertmanager`` running ``config`` (YAML text), clustering off."""

    name = "alertmanager"

    def __init__(self, workdir: Path, config: str) -> None:
        super().__init__(workdir, _binary("prometheus-alertmanager", "alertmanager",
                                          package="prometheus-alertmanager"))
        self.config_path = workdir / "alertmanager.yml"
        self.config_path.write_text(config)

    @property
    def address(self) -> str:
        """``host:port``, as Prometheus' alerting configuration names it."""
        return f"127.0.0.1:{self.port}"

    def arguments(self) -> list[str]:
        return [
            f"--config.file={self.config_path}", f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=",
            "--log.level=warn",
        ]

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds (``/api/v2/alerts``)."""
        alerts: list[dict[str, Any]] = self.get("/api/v2/alerts")
        return alerts
