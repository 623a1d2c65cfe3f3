"""Fleet forwarding: a worker process's events, batched into a Redis stream for ``serve``.

:class:`FleetForwarder` is a signal receiver for every task and worker event a worker
produces. On the sending thread it reads the event's forwarded fields into a tuple (one C
call for a task's lifecycle kinds; the rarer kinds also have their free text cut there) and
appends ``(kind, traceparent, fields)`` to a bounded in-memory queue (no I/O, no lock): when
the queue is full the event is dropped and counted. Keeping the fields rather
than the event lets the event die at once: events held in a queue survived into the
garbage collector's older generations and cost the emitting thread more than the read
does. A background thread packs what is queued (``sources/_fleet_wire.py``) and sends each
batch of up to ``batch_max`` records as one script call (an ``XADD … MAXLEN ~`` per entry,
then the batch's marker, atomically, with one reply; records are packed
:data:`~stem_observe.sources._fleet_wire.RECORDS_PER_ENTRY` to an entry; ``maxlen`` is the
approximate number of events the stream keeps), every ``flush_interval_s`` or as soon as a
batch is full.

Drops are reported honestly: ``dropped`` and ``stem_observe_fleet_dropped_total{reason}``
in the worker's registry count every event that did not reach the stream (queue full while
Redis was slow or down; a batch whose write failed; events still queued at close),
and the next batch that reaches Redis carries a ``fleet-dropped`` record with the count
since the last report, which ``serve`` exports fleet-wide. After a failure the thread waits
(exponential backoff up to ``max_backoff_s``) and probes with ``PING`` before it takes the
next batch off the queue, so an outage costs only what overflows the queue.

Traces are not forwarded (workers export spans through OTLP). The trace id the worker's
tracing gave a task travels instead, so ``serve`` can put it in exemplars.

Fork: a forwarder started before ``fork()`` restarts in the child with an empty queue, a
new connection and a new thread (``os.register_at_fork``; :meth:`after_fork` does the same
explicitly and is idempotent). Call :meth:`flush` when a child exits and :meth:`close` at
shutdown; neither waits longer than its timeout, whatever Redis does.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Final

import redis
from opentelemetry.trace import get_current_span
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.backoff import NoBackoff
from redis.retry import Retry

from stem_observe import events as ev
from stem_observe import signals
from stem_observe._throttle import Throttle
from stem_observe.bridge import FORWARDED_SENDER
from stem_observe.errors import ConfigError
from stem_observe.sinks._scopes import TASKS
from stem_observe.sources._fleet_wire import (
    DROPPED_KIND,
    KINDS,
    MAX_ENTRY_BYTES,
    READERS,
    RECORDS_PER_ENTRY,
    VERSION,
    Record,
    drops_record,
    pack_body,
    prepare,
)

__all__ = ["DEFAULT_STREAM", "FLEET_SENDER", "FleetForwarder"]

logger = logging.getLogger("stem_observe.sinks.fleet")

DEFAULT_STREAM: Final = "stem_observe:fleet"
#: The sender of events re-emitted from the fleet stream: never forwarded again, not traced.
FLEET_SENDER: Final = FORWARDED_SENDER
# Outcomes whose exemplars name a trace: for these the worker's current span is looked up
# when the message carried no sampled traceparent.
_OUTCOMES: Final = frozenset({
    ev.TaskSucceeded, ev.TaskFailed, ev.TaskRetry, ev.TaskRevoked, ev.TaskDeadLettered,
})
# What one entry holds at most when records had to be prepared one by one: half of what a
# consumer reads, so that the array around the records never takes it over.
_ENTRY_BUDGET: Final = MAX_ENTRY_BYTES // 2
# One batch: an entry per body, then the marker, last. One command with one reply, run
# atomically; a MULTI/XADD…/EXEC transaction got a reply per command, and Redis, reading a
# large request 16 kB at a time, sent them in as many pieces (see _one_write for their cost).
_WRITE_BATCH: Final = """
for i = 4, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'v', ARGV[3], 'e', ARGV[i])
end
redis.call('SET', KEYS[2], ARGV[1], 'EX', 3600)
return #ARGV - 3
"""


def _positive(name: str, value: float, *, integer: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 or (
            integer and not isinstance(value, int)):
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(name, f"must be {kind}, got {value!r}")


def _worker_trace(event: ev.TaskEvent) -> str | None:
    """The ``traceparent`` of the worker's span for ``event``'s task, if it is current."""
    context = get_current_span().get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    scope = TASKS.current()
    if scope is None or scope.task_id != event.task_id:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-01"


class FleetForwarder:
    """Forwards this process's task and worker events to the Redis stream ``stream``.

    ``worker`` names this process's worker in drop reports (default: the host name; the
    Celery plugin names the worker's node once it knows it). ``timeout_s``
    bounds connecting and each command. ``registry=None`` registers no metrics.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        stream: str = DEFAULT_STREAM,
        maxlen: int = 100_000,
        queue_max: int = 10_000,
        batch_max: int = 500,
        flush_interval_s: float = 0.2,
        worker: str | None = None,
        timeout_s: float = 2.0,
        max_backoff_s: float = 5.0,
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        for name, number in (("maxlen", maxlen), ("queue_max", queue_max),
                             ("batch_max", batch_max)):
            _positive(name, number, integer=True)
        for name, seconds in (("flush_interval_s", flush_interval_s),
                              ("timeout_s", timeout_s), ("max_backoff_s", max_backoff_s)):
            _positive(name, seconds)
        if not stream:
            raise ConfigError("stream", "must not be empty")
        self.redis_url = redis_url
        self.stream = stream
        self.maxlen = maxlen
        # Entries hold up to RECORDS_PER_ENTRY events each; trim by entries accordingly.
        self._maxlen_entries = max(1, -(-maxlen // RECORDS_PER_ENTRY))
        self.queue_max = queue_max
        self.batch_max = batch_max
        self.flush_interval_s = float(flush_interval_s)
        self.worker = worker or socket.gethostname()
        self.timeout_s = float(timeout_s)
        self.max_backoff_s = float(max_backoff_s)
        self._client = self._connect()  # validates the URL now; connects lazily
        self._registry = registry
        self._collector: _Collector | None = None
        self._receivers: list[tuple[Any, Callable[..., None]]] = []
        self._started = False
        self._closed = False
        self._connected = False
        self._reset_state()
        _FORWARDERS.add(self)

    def _connect(self) -> redis.Redis:
        try:
            client = redis.Redis.from_url(
                self.redis_url, socket_connect_timeout=self.timeout_s,
                socket_timeout=self.timeout_s, retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )
        except ValueError as exc:
            raise ConfigError("redis_url", f"invalid Redis URL: {exc}") from None
        pool = client.connection_pool
        pool.connection_class = _one_write(pool.connection_class)
        self._script = client.register_script(_WRITE_BATCH)
        return client

    def _reset_state(self) -> None:
        self._pid = os.getpid()
        self._queue: collections.deque[Record] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._drop_lock = threading.Lock()
        self._sending = False
        self._thread: threading.Thread | None = None
        self._drops: collections.Counter[str] = collections.Counter()
        self._reported = 0
        # Each batch's script also sets this key to the batch's number, so a batch whose
        # reply was lost can be looked up after reconnecting instead of guessed.
        self._marker = f"{self.stream}:batch:{uuid.uuid4().hex}"
        self._seq = 0
        # (seq, events, drops reported, the batch's entry bodies): a batch whose write
        # failed, kept (one batch, at most batch_max events) until Redis says whether it landed
        self._in_doubt: tuple[int, int, int, list[bytes]] | None = None
        self.forwarded = 0
        """Events written to the stream."""
        self.batches = 0
        self._healthy = False  # so the first attempt probes before taking a batch
        self._throttle = Throttle()

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> FleetForwarder:
        """Connect to the signals and start the sending thread. Idempotent."""
        if self._closed:
            raise RuntimeError("a closed FleetForwarder cannot be started again")
        if self._started:
            return self
        self._started = True
        for cls in KINDS.values():
            receiver = self._receiver(cls)
            self._receivers.append((signals.SIGNALS[cls], receiver))
            signals.SIGNALS[cls].connect(receiver, weak=False)
        if self._registry is not None and self._collector is None:
            self._collector = _Collector(self)
            self._registry.register(self._collector)
        self._start_thread()
        return self

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._run, name="stem-observe-fleet", daemon=True)
        self._thread = thread
        thread.start()

    def after_fork(self) -> None:
        """Start over in a forked child: empty queue, new connection, new thread.

        Called automatically after ``fork()``; calling it again in the same process does
        nothing. Events queued in the parent stay the parent's to send.
        """
        if self._pid == os.getpid():
            return
        self._client = self._connect()  # the parent's sockets stay the parent's
        self._reset_state()
        if self._started and not self._closed:
            self._start_thread()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Send what is queued; ``True`` when the queue emptied within ``timeout_s`` and no
        batch whose write failed is still waiting to be settled."""
        deadline = time.monotonic() + timeout_s
        thread = self._thread
        if thread is None or not thread.is_alive():
            return not self._queue and self._in_doubt is None
        self._wake.set()
        with self._idle:
            while self._queue or self._sending or self._in_doubt is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.set()
                self._idle.wait(min(remaining, 0.05))
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Disconnect from the signals, send what is queued within ``timeout_s``, stop.

        What could not be sent by then is counted as dropped (reason ``closed``).
        """
        if self._closed:
            return
        self._closed = True
        for sig, receiver in self._receivers:
            sig.disconnect(receiver)
        self._receivers.clear()
        deadline = time.monotonic() + timeout_s
        if self._thread is not None and self._pid == os.getpid():
            self.flush(max(0.0, deadline - time.monotonic()))
            self._stop.set()
            self._wake.set()
            self._thread.join(max(0.0, deadline - time.monotonic()))
        left = len(self._queue)
        self._queue.clear()
        if self._in_doubt is not None:  # never learned whether it landed: count it lost
            left += self._in_doubt[1]
            self._in_doubt = None
        if left:
            self._drop(left, "closed")
        if self._thread is None or not self._thread.is_alive():
            self._client.close()
        if self._collector is not None and self._registry is not None:
            self._registry.unregister(self._collector)
            self._collector = None

    # ----------------------------------------------------------------- receivers (hot path)

    def _receiver(self, cls: type[ev.Event]) -> Callable[..., None]:
        """The receiver of ``cls``'s signal: it queues the event's kind, trace context and
        fields (read in one call)."""
        kind, read = READERS[cls]
        task = issubclass(cls, ev.TaskEvent)
        outcome = cls in _OUTCOMES

        def receive(sender: object, *, event: Any) -> None:
            if sender == FLEET_SENDER:
                return  # came from the stream: never forward it again
            queue = self._queue
            if len(queue) >= self.queue_max:
                self._drop(1, "queue_full")
                return
            traceparent = None
            if task:
                headers = event.headers
                if headers:
                    traceparent = headers.get("traceparent")
                    if traceparent.__class__ is not str:
                        traceparent = None
                if traceparent is None and outcome and event.in_process:
                    # No trace context came with the message: the worker's span began one.
                    traceparent = _worker_trace(event)
            try:
                # The event's fields, not the event: no exception's frames are held, the
                # event is freed at once, and the collector soon stops visiting the tuples.
                fields = read(event)
            except Exception as exc:  # a field that is not what its type says
                self._unencodable(kind, exc)
                return
            queue.append((kind, traceparent, fields))
            if len(queue) == self.batch_max:  # each append passes this length once
                self._wake.set()

        receive.__qualname__ = f"FleetForwarder[{kind}]"
        return receive

    def _unencodable(self, what: str, exc: object) -> None:
        self._drop(1, "unencodable")
        self._log("encode", "fleet record for %s not encodable: %s", what, exc)

    def _drop(self, count: int, reason: str) -> None:
        with self._drop_lock:
            self._drops[reason] += count

    # ----------------------------------------------------------------- the sending thread

    @property
    def dropped(self) -> int:
        """Events that did not reach the stream, whatever the reason."""
        with self._drop_lock:
            return sum(self._drops.values())

    def dropped_by_reason(self) -> dict[str, int]:
        with self._drop_lock:
            return dict(self._drops)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _run(self) -> None:
        backoff = 0.0
        stop, wake = self._stop, self._wake
        while True:
            if backoff:
                stop.wait(backoff)
            else:
                wake.wait(self.flush_interval_s)
            wake.clear()
            if stop.is_set() and (not self._queue or backoff):
                break
            try:
                self._drain()
            except Exception as exc:  # a bug must not kill forwarding
                self._healthy = False
                self._log("send", "fleet forwarding to %s failed (%s); retrying", self.stream,
                          exc)
                backoff = min(max(backoff * 2, 0.1), self.max_backoff_s)
            else:
                backoff = 0.0
            finally:
                with self._idle:
                    self._sending = False
                    self._idle.notify_all()

    def _drain(self) -> None:
        """Send batches until the queue is empty (and unreported drops are reported)."""
        client = self._client
        if not self._healthy:
            client.ping()  # a probe: take nothing off the queue while Redis is away
            if self._in_doubt is not None:
                self._settle(client)
            if self.batches:
                self._log("reconnected", "fleet forwarding to %s resumed", self.stream)
            self._healthy = True
        queue = self._queue
        while queue or self.dropped > self._reported:
            with self._idle:
                self._sending = True
            self._send(client, queue)

    def _settle(self, client: redis.Redis) -> None:
        """Learn whether the batch whose write failed was committed after all; if not, send
        it again (it is not lost while Redis comes back)."""
        assert self._in_doubt is not None
        seq, events, reported, bodies = self._in_doubt
        if client.get(self._marker) == str(seq).encode():
            self._committed(events, reported)
            self._in_doubt = None
            return
        self._seq += 1
        self._in_doubt = (self._seq, events, reported, bodies)
        self._write(client, self._seq, bodies)
        self._committed(events, reported)
        self._in_doubt = None

    def _write(self, client: redis.Redis, seq: int, bodies: list[bytes]) -> None:
        """Add an entry per body and set the marker to ``seq``: one command, one reply."""
        self._script(keys=[self.stream, self._marker],
                     args=[seq, self._maxlen_entries, VERSION, *bodies], client=client)

    def _committed(self, events: int, reported: int) -> None:
        self.forwarded += events
        self.batches += 1
        self._reported += reported

    def _send(self, client: redis.Redis, queue: collections.deque[Record]) -> None:
        """Take up to ``batch_max`` events off ``queue`` and write them in one script call.

        An entry's records are packed and freed before the next entry's are taken: fewer
        live lists, fewer garbage collections in the process, which the worker pays for.
        """
        unreported = max(self.dropped - self._reported, 0)
        popleft = queue.popleft
        remaining = self.batch_max
        bodies: list[bytes] = []
        encoded = 0
        reported = False
        report = [drops_record(self.worker, unreported)] if unreported else []
        while remaining and queue:
            # Only this thread takes from the queue: len() items are there to take.
            count = min(len(queue), RECORDS_PER_ENTRY, remaining)
            remaining -= count
            records = [popleft() for _ in range(count)]
            if report and count < RECORDS_PER_ENTRY and not (remaining and queue):
                records += report  # the last entry carries the report when it has room
                report = []
            events, with_report = self._pack(records, bodies)
            encoded += events
            reported = reported or with_report
        if report:
            reported = self._pack(report, bodies)[1]
        if not bodies:
            return
        unreported = unreported if reported else 0
        self._seq += 1
        try:
            self._write(client, self._seq, bodies)
        except BaseException:
            # The script is atomic and writes the marker last; the marker tells whether the
            # batch landed, once Redis answers again.
            self._in_doubt = (self._seq, encoded, unreported, bodies)
            raise
        self._committed(encoded, unreported)

    def _pack(self, records: list[Record], bodies: list[bytes]) -> tuple[int, bool]:
        """Append the entry bodies for ``records``; the events packed, and whether a drop
        report was.

        Packed as queued when they can be; else each record prepared (text made valid text
        and cut, containers converted), the entry split where it would be too large, and
        the events that still cannot be packed counted as ``unencodable``.
        """
        try:
            bodies.append(pack_body(records))
        except (TypeError, ValueError, OverflowError):
            pass
        else:
            reported = records[-1][0] == DROPPED_KIND
            return len(records) - reported, reported
        kept: list[Record] = []
        size = events = 0
        reported = False
        for queued in records:
            is_report = queued[0] == DROPPED_KIND
            try:
                record = queued if is_report else prepare(*queued, clean=True)
                length = len(pack_body([record]))
            except Exception as exc:  # an event the wire cannot carry: count it
                if is_report:  # not an event: it stays unreported, for the next batch
                    self._log("report", "fleet drop report not encodable: %s", exc)
                else:
                    self._unencodable(queued[0], exc)
                continue
            if kept and size + length > _ENTRY_BUDGET:
                bodies.append(pack_body(kept))
                kept, size = [], 0
            kept.append(record)
            size += length
            if is_report:
                reported = True
            else:
                events += 1
        if kept:
            bodies.append(pack_body(kept))
        return events, reported

    def _log(self, key: str, message: str, *args: object) -> None:
        if self._throttle.allow(key):
            logger.warning(message, *args)


def _one_write(cls: type[Any]) -> type[Any]:
    """``cls``, writing a command with one ``sendall`` instead of one per 6 kB chunk.

    Every write releases the GIL, and a thread taking it back from a busy task thread first
    waits out the interpreter's switch interval (5 ms): a batch written in a dozen pieces
    spent most of its time waiting, and a process running tasks back to back filled the
    queue faster than it drained.
    """
    send = cls.send_packed_command

    def send_packed_command(self: Any, command: Any, check_health: bool = True) -> None:
        if isinstance(command, list) and len(command) > 1:
            command = [b"".join(command)]
        send(self, command, check_health)

    return type(cls.__name__, (cls,), {"send_packed_command": send_packed_command})


class _Collector(Collector):
    """The forwarder's health in the worker's registry."""

    def __init__(self, forwarder: FleetForwarder) -> None:
        self._forwarder = forwarder

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        f = self._forwarder
        dropped = CounterMetricFamily(
            "stem_observe_fleet_dropped", "Events not forwarded to the fleet stream, by "
            "reason (queue_full, closed, unencodable).", labels=["reason"])
        for reason, count in sorted(f.dropped_by_reason().items()):
            dropped.add_metric([reason], count)
        yield dropped
        yield CounterMetricFamily(
            "stem_observe_fleet_forwarded", "Events written to the fleet stream.",
            value=f.forwarded)
        yield GaugeMetricFamily(
            "stem_observe_fleet_queue_size", "Events waiting to be forwarded.",
            value=f.queued)


_FORWARDERS: weakref.WeakSet[FleetForwarder] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for forwarder in list(_FORWARDERS):
        forwarder.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
