"""Two ``serve`` processes on one Redis (``--state-redis``): one notification, not two."""

from __future__ import annotations

import functools
import json
import re
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import redis

from stem_observe.sources.stem.simulator import StemSimulator
from tests.integration.test_serve_alerting import RULES
from tests.support.process import Running
from tests.support.recording_server import RecordingServer
from tests.support.wait import wait_for


def serve(redis_url: str, rules: Path, hook_url: str, workdir: Path, name: str) -> Running:
    return Running(["serve", "--broker", redis_url, "--port", "0", "--poll-interval", "0.2s",
                    "--discover-interval", "0.2s", "--rules", str(rules), "--tick", "0.2s",
                    "--state-redis", redis_url],
                   workdir, env={"TEST_WEBHOOK_URL": hook_url}, name=name)


def ready(base: str) -> bool:
    return bool(urllib.request.urlopen(f"{base}/readyz").status == 200)


def ticks(base: str) -> float:
    body = urllib.request.urlopen(f"{base}/metrics").read().decode()
    match = re.search(r"^stem_observe_rule_evaluation_seconds_count (\S+)", body, re.M)
    return float(match.group(1)) if match else 0.0


def test_two_serve_processes_on_one_redis_send_one_notification(
    redis_url: str, tmp_path: Path,
) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    with RecordingServer() as hook, ExitStack() as stack:
        running = []
        for name in ("a", "b"):
            instance = serve(redis_url, rules, hook.url + "/hook", tmp_path, name)
            stack.callback(instance.stop)
            running.append(instance)
        instances = [instance.base_url() for instance in running]
        for base in instances:
            wait_for(functools.partial(ready, base), message="ready")
        client = redis.Redis.from_url(redis_url)
        simulator = StemSimulator(client)
        for _ in range(3):
            simulator.run_task("payments.charge", queue="payments", worker_id="w1",
                               outcome="fail", error_type="CardDeclined")
        client.close()

        def both_fired() -> bool:
            return all('"firing"' in urllib.request.urlopen(f"{base}/api/alerts").read()
                       .decode() for base in instances)

        wait_for(both_fired, timeout_s=30, message="the alert firing on both instances")
        wait_for(hook.received, timeout_s=30, message="a notification")
        # Both keep evaluating and flushing the group: let each run ten more ticks.
        start = [ticks(s) for s in instances]
        wait_for(lambda: all(ticks(s) >= t + 10 for s, t in zip(instances, start, strict=True)),
                 timeout_s=30, message="ten more ticks on both instances")
        firing = [r for r in hook.received() if json.loads(r.body)["status"] == "firing"]
        assert len(firing) == 1, [json.loads(r.body)["groupKey"] for r in firing]
    for instance in running:
        assert instance.process.returncode == 0
