"""``stem-observe demo`` runs the whole pipeline as a user would start it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.support.process import Running
from tests.support.wait import wait_for

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def scrape(url: str) -> str:
    request = urllib.request.Request(url, headers={"Accept": OPENMETRICS})
    with urllib.request.urlopen(request, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def test_demo_serves_metrics_with_retries_dead_letters_and_exemplars(tmp_path: Path) -> None:
    demo = Running(["demo", "--duration", "120s", "--port", "0", "--rate", "80",
                    "--seed", "7"], tmp_path, stop_signal=signal.SIGINT)
    try:
        url = demo.wait_line(r"metrics : (http://\S+/metrics)").group(1)

        def interesting() -> str | None:
            body = scrape(url)
            dead = re.search(
                r'^stem_tasks_dead_lettered_total\{[^}]*queue="payments"[^}]*\} (\d+)', body, re.M)
            retried = re.search(
                r'^stem_tasks_retried_total\{queue="emails",task="emails.send"\} (\d+)', body, re.M)
            dlq = re.search(r'^stem_dlq_depth\{[^}]*queue="payments"[^}]*\} [1-9]', body, re.M)
            if dead and retried and dlq and float(dead.group(1)) and float(retried.group(1)):
                return body
            return None

        body = wait_for(interesting, timeout_s=60, interval_s=0.5,
                        message="retries and dead letters on /metrics")
        assert re.search(r'stem_tasks_failed_total\{[^}]*\} \d+\.\d+ # \{task_id="[0-9a-f-]{36}",'
                         r'trace_id="[0-9a-f]{32}"\}', body)
        assert re.search(r'^stem_worker_up\{namespace="stem",worker="demo-worker-1"\} 1\.0',
                         body, re.M)
        assert re.search(r"^stem_task_queue_wait_seconds_count\{", body, re.M)
    finally:
        returncode = demo.stop()
    output = demo.output
    assert returncode == 0, (output, demo.stderr_path.read_text())
    assert "spans by name:" in output
    assert re.search(r"failed task [0-9a-f-]{36} -> trace [0-9a-f]{32}", output)


def test_demo_rejects_a_bad_duration() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stem_observe", "demo", "--duration", "soon"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert "duration" in result.stderr
    assert "soon" in result.stderr


def test_demo_ends_by_itself_after_its_duration(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stem_observe", "demo", "--duration", "2s", "--port", "0",
         "--rate", "50"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "spans by name:" in result.stdout


def test_demo_fires_and_resolves_alerts_and_prints_what_slack_would_get() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stem_observe", "demo", "--duration", "55s", "--port", "0",
         "--rate", "60", "--seed", "2"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"\[FIRING:1\] DeadLetterGrowth .*queue=\"payments\"", out), out
    assert "Slack would receive:" in out
    assert "stem-observe dlq list --queue payments" in out
    assert "recovered" in out
    assert re.search(r"\[RESOLVED\] \w+", out), out
