"""``stem-observe health``, ``observe queues|workers|dlq`` and ``dlq list|show|replay``.

The part of Stem's own CLI (``stem health``, ``stem observe``, ``stem dlq``) that works on a
Redis deployment, configured the same way (``STEM_BROKER_URL``, ``STEM_RESULT_BACKEND_URL``,
``--broker``/``--backend``) and printing the same lines where the commands overlap. Unlike
Stem's, ``observe`` creates no streams or consumer groups and ``health`` also checks the
Redis version, keyspace notifications and heartbeat freshness. Namespaces are configurable
(``--namespace``, ``--backend-namespace``; Stem's CLI is fixed to ``stem``).

Tables by default, one JSON document on stdout with ``--json``. Exit status: 0 on success,
1 when Redis is unreachable or a check fails, 2 for usage and configuration errors. URLs are
printed with their password masked.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from stem_observe.commands._common import duration
from stem_observe.errors import ConfigError, StemObserveError
from stem_observe.events import WorkerHeartbeat
from stem_observe.sources.stem import dlq, inspect
from stem_observe.sources.stem.keys import StemKeys
from stem_observe.sources.stem.wire import (
    DeadLetter,
    ParseError,
    dart_iso,
    parse_heartbeat,
    parse_time,
)

__all__ = ["mask_url", "register"]

_CONNECT_TIMEOUT_S: Final = 5.0
_COMMAND_TIMEOUT_S: Final = 30.0
_MIN_VERSION: Final = (7, 0)  # XINFO GROUPS reports ``lag`` from Redis 7.0 on
_DLQ_PAGE: Final = 200  # observe dlq: Stem's paging (200 a page, at most 1000 entries)
_DLQ_MAX: Final = 1000
_REPLAY_SHOWN: Final = 10
_MASK: Final = "***"


# --------------------------------------------------------------------------- URLs


def mask_url(url: str) -> str:
    """``url`` with its password (userinfo, or a ``password`` query value) replaced by ``***``.

    A userinfo without ``:`` is masked whole: Stem sends it as the password.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}:{_MASK}@{hostport}" if sep else f"{_MASK}@{hostport}"
    query = parts.query
    if query:
        pairs = [(k, _MASK if k.lower() == "password" else v)
                 for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _secrets(url: str) -> set[str]:
    try:
        parts = urlsplit(url)
    except ValueError:
        return {url}
    found: set[str] = set()
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        user, sep, password = userinfo.partition(":")
        found.add(password if sep else user)
    found.update(v for k, v in parse_qsl(parts.query) if k.lower() == "password")
    return {s for secret in found if secret for s in (secret, unquote(secret))}


def _scrub(text: str, urls: Sequence[str | None]) -> str:
    """``text`` without any password of ``urls`` (errors may quote what they were given)."""
    for url in urls:
        if url:
            for secret in sorted(_secrets(url), key=len, reverse=True):
                text = text.replace(secret, _MASK)
    return text


def _connect(url: str, component: str) -> redis.Redis:
    """A client for ``url``. A userinfo without ``:`` is the password, as Stem reads it;
    ``user:password`` authenticates as that ACL user (Stem would send only the password)."""
    password: str | None = None
    target = url
    try:
        parts = urlsplit(url)
        if "@" in parts.netloc:
            userinfo, _, hostport = parts.netloc.rpartition("@")
            if ":" not in userinfo:
                password = unquote(userinfo) or None
                target = urlunsplit(parts._replace(netloc=hostport))
        return redis.Redis.from_url(
            target, password=password, socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_COMMAND_TIMEOUT_S, retry=Retry(NoBackoff(), 0),
        )
    except ValueError as exc:
        detail = _scrub(str(exc), [url])
        raise ConfigError(component, f"invalid Redis URL {mask_url(url)}: {detail}") from None


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class _Target:
    broker_url: str
    backend_url: str | None
    keys: StemKeys

    @property
    def urls(self) -> tuple[str, str | None]:
        return self.broker_url, self.backend_url


def _resolve(args: argparse.Namespace) -> _Target:
    """Flags, then environment variables, then defaults."""
    env = os.environ
    broker_url = args.broker or env.get("STEM_BROKER_URL")
    if not broker_url:
        raise ConfigError("STEM_BROKER_URL", "not set; set it or pass --broker")
    backend_url = args.backend or env.get("STEM_RESULT_BACKEND_URL") or None
    namespace = args.namespace or env.get("STEM_OBSERVE_NAMESPACE") or "stem"
    backend_namespace = (args.backend_namespace or env.get("STEM_OBSERVE_BACKEND_NAMESPACE")
                         or namespace)
    return _Target(broker_url, backend_url, StemKeys(namespace, backend_namespace))


class _Unreachable(StemObserveError):
    """A Redis server did not answer; the message names its masked URL (Stem's wording)."""

    def __init__(self, component: str, url: str, exc: Exception) -> None:
        self.component = component
        self.url = mask_url(url)
        self.detail = _scrub(str(exc) or type(exc).__name__, [url])
        super().__init__(f"Connection failed for {self.url}: {self.detail}")


class _Session:
    """The broker and backend clients of one command, connected (and pinged) on first use."""

    def __init__(self, target: _Target) -> None:
        self.target = target
        self._clients: dict[str, redis.Redis] = {}

    def _open(self, component: str, url: str) -> redis.Redis:
        if component not in self._clients:
            client = _connect(url, component)
            try:
                client.ping()
            except redis.RedisError as exc:
                client.close()
                raise _Unreachable(component, url, exc) from exc
            self._clients[component] = client
        return self._clients[component]

    @property
    def broker(self) -> redis.Redis:
        return self._open("broker", self.target.broker_url)

    @property
    def backend(self) -> redis.Redis | None:
        url = self.target.backend_url
        return None if url is None else self._open("backend", url)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


_Run = Callable[[argparse.Namespace, _Session], int]


def _with_session(run: _Run) -> Callable[[argparse.Namespace], int]:
    """Run a command with a session; Redis failures become a message and exit status 1."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        target = _resolve(args)
        session = _Session(target)
        try:
            return run(args, session)
        except _Unreachable as exc:
            print(f"stem-observe: error: {exc.component}: {exc}", file=sys.stderr)
            return 1
        except redis.RedisError as exc:
            where = ", ".join(f"{name} {mask_url(url)}" for name, url
                              in zip(("broker", "backend"), target.urls, strict=True) if url)
            message = _scrub(str(exc) or type(exc).__name__, target.urls)
            print(f"stem-observe: error: Redis command failed ({where}): {message}",
                  file=sys.stderr)
            return 1
        finally:
            session.close()

    return wrapper


# --------------------------------------------------------------------------- output


def _print_json(document: object) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]],
           right: frozenset[int] = frozenset()) -> Iterator[str]:
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return " | ".join(cell.rjust(w) if i in right else cell.ljust(w)
                          for i, (cell, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    yield line(headers)
    yield "-+-".join("-" * w for w in widths)
    for row in rows:
        yield line(row)


def _pad_cell(value: str, width: int) -> str:
    """Stem's ``padCell``: cut to ``width`` with ``...``, else pad right."""
    return value[:width - 3] + "..." if len(value) > width else value.ljust(width)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60}m"
    return f"{whole // 86400}d {whole % 86400 // 3600}h"


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _entry_json(queue: str, entry: DeadLetter) -> dict[str, Any]:
    """The document ``stem dlq show`` prints."""
    return {"queue": queue, "deadAt": dart_iso(entry.dead_at), "reason": entry.reason,
            "meta": entry.meta, "envelope": entry.envelope.to_json()}


