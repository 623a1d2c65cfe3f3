"""Two ``serve`` processes on one Redis (``--state-redis``): one notification, not two."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import redis

from stem_observe.sources.stem.simulator import StemSimulator
from tests.integration.test_serve_alerting import RULES
from tests.support.recording_server import RecordingServer
from tests.support.wait import wait_for


class Serve:
    def __init__(self, redis_url: str, rules: Path, hook_url: str, log: Path) -> None:
        self.stderr = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stem_observe", "serve", "--broker", redis_url,
             "--port", "0", "--poll-interval", "0.2s", "--discover-interval", "0.2s",
             "--rules", str(rules), "--tick", "0.2s", "--state-redis", redis_url],
            stdout=subprocess.PIPE, stderr=self.stderr, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "TEST_WEBHOOK_URL": hook_url},
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(
            target=lambda: self.lines.extend(self.process.stdout or []), daemon=True)
        self.reader.start()
        banner = wait_for(lambda: next((x for x in list(self.lines) if "metrics at" in x),
                                       None), timeout_s=30, message="the banner")
        match = re.search(r"(http://\S+)/metrics", banner)
        assert match
        self.base = match.group(1)

    def close(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.reader.join(timeout=5)
            assert self.process.stdout is not None
            self.process.stdout.close()
            self.stderr.close()
        return self.process.returncode


def ready(serve: Serve) -> bool:
    return bool(urllib.request.urlopen(f"{serve.base}/readyz").status == 200)


def ticks(serve: Serve) -> float:
    body = urllib.request.urlopen(f"{serve.base}/metrics").read().decode()
    match = re.search(r"^stem_observe_rule_evaluation_seconds_count (\S+)", body, re.M)
    return float(match.group(1)) if match else 0.0


def test_two_serve_processes_on_one_redis_send_one_notification(
    redis_url: str, tmp_path: Path,
) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    with RecordingServer() as hook, ExitStack() as stack:
        instances = []
        for name in ("a", "b"):
            serve = Serve(redis_url, rules, hook.url + "/hook", tmp_path / f"{name}.log")
            stack.callback(serve.close)
            instances.append(serve)
        for serve in instances:
            wait_for(functools.partial(ready, serve), message="ready")
        client = redis.Redis.from_url(redis_url)
        simulator = StemSimulator(client)
        for _ in range(3):
            simulator.run_task("payments.charge", queue="payments", worker_id="w1",
                               outcome="fail", error_type="CardDeclined")
        client.close()

        def both_fired() -> bool:
            return all('"firing"' in urllib.request.urlopen(f"{s.base}/api/alerts").read()
                       .decode() for s in instances)

        wait_for(both_fired, timeout_s=30, message="the alert firing on both instances")
        wait_for(hook.received, timeout_s=30, message="a notification")
        # Both keep evaluating and flushing the group: let each run ten more ticks.
        start = [ticks(s) for s in instances]
        wait_for(lambda: all(ticks(s) >= t + 10 for s, t in zip(instances, start, strict=True)),
                 timeout_s=30, message="ten more ticks on both instances")
        firing = [r for r in hook.received() if json.loads(r.body)["status"] == "firing"]
        assert len(firing) == 1, [json.loads(r.body)["groupKey"] for r in firing]
    for serve in instances:
        assert serve.process.returncode == 0
