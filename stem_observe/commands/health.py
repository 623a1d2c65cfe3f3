"""``stem-observe health``: Stem's ``stem health`` for a Redis deployment, and more.

Like Stem's, it connects to the broker and the result backend; it also checks the Redis
version (``XINFO GROUPS`` reports ``lag`` from 7.0 on), keyspace notifications and how fresh
the stored worker heartbeats are. A table by default, one JSON document with ``--json``.
Exit status 1 when a check fails (a stale heartbeat only with ``--strict``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator, Sequence
from typing import Any, Final

import redis

from stem_observe.commands._common import (
    age,
    connection_options,
    duration,
    mask_url,
    print_json,
    scrub,
    seconds,
    table,
)
from stem_observe.commands._stem import Unreachable, connect, read_heartbeats, resolve
from stem_observe.sources.stem.wire import dart_iso

__all__ = ["register"]

_MIN_VERSION: Final = (7, 0)  # XINFO GROUPS reports ``lag`` from Redis 7.0 on


def register(commands: Any) -> None:
    health = commands.add_parser(
        "health", parents=[connection_options()],
        help="check broker, backend and worker heartbeats",
        description="Check that the broker and result backend answer, that the broker runs "
                    "Redis >= 7.0, whether keyspace notifications are on, and how fresh the "
                    "stored worker heartbeats are. Exit 1 when a check fails.",
    )
    health.add_argument("--stale-after", type=duration, default=30.0, metavar="DURATION",
                        help="a heartbeat older than this is stale (default: 30s)")
    health.add_argument("--strict", action="store_true",
                        help="fail (exit 1) when a worker's heartbeat is stale")
    health.add_argument("--skip-backend", action="store_true",
                        help="do not check the result backend")
    health.set_defaults(func=_health)


# --------------------------------------------------------------------------- checks


def _server_version(client: redis.Redis) -> str | None:
    try:
        info = client.info("server")
    except redis.ResponseError:
        return None
    version = info.get("redis_version")
    return None if version is None else str(version)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _notify_keyspace_events(client: redis.Redis) -> tuple[str, str | None]:
    """``on``/``off`` and the setting, or ``unknown`` when ``CONFIG GET`` is not allowed."""
    try:
        reply = client.config_get("notify-keyspace-events")
    except redis.ResponseError:
        return "unknown", None
    values = {(k.decode() if isinstance(k, bytes) else str(k)):
              (v.decode() if isinstance(v, bytes) else str(v)) for k, v in reply.items()}
    flags = values.get("notify-keyspace-events")
    if flags is None:
        return "unknown", None
    return ("on" if "K" in flags or "E" in flags else "off"), flags


def _check(component: str, url: str, *, needs_lag: bool,
           problems: list[str]) -> tuple[dict[str, Any], redis.Redis | None]:
    """Connect, ``PING``, read the version and the keyspace-notification setting."""
    result: dict[str, Any] = {"component": component, "url": mask_url(url)}
    client = connect(url, component)
    try:
        client.ping()
        version = _server_version(client)
        notifications, flags = _notify_keyspace_events(client)
    except redis.RedisError as exc:
        client.close()
        error = Unreachable(component, url, exc)
        result.update(status="error", message=str(error))
        problems.append(f"{component}: {error}")
        return result, None
    version_ok = None if version is None else _version_tuple(version) >= _MIN_VERSION
    if needs_lag and version_ok is False:
        problems.append(f"{component}: Redis {version} is older than 7.0 (no XINFO lag)")
    result.update(status="ok", message=f"Connected to {mask_url(url)}", redisVersion=version,
                  redisVersionOk=version_ok, keyspaceNotifications=notifications,
                  notifyKeyspaceEvents=flags)
    return result, client


# --------------------------------------------------------------------------- command


def _health(args: argparse.Namespace) -> int:
    target = resolve(args)
    problems: list[str] = []
    warnings: list[str] = []
    workers: list[dict[str, Any]] = []
    clients: list[redis.Redis] = []
    try:
        broker, broker_client = _check("broker", target.broker_url, needs_lag=True,
                                       problems=problems)
        clients.extend([broker_client] if broker_client else [])
        components = [broker]
        backend_client: redis.Redis | None = None
        if args.skip_backend or target.backend_url is None:
            why = "skipped (--skip-backend)" if args.skip_backend else (
                "not configured (set STEM_RESULT_BACKEND_URL or pass --backend)")
            components.append({"component": "backend", "status": "skipped", "message": why})
        else:
            backend, backend_client = _check("backend", target.backend_url, needs_lag=False,
                                             problems=problems)
            clients.extend([backend_client] if backend_client else [])
            components.append(backend)
        if backend_client is not None:
            now = time.time()
            try:
                beats, skipped = read_heartbeats(backend_client, target.keys)
            except redis.RedisError as exc:
                beats, skipped = [], 0
                problems.append(f"backend: reading heartbeats failed: "
                                f"{scrub(str(exc), target.urls)}")
            if skipped:
                warnings.append(f"{skipped} stored heartbeat(s) could not be parsed")
            for beat in beats:
                beat_age = max(0.0, now - beat.timestamp)
                stale = beat_age > args.stale_after
                workers.append({
                    "workerId": beat.worker_id, "namespace": beat.namespace,
                    "timestamp": dart_iso(beat.timestamp), "ageSeconds": seconds(beat_age),
                    "stale": stale, "active": beat.isolate_count, "inflight": beat.inflight,
                })
                if stale:
                    message = (f"worker {beat.worker_id}: last heartbeat {age(beat_age)} ago "
                               f"(stale after {age(args.stale_after)})")
                    (problems if args.strict else warnings).append(message)
    finally:
        for client in clients:
            client.close()
    document = {"ok": not problems, "components": components, "workers": workers,
                "staleAfterSeconds": args.stale_after, "strict": args.strict,
                "problems": problems, "warnings": warnings}
    if args.json:
        print_json(document)
    else:
        for line in _health_lines(components, workers, args.stale_after,
                                  backend_connected=backend_client is not None):
            print(line)
        for message in problems:
            print(f"problem: {message}")
        for message in warnings:
            print(f"warning: {message}")
        print("Health: ok" if not problems else f"Health: FAILED ({len(problems)} problem"
              f"{'' if len(problems) == 1 else 's'})")
    return 0 if not problems else 1


def _health_lines(components: Sequence[dict[str, Any]], workers: Sequence[dict[str, Any]],
                  stale_after: float, *, backend_connected: bool) -> Iterator[str]:
    rows: list[list[str]] = []
    for item in components:
        name = item["component"]
        rows.append([name, item["status"], item["message"]])
        if item["status"] != "ok":
            continue
        version = item["redisVersion"]
        if version is None:
            rows.append([f"{name} redis version", "unknown", "INFO not allowed"])
        elif name == "broker":
            rows.append([f"{name} redis version", "ok" if item["redisVersionOk"] else "too old",
                         f"{version} (>= 7.0 needed for XINFO lag)"])
        else:
            rows.append([f"{name} redis version", "ok", version])
        flags = item["notifyKeyspaceEvents"]
        rows.append([f"{name} keyspace notifications", item["keyspaceNotifications"],
                     "CONFIG GET not allowed" if flags is None
                     else f"notify-keyspace-events={flags!r}"])
    if not backend_connected:
        rows.append(["workers", "unknown", "heartbeats are stored in the result backend"])
    elif not workers:
        rows.append(["workers", "none", "no stored heartbeats"])
    for worker in workers:
        rows.append([f"worker {worker['workerId']}", "stale" if worker["stale"] else "ok",
                     f"last heartbeat {worker['timestamp']} ({age(worker['ageSeconds'])} ago"
                     + (f", stale after {age(stale_after)})" if worker["stale"] else ")")])
    yield from table(["Check", "Status", "Detail"], rows)