def _plural(count: int) -> str:
    return f"{count} entry" if count == 1 else f"{count} entries"


# --------------------------------------------------------------------------- reads


def _read_heartbeats(backend: redis.Redis, keys: StemKeys) -> tuple[list[WorkerHeartbeat], int]:
    """The stored heartbeats, sorted by worker id, and how many did not parse. Expired ids
    stay in the index (Stem ``SREM``s them; this only reads)."""
    ids = sorted(m.decode("utf-8", "replace") if isinstance(m, bytes) else str(m)
                 for m in backend.smembers(keys.heartbeats()))
    if not ids:
        return [], 0
    pipe = backend.pipeline(transaction=False)
    for worker_id in ids:
        pipe.get(keys.heartbeat(worker_id))
    beats: list[WorkerHeartbeat] = []
    skipped = 0
    for raw in pipe.execute():
        if raw is None:
            continue
        try:
            beats.append(parse_heartbeat(raw))
        except (ValueError, TypeError, OverflowError):  # ParseError, and what wire lets through
            skipped += 1
    beats.sort(key=lambda beat: beat.worker_id)
    return beats, skipped


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


# --------------------------------------------------------------------------- health


def _check(component: str, url: str, *, needs_lag: bool,
           problems: list[str]) -> tuple[dict[str, Any], redis.Redis | None]:
    """Connect, ``PING``, read the version and the keyspace-notification setting."""
    result: dict[str, Any] = {"component": component, "url": mask_url(url)}
    client = _connect(url, component)
    try:
        client.ping()
        version = _server_version(client)
        notifications, flags = _notify_keyspace_events(client)
    except redis.RedisError as exc:
        client.close()
        error = _Unreachable(component, url, exc)
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


