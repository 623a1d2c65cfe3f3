"""Running the rules engine inside a process that serves HTTP (``serve``, ``demo``).

:func:`start_alerting` loads the rules, builds the routing's receivers and the dispatcher,
installs the engine on the signal bus, starts its tick, and adds the alerting API:

* ``GET /api/alerts`` — pending, firing and just-resolved alerts (no secrets: receivers
  and their settings are never part of an alert);
* ``GET /api/silences``, ``POST /api/silences`` (``{"matchers": ["queue = emails"],
  "duration": "2h", "created_by": "...", "comment": "..."}``), ``DELETE
  /api/silences?id=ID``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

from stem_observe.config import to_seconds
from stem_observe.errors import ConfigError, StemObserveError
from stem_observe.notify.base import Receiver
from stem_observe.notify.config import build_receiver
from stem_observe.notify.dispatch import Dispatcher
from stem_observe.notify.outbox import DEFAULT_CLAIM_TIMEOUT_S
from stem_observe.rules import Routing, RuleSet, load_rules
from stem_observe.rules.engine import Engine
from stem_observe.rules.redis_store import StoreUnavailableError
from stem_observe.rules.store import MemoryStore, Store
from stem_observe.server import HttpServer, Request, Response, json_response

__all__ = ["MAX_SILENCE_S", "Alerting", "start_alerting"]

#: The longest silence the API accepts: a longer one is almost surely a mistake.
MAX_SILENCE_S = 365 * 86_400.0

logger = logging.getLogger("stem_observe.alerting")


@dataclass
class Alerting:
    engine: Engine
    dispatcher: Dispatcher
    store: Store
    client: Any = None  # the state Redis client, closed last

    def stop(self) -> None:
        self.engine.stop()
        self.engine.uninstall()
        self.dispatcher.close(5.0)
        if self.client is not None:
            self.client.close()


def build_receivers(rules: RuleSet) -> list[Receiver]:
    """The routing's receivers (a console one without routing); errors name the key."""
    routing = rules.routing or Routing.default()
    return [build_receiver(name, receiver.config())
            for name, receiver in routing.receivers.items()]


def start_alerting(
    paths: list[str], server: HttpServer | None, *, registry: CollectorRegistry = REGISTRY,
    tick_s: float = 5.0, receivers: list[Receiver] | None = None,
    state_redis: str | None = None, claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S,
) -> Alerting:
    """Load ``paths`` (files or directories of rules), start the engine, add the API.

    With ``state_redis`` (a Redis URL), silences, the alert states and the notification log
    live in Redis and are shared by every instance using it, time is the Redis server's,
    and notifications pass through the durable outbox (:mod:`stem_observe.notify.outbox`):
    each alert transition is sent once, and one an instance took and did not finish within
    ``claim_timeout_s`` is sent by another.
    """
    for path in paths:
        if not Path(path).exists():
            raise ConfigError("--rules", f"no such file or directory: {path}")
    rules = load_rules(*paths)
    built = receivers if receivers is not None else build_receivers(rules)
    store: Store
    client = None
    if state_redis:
        import redis

        from stem_observe.notify._breaker import Breaker
        from stem_observe.notify.outbox import RedisOutbox
        from stem_observe.notify.redis_log import RedisNotificationLog
        from stem_observe.notify.server_clock import ServerClock
        from stem_observe.rules.redis_store import RedisStore

        try:
            client = redis.Redis.from_url(state_redis, socket_timeout=1.0,
                                          socket_connect_timeout=1.0)
        except ValueError as exc:
            raise ConfigError("--state-redis", f"invalid Redis URL: {exc}") from None
        breaker = Breaker()  # one view of whether Redis answers, for the engine's path
        clock = ServerClock(client, breaker=breaker)
        log = RedisNotificationLog(client, clock=clock, breaker=breaker)
        outbox = RedisOutbox(client, claim_timeout_s=claim_timeout_s, registry=registry,
                             breaker=breaker)
        dispatcher = Dispatcher(built, registry=registry, log=log, outbox=outbox, clock=clock)
        store = RedisStore(client, clock=clock)
    else:
        dispatcher = Dispatcher(built, registry=registry)
        store = MemoryStore()
    try:
        engine = Engine(rules, dispatcher, registry=registry, tick_s=tick_s, store=store,
                        clock=dispatcher.clock)
    except Exception:
        if client is not None:
            client.close()
        raise
    dispatcher.start()
    engine.install()
    engine.start()
    if server is not None:
        _routes(server, engine, store)
    return Alerting(engine, dispatcher, store, client)


def _routes(server: HttpServer, engine: Engine, store: Store) -> None:
    def alerts(headers: dict[str, str]) -> Response:
        return json_response(200, {"alerts": [a.to_json() for a in engine.alerts()]})

    def silences(request: Request) -> Response:
        if request.method == "GET":
            return json_response(200, {"silences": [s.to_json() for s in store.list()]})
        if request.method == "DELETE":
            silence_id = request.query.get("id", "")
            if not store.expire(silence_id):
                return json_response(404, {"error": f"no active silence {silence_id!r}"})
            return json_response(200, {"expired": silence_id})
        try:
            body = json.loads(request.body or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            matchers = body.get("matchers")
            if not isinstance(matchers, list) or not matchers:
                raise ValueError("matchers: a non-empty list such as [\"queue = emails\"]")
            duration = to_seconds(body.get("duration", "1h"), key="duration")
            if not 0 < duration <= MAX_SILENCE_S:
                raise ValueError(f"duration: between 0 and {MAX_SILENCE_S:g} seconds (a year)")
            silence = store.add(
                [str(m) for m in matchers], engine.clock.time() + duration,
                created_by=str(body.get("created_by", "")),
                comment=str(body.get("comment", "")),
            )
        except StoreUnavailableError as exc:
            return json_response(503, {"error": str(exc)})
        except (ValueError, StemObserveError, RecursionError, OverflowError) as exc:
            return json_response(400, {"error": str(exc)})
        return json_response(201, silence.to_json())

    server.route("/api/alerts", alerts)
    server.route_request("/api/silences", silences, methods=("GET", "POST", "DELETE"))
