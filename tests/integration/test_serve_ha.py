"""Two ``serve`` processes on one Redis (``--state-redis``): one notification, not two."""

from __future__ import annotations

import functools
import json
import re
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import redis

from stem_observe.sources.stem.simulator import StemSimulator
from tests.integration.test_serve_alerting import RULES
from tests.support.fault_server import FaultServer, Reply
from tests.support.process import Running, ready
from tests.support.recording_server import RecordingServer
from tests.support.wait import wait_for


def serve(redis_url: str, rules: Path, hook_url: str, workdir: Path, name: str,
          *extra: str) -> Running:
    return Running(["serve", "--broker", redis_url, "--port", "0", "--poll-interval", "0.2s",
                    "--discover-interval", "0.2s", "--rules", str(rules), "--tick", "0.2s",
                    "--state-redis", redis_url, *extra],
                   workdir, env={"TEST_WEBHOOK_URL": hook_url}, name=name)


def metric(base: str, name: str) -> float:
    body = urllib.request.urlopen(f"{base}/metrics").read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)", body, re.M)
    return float(match.group(1)) if match else 0.0


LEADER = 'stem_observe_outbox_leader{receiver="hook"}'


def dead_letters(redis_url: str, count: int = 3) -> None:
    client = redis.Redis.from_url(redis_url)
    simulator = StemSimulator(client)
    for _ in range(count):
        simulator.run_task("payments.charge", queue="payments", worker_id="w1",
                           outcome="fail", error_type="CardDeclined")
    client.close()


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
        dead_letters(redis_url)

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


def start_pair(stack: ExitStack, redis_url: str, rules: Path, hook: FaultServer,
               workdir: Path) -> tuple[list[Running], list[str]]:
    running = []
    for name in ("a", "b"):
        instance = serve(redis_url, rules, hook.url + "/hook", workdir, name,
                         "--claim-timeout", "2s")
        stack.callback(instance.stop)
        running.append(instance)
    bases = [instance.base_url() for instance in running]
    for base in bases:
        wait_for(functools.partial(ready, base), message="ready")
    return running, bases


def the_leader(bases: list[str]) -> int:
    wait_for(lambda: any(metric(b, LEADER) == 1 for b in bases),
             message="an outbox leader")
    return next(i for i, b in enumerate(bases) if metric(b, LEADER) == 1)


def test_a_serve_process_killed_mid_send_is_taken_over_by_the_other(
    redis_url: str, tmp_path: Path,
) -> None:
    """Rows 24 and 25 with real processes: the sending instance is SIGKILLed while its
    request hangs unanswered; the other takes the entry over after the claim timeout and
    delivers it: one 2xx, the same ``webhook-id``, nothing left pending."""
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    with FaultServer(Reply(hang=True), hang_limit_s=20.0) as hook, ExitStack() as stack:
        running, bases = start_pair(stack, redis_url, rules, hook, tmp_path)
        sender = the_leader(bases)
        dead_letters(redis_url)
        wait_for(lambda: len(hook.requests()) == 1, timeout_s=30, message="the first request")
        running[sender].process.kill()
        running[sender].process.wait()
        other = bases[1 - sender]
        wait_for(lambda: len(hook.answered()) == 1, timeout_s=30,
                 message="the notification sent by the other instance")
        first, second = hook.requests()
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert metric(other, 'stem_observe_outbox_reclaimed_total{receiver="hook"}') == 1.0
        client = redis.Redis.from_url(redis_url)
        wait_for(lambda: client.xlen("stem_observe:outbox:q:hook") == 0, message="acknowledged")
        client.close()
        start = ticks(other)
        wait_for(lambda: ticks(other) >= start + 10, timeout_s=30, message="ten more ticks")
        assert len(hook.requests()) == 2
    assert running[1 - sender].process.returncode == 0


def test_a_serve_process_stopped_during_back_off_hands_over_at_once(
    redis_url: str, tmp_path: Path,
) -> None:
    """Row 31 with real processes: SIGTERM while the sender waits to retry a 503 (asked to
    wait two minutes); the
    entry is handed back and the other instance delivers it long before any claim timeout
    (here 1 h): one 2xx after the one failed attempt."""
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    busy = Reply(status=503, headers={"Retry-After": "120"})
    with FaultServer(busy) as hook, ExitStack() as stack:
        running = []
        for name in ("a", "b"):
            instance = serve(redis_url, rules, hook.url + "/hook", tmp_path, name,
                             "--claim-timeout", "1h")
            stack.callback(instance.stop)
            running.append(instance)
        bases = [instance.base_url() for instance in running]
        for base in bases:
            wait_for(functools.partial(ready, base), message="ready")
        sender = the_leader(bases)
        dead_letters(redis_url)
        wait_for(lambda: len(hook.requests()) == 1, timeout_s=30, message="the 503")
        assert running[sender].stop() == 0  # SIGTERM
        wait_for(lambda: len(hook.answered()) == 1, timeout_s=30,
                 message="the other instance's delivery")
        assert [r.answered for r in hook.requests()] == [503, 200]