def _health(args: argparse.Namespace) -> int:
    target = _resolve(args)
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
                beats, skipped = _read_heartbeats(backend_client, target.keys)
            except redis.RedisError as exc:
                beats, skipped = [], 0
                problems.append(f"backend: reading heartbeats failed: "
                                f"{_scrub(str(exc), target.urls)}")
            if skipped:
                warnings.append(f"{skipped} stored heartbeat(s) could not be parsed")
            for beat in beats:
                age = max(0.0, now - beat.timestamp)
                stale = age > args.stale_after
                workers.append({
                    "workerId": beat.worker_id, "namespace": beat.namespace,
                    "timestamp": dart_iso(beat.timestamp), "ageSeconds": _seconds(age),
                    "stale": stale, "active": beat.isolate_count, "inflight": beat.inflight,
                })
                if stale:
                    message = (f"worker {beat.worker_id}: last heartbeat {_age(age)} ago "
                               f"(stale after {_age(args.stale_after)})")
                    (problems if args.strict else warnings).append(message)
    finally:
        for client in clients:
            client.close()
    document = {"ok": not problems, "components": components, "workers": workers,
                "staleAfterSeconds": args.stale_after, "strict": args.strict,
                "problems": problems, "warnings": warnings}
    if args.json:
        _print_json(document)
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
                     f"last heartbeat {worker['timestamp']} ({_age(worker['ageSeconds'])} ago"
                     + (f", stale after {_age(stale_after)})" if worker["stale"] else ")")])
    yield from _table(["Check", "Status", "Detail"], rows)


# --------------------------------------------------------------------------- observe


def _heartbeat_queues(session: _Session) -> list[str]:
    backend = session.backend
    if backend is None:
        return []
    beats, _skipped = _read_heartbeats(backend, session.target.keys)
    return sorted({queue for beat in beats for queue in beat.queues})


@_with_session
def _observe_queues(args: argparse.Namespace, session: _Session) -> int:
    keys = session.target.keys
    broker = session.broker
    queues = inspect.discover_queues(broker, keys, extra=_heartbeat_queues(session))
    stats = inspect.queue_stats(broker, keys, queues)
    ordered = [stats[name] for name in sorted(stats)]
    if args.json:
        _print_json({"queues": [
            {"queue": s.queue, "pending": s.pending, "inflight": s.inflight,
             "delayed": s.delayed, "delayedDue": s.delayed_overdue,
             "deadLetters": s.dead_letters,
             "oldestPendingAgeSeconds": _seconds(s.oldest_pending_age_s)}
            for s in ordered]})
        return 0
    if not ordered:
        print("No queue data.")
        return 0
    rows = [[s.queue, str(s.pending), str(s.inflight), str(s.delayed), str(s.dead_letters),
             _age(s.oldest_pending_age_s)] for s in ordered]
    for line in _table(["Queue", "Pending", "Inflight", "Delayed", "Dead letters",
                        "Oldest age"], rows, right=frozenset({1, 2, 3, 4, 5})):
        print(line)
    return 0


@_with_session
def _observe_workers(args: argparse.Namespace, session: _Session) -> int:
    backend = session.backend
    beats = [] if backend is None else _read_heartbeats(backend, session.target.keys)[0]
    now = time.time()
    if args.json:
        _print_json({"workers": [
            {"id": b.worker_id, "namespace": b.namespace, "active": b.isolate_count,
             "inflight": b.inflight, "lastHeartbeat": dart_iso(b.timestamp),
             "ageSeconds": _seconds(max(0.0, now - b.timestamp)), "queues": list(b.queues)}
            for b in beats]})
        return 0
    if not beats:
        print("No worker data.")
        return 0
    rows = [[b.worker_id, b.namespace, "-" if b.isolate_count is None else str(b.isolate_count),
             str(b.inflight),
             dart_iso(b.timestamp), _age(max(0.0, now - b.timestamp))] for b in beats]
    for line in _table(["Worker", "Namespace", "Active", "Inflight", "Last heartbeat", "Age"],
                       rows, right=frozenset({2, 3, 5})):
        print(line)
    return 0


