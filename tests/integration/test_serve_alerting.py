"""``stem-observe serve --rules``: Stem dead letters and failures fire a real alert into a
local webhook receiver; ``/api/alerts`` and ``/api/silences`` answer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import redis

from stem_observe.sources.stem.simulator import StemSimulator
from tests.support.process import Running, ready
from tests.support.recording_server import RecordingServer
from tests.support.wait import wait_for

RULES = """
rules:
  - name: DeadLetters
    kind: rate
    signals: [task-dead-lettered]
    group_by: [queue]
    window: 1m
    threshold: 1
    for: 0s
    keep_firing_for: 0s
    severity: error
    annotations:
      summary: "{value} dead letters on queue {queue} in {window}"
routing:
  receivers:
    - name: hook
      kind: webhook
      url_env: TEST_WEBHOOK_URL
  route:
    receiver: hook
    group_by: [alertname, queue]
    group_wait: 0s
    group_interval: 1s
    repeat_interval: 4h
    send_resolved: true
"""


def test_serve_fires_a_dead_letter_alert_into_a_webhook(redis_url: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    with RecordingServer() as hook:
        serve = Running(["serve", "--broker", redis_url, "--port", "0", "--poll-interval", "0.2s",
                         "--discover-interval", "0.2s", "--rules", str(rules), "--tick", "0.2s"],
                        tmp_path, env={"TEST_WEBHOOK_URL": hook.url + "/hook"})
        try:
            base = serve.base_url()
            wait_for(lambda: ready(base),
                     message="ready")
            client = redis.Redis.from_url(redis_url)
            simulator = StemSimulator(client)
            for _ in range(3):
                simulator.run_task("payments.charge", queue="payments", worker_id="w1",
                                   outcome="fail", error_type="CardDeclined")
            client.close()
            request = wait_for(lambda: next(
                (r for r in hook.received() if json.loads(r.body)["status"] == "firing"), None),
                timeout_s=30, message="a firing notification")
            payload = json.loads(request.body)
            (alert,) = payload["alerts"]
            assert alert["labels"]["alertname"] == "DeadLetters"
            assert alert["labels"]["queue"] == "payments"
            assert "dead letters on queue payments" in alert["annotations"]["summary"]
            assert request.headers["webhook-id"]
            alerts = httpx.get(f"{base}/api/alerts", timeout=5).json()["alerts"]
            assert [a["name"] for a in alerts] == ["DeadLetters"]
            assert alerts[0]["state"] == "firing"
            created = httpx.post(f"{base}/api/silences", timeout=5, json={
                "matchers": ["queue = payments"], "duration": "10m", "comment": "fixing"})
            assert created.status_code == 201
            silence_id = created.json()["id"]
            listed = httpx.get(f"{base}/api/silences", timeout=5).json()["silences"]
            assert [s["id"] for s in listed] == [silence_id]
            assert "TEST_WEBHOOK_URL" not in httpx.get(f"{base}/api/alerts", timeout=5).text
            assert hook.url not in httpx.get(f"{base}/api/alerts", timeout=5).text
            bad = httpx.post(f"{base}/api/silences", timeout=5, json={"matchers": []})
            assert bad.status_code == 400
        finally:
            returncode = serve.stop()
    assert returncode == 0, serve.stderr_path.read_text()


def test_rules_check_names_file_line_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("rules:\n  - name: x\n    kind: rate\n    window: soon\n")
    result = subprocess.run([sys.executable, "-m", "stem_observe", "rules", "check", str(bad)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert f"{bad}:4: rules[0].window" in result.stderr
    good = subprocess.run([sys.executable, "-m", "stem_observe", "rules", "check",
                           "alerts/rules"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("OK: 9 rule(s)")
