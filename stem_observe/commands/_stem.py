"""Connecting the subcommands to a Stem deployment's Redis.

Configured like Stem's own CLI (``--broker``/``--backend`` flags, then ``STEM_BROKER_URL`` /
``STEM_RESULT_BACKEND_URL``), with configurable namespaces (``--namespace``,
``--backend-namespace``, then ``STEM_OBSERVE_NAMESPACE`` / ``STEM_OBSERVE_BACKEND_NAMESPACE``;
Stem's CLI is fixed to ``stem``). A missing broker URL or an invalid URL is a ``ConfigError``
(exit status 2); an unreachable Redis or a failed command is exit status 1. Messages name
URLs with their password masked.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from stem_observe.commands._common import mask_url, scrub
from stem_observe.errors import ConfigError, StemObserveError
from stem_observe.events import WorkerHeartbeat
from stem_observe.sources.stem.keys import StemKeys
from stem_observe.sources.stem.wire import parse_heartbeat

__all__ = ["Session", "Target", "Unreachable", "connect", "read_heartbeats", "resolve",
           "with_session"]

_CONNECT_TIMEOUT_S: Final = 5.0
_COMMAND_TIMEOUT_S: Final = 30.0


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class Target:
    """The deployment a command works on; ``backend_url`` is None when none is configured."""

    broker_url: str
    backend_url: str | None
    keys: StemKeys

    @property
    def urls(self) -> tuple[str, str | None]:
        return self.broker_url, self.backend_url


def resolve(args: argparse.Namespace) -> Target:
    """Flags (``_common.connection_options``), then environment variables, then defaults."""
    env = os.environ
    broker_url = args.broker or env.get("STEM_BROKER_URL")
    if not broker_url:
        raise ConfigError("STEM_BROKER_URL", "not set; set it or pass --broker")
    backend_url = args.backend or env.get("STEM_RESULT_BACKEND_URL") or None
    namespace = args.namespace or env.get("STEM_OBSERVE_NAMESPACE") or "stem"
    backend_namespace = (args.backend_namespace or env.get("STEM_OBSERVE_BACKEND_NAMESPACE")
                         or namespace)
    return Target(broker_url, backend_url, StemKeys(namespace, backend_namespace))


# --------------------------------------------------------------------------- connections


def connect(url: str, component: str, *, fail_fast: bool = True) -> redis.Redis:
    """A client for ``url``; an invalid URL is a ``ConfigError`` keyed by ``component``.

    A userinfo without ``:`` is the password, as Stem reads it; ``user:password``
    authenticates as that ACL user (Stem would send only the password). ``fail_fast`` (the
    one-shot commands) bounds connecting and each command and turns retries off; without it
    (``serve``, which runs until stopped) redis-py's defaults apply.
    """
    password: str | None = None
    target = url
    options: dict[str, Any] = {}
    if fail_fast:
        options.update(socket_connect_timeout=_CONNECT_TIMEOUT_S,
                       socket_timeout=_COMMAND_TIMEOUT_S, retry=Retry(NoBackoff(), 0))
    try:
        parts = urlsplit(url)
        if "@" in parts.netloc:
            userinfo, _, hostport = parts.netloc.rpartition("@")
            if ":" not in userinfo:
                password = unquote(userinfo) or None
                target = urlunsplit(parts._replace(netloc=hostport))
        return redis.Redis.from_url(target, password=password, **options)
    except ValueError as exc:
        detail = scrub(str(exc), [url])
        raise ConfigError(component, f"invalid Redis URL {mask_url(url)}: {detail}") from None


class Unreachable(StemObserveError):
    """A Redis server did not answer; the message names its masked URL (Stem's wording)."""

    def __init__(self, component: str, url: str, exc: Exception) -> None:
        self.component = component
        self.url = mask_url(url)
        self.detail = scrub(str(exc) or type(exc).__name__, [url])
        super().__init__(f"Connection failed for {self.url}: {self.detail}")


class Session:
    """The broker and backend clients of one command, connected (and pinged) on first use."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._clients: dict[str, redis.Redis] = {}

    def _open(self, component: str, url: str) -> redis.Redis:
        if component not in self._clients:
            client = connect(url, component)
            try:
                client.ping()
            except redis.RedisError as exc:
                client.close()
                raise Unreachable(component, url, exc) from exc
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


_Run = Callable[[argparse.Namespace, Session], int]


def with_session(run: _Run) -> Callable[[argparse.Namespace], int]:
    """Run a command with a session; Redis failures become a message and exit status 1."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        target = resolve(args)
        session = Session(target)
        try:
            return run(args, session)
        except Unreachable as exc:
            print(f"stem-observe: error: {exc.component}: {exc}", file=sys.stderr)
            return 1
        except redis.RedisError as exc:
            where = ", ".join(f"{name} {mask_url(url)}" for name, url
                              in zip(("broker", "backend"), target.urls, strict=True) if url)
            message = scrub(str(exc) or type(exc).__name__, target.urls)
            print(f"stem-observe: error: Redis command failed ({where}): {message}",
                  file=sys.stderr)
            return 1
        finally:
            session.close()

    return wrapper


# --------------------------------------------------------------------------- reads


def read_heartbeats(backend: redis.Redis, keys: StemKeys) -> tuple[list[WorkerHeartbeat], int]:
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