@_with_session
def _observe_dlq(args: argparse.Namespace, session: _Session) -> int:
    keys = session.target.keys
    broker = session.broker
    found: list[tuple[str, DeadLetter]] = []
    skipped = 0
    truncated = False
    for queue in sorted(inspect.discover_queues(broker, keys)):
        offset: int | None = 0
        while offset is not None and not truncated:
            page = dlq.list_dead_letters(broker, keys, queue, limit=_DLQ_PAGE, offset=offset)
            skipped += page.skipped
            room = _DLQ_MAX - len(found)
            found.extend((queue, entry) for entry in page.entries[:room])
            truncated = len(page.entries) > room
            offset = page.next_offset
    if args.json:
        _print_json({"dlq": [
            {"queue": queue, "taskId": e.envelope.id, "task": e.envelope.name,
             "reason": e.reason, "deadAt": dart_iso(e.dead_at)} for queue, e in found],
            "truncated": truncated, "skipped": skipped})
        return 0
    if not found:
        print("Dead letter queue is empty.")
        return 0
    rows = [[queue, e.envelope.id, e.envelope.name, e.reason or "Unknown", dart_iso(e.dead_at)]
            for queue, e in found]
    for line in _table(["Queue", "Task ID", "Task", "Reason", "Dead at"], rows):
        print(line)
    if truncated:
        print(f"Showing the first {_DLQ_MAX} entries.")
    return 0


# --------------------------------------------------------------------------- dlq

_LIST_HEADER: Final = ("ID                                  | Task                | Attempts "
                       "| DeadAt                | Reason")
_LIST_RULE: Final = ("------------------------------------+---------------------+---------"
                     "+----------------------+----------------")


@_with_session
def _dlq_list(args: argparse.Namespace, session: _Session) -> int:
    page = dlq.list_dead_letters(session.broker, session.target.keys, args.queue,
                                 limit=args.limit, offset=args.offset)
    # As Stem's CLI does, --since filters the page it read (it does not page further).
    entries = [e for e in page.entries if args.since is None or e.dead_at >= args.since]
    if args.json:
        _print_json({"queue": args.queue, "entries": [_entry_json(args.queue, e)
                                                      for e in entries],
                     "nextOffset": page.next_offset, "skipped": page.skipped})
        return 0
    if not entries:
        print("No dead letter entries found.")
    else:
        print(_LIST_HEADER)
        print(_LIST_RULE)
        for e in entries:
            print(f"{_pad_cell(e.envelope.id, 36)} | {_pad_cell(e.envelope.name, 19)} | "
                  f"{e.envelope.attempt:>7} | {_pad_cell(dart_iso(e.dead_at), 20)} | "
                  f"{_pad_cell(e.reason or '-', 16)}")
    if page.next_offset is not None:
        print(f"More entries available. Next offset: {page.next_offset}.")
    return 0


@_with_session
def _dlq_show(args: argparse.Namespace, session: _Session) -> int:
    task_id = args.id_option or args.id
    if not task_id:
        raise ConfigError("id", "give the task id: dlq show --queue QUEUE ID")
    entry = dlq.get_dead_letter(session.broker, session.target.keys, args.queue, task_id)
    if entry is None:
        print(f"No dead letter entry found for id {task_id} in {args.queue}.", file=sys.stderr)
        return 1
    _print_json(_entry_json(args.queue, entry))
    return 0


@_with_session
def _dlq_replay(args: argparse.Namespace, session: _Session) -> int:
    if not (args.yes or args.dry_run):
        raise ConfigError("--yes", "dlq replay moves entries back to the queue; pass --yes "
                                   "to confirm, or --dry-run to preview")
    # Status records are noted only when a result backend is configured, as in Stem's CLI.
    backend = None if args.dry_run else session.backend
    entries = dlq.replay_dead_letters(
        session.broker, session.target.keys, args.queue, limit=args.limit, since=args.since,
        delay_s=args.delay, dry_run=args.dry_run, task_name=args.task, reason=args.reason,
        backend=backend, update_status=backend is not None,
    )
    if args.json:
        _print_json({"queue": args.queue, "dryRun": args.dry_run, "count": len(entries),
                     "entries": [{"id": e.envelope.id, "task": e.envelope.name,
                                  "attempt": e.envelope.attempt, "reason": e.reason,
                                  "deadAt": dart_iso(e.dead_at)} for e in entries]})
        return 0
    verb = "Would replay" if args.dry_run else "Replayed"
    print(f"{verb} {_plural(len(entries))} from {args.queue}.")
    for e in entries[:_REPLAY_SHOWN]:
        print(f" - {e.envelope.id} ({e.envelope.name}) [attempt {e.envelope.attempt}] "
              f"reason={e.reason or '-'}")
    if len(entries) > _REPLAY_SHOWN:
        print(f"   ... {len(entries) - _REPLAY_SHOWN} more")
    return 0


# --------------------------------------------------------------------------- arguments


def _iso_time(text: str) -> float:
    """An argparse type: an ISO-8601 time (``Z``, offset, or naive = UTC) as epoch seconds."""
    try:
        value = parse_time(text, kind="--since")
    except ParseError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value is None:
        raise argparse.ArgumentTypeError("expected an ISO-8601 time")
    return value


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument("--broker", metavar="URL",
                       help="broker Redis URL (default: $STEM_BROKER_URL)")
    group.add_argument("--backend", metavar="URL",
                       help="result backend Redis URL (default: $STEM_RESULT_BACKEND_URL)")
    group.add_argument("--namespace", metavar="NS",
                       help="broker key namespace (default: $STEM_OBSERVE_NAMESPACE or stem)")
    group.add_argument("--backend-namespace", metavar="NS",
                       help="backend key namespace (default: "
                            "$STEM_OBSERVE_BACKEND_NAMESPACE or --namespace)")
    common.add_argument("--json", action="store_true",
                        help="print one JSON document instead of a table")
    return common


def register(commands: Any) -> None:
    common = _connection_options()

    health = commands.add_parser(
        "health", parents=[common], help="check broker, backend and worker heartbeats",
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

    observe = commands.add_parser("observe", help="snapshot queues, workers or dead letters",
                                  description="Read-only snapshots of a Stem deployment.")
    what = observe.add_subparsers(dest="observe_command", required=True, metavar="WHAT")
    what.add_parser("queues", parents=[common], help="pending, in-flight, delayed and dead "
                    "counts per queue").set_defaults(func=_observe_queues)
    what.add_parser("workers", parents=[common], help="workers from their stored heartbeats"
                    ).set_defaults(func=_observe_workers)
    what.add_parser("dlq", parents=[common], help="dead letters of every queue (at most "
                    f"{_DLQ_MAX})").set_defaults(func=_observe_dlq)

    dead = commands.add_parser("dlq", help="list, show or replay dead letters",
                               description="Dead-letter queue of one Stem queue.")
    action = dead.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    listing = action.add_parser("list", parents=[common], help="list entries, newest first")
    show = action.add_parser("show", parents=[common], help="print one entry as JSON")
    replay = action.add_parser("replay", parents=[common],
                               help="move entries back to their queue, oldest first")
    for sub in (listing, show, replay):
        sub.add_argument("-q", "--queue", required=True, help="the queue")
    listing.add_argument("-l", "--limit", type=_count(1), default=50,
                         help="page size (default: 50)")
    listing.add_argument("--offset", type=_count(0), default=0,
                         help="entries to skip (default: 0)")
    listing.add_argument("--since", type=_iso_time, metavar="ISO",
                         help="only entries dead at or after this time (within the page)")
    listing.set_defaults(func=_dlq_list)
    show.add_argument("id", nargs="?", help="the task id")
    show.add_argument("--id", dest="id_option", metavar="ID", help="the task id (Stem's flag)")
    show.set_defaults(func=_dlq_show)
    replay.add_argument("-l", "--limit", type=_count(1), default=10,
                        help="entries to replay at most (default: 10)")
    replay.add_argument("--since", type=_iso_time, metavar="ISO",
                        help="only entries dead at or after this time")
    replay.add_argument("--task", metavar="NAME", help="only entries of this task name")
    replay.add_argument("--reason", help="only entries with this reason")
    replay.add_argument("--delay", type=duration, metavar="DURATION",
                        help="publish to the delayed set, due after this (e.g. 30s)")
    replay.add_argument("--dry-run", action="store_true", help="show what would be replayed")
    replay.add_argument("-y", "--yes", action="store_true", help="confirm the replay")
    replay.set_defaults(func=_dlq_replay)
