"""Stem's Redis key templates, for configurable broker and backend namespaces.

Broker keys (``<ns>`` = broker namespace, default ``stem``)::

    <ns>:stream:<queue>            priority 0 stream      <ns>:stream:<queue>:p1..p9
    <ns>:group:<queue>             consumer group name on all ten streams
    <ns>:delayed:<queue>           zset, score = due epoch ms, member = envelope JSON
    <ns>:dead:<queue>              list, LPUSH'd dead-letter JSON (newest first)

Result-backend keys (``<ns>`` = backend namespace)::

    <ns>:result:<task id>          status record JSON, PX 1 day
    <ns>:worker:heartbeat:<id>     heartbeat JSON, PX 60 s
    <ns>:worker:heartbeats         set of worker ids

and the pub/sub channel ``stem:heartbeat:<worker namespace>`` (its prefix is fixed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["HEARTBEAT_CHANNEL_PREFIX", "PRIORITIES", "StemKeys"]

#: Priorities 1..9 have their own streams; 0 (and below) use the base stream.
PRIORITIES: Final = tuple(range(1, 10))
HEARTBEAT_CHANNEL_PREFIX: Final = "stem:heartbeat:"


@dataclass(frozen=True, slots=True)
class StemKeys:
    """Key names for one deployment. ``broker`` and ``backend`` are the two namespaces."""

    broker: str = "stem"
    backend: str = "stem"

    # ----------------------------------------------------------------- broker
    def stream(self, queue: str, priority: int = 0) -> str:
        """The stream a message of ``priority`` goes to (values >= 9 clamp to 9)."""
        if priority <= 0:
            return f"{self.broker}:stream:{queue}"
        return f"{self.broker}:stream:{queue}:p{min(priority, 9)}"

    def streams(self, queue: str) -> tuple[str, ...]:
        """All ten streams of a queue, highest priority first (Stem's read order)."""
        return (*(self.stream(queue, p) for p in reversed(PRIORITIES)), self.stream(queue))

    def group(self, queue: str) -> str:
        return f"{self.broker}:group:{queue}"

    def delayed(self, queue: str) -> str:
        return f"{self.broker}:delayed:{queue}"

    def dead(self, queue: str) -> str:
        return f"{self.broker}:dead:{queue}"

    def stream_pattern(self) -> str:
        """``SCAN`` pattern matching every queue stream (and its priority siblings)."""
        return f"{self.broker}:stream:*"

    def dead_pattern(self) -> str:
        return f"{self.broker}:dead:*"

    def delayed_pattern(self) -> str:
        return f"{self.broker}:delayed:*"

    def queue_of_stream(self, key: str) -> str | None:
        """The queue a stream key belongs to (``…:p3`` suffixes stripped), or ``None``."""
        prefix = f"{self.broker}:stream:"
        if not key.startswith(prefix):
            return None
        queue = key[len(prefix):]
        head, sep, tail = queue.rpartition(":p")
        if sep and tail.isascii() and tail.isdigit() and 1 <= int(tail) <= 9 and head:
            queue = head
        return queue or None

    def queue_of(self, key: str, kind: str) -> str | None:
        """The queue of a ``dead`` or ``delayed`` key, or ``None``."""
        prefix = f"{self.broker}:{kind}:"
        return key[len(prefix):] or None if key.startswith(prefix) else None

    # ----------------------------------------------------------------- backend
    def result(self, task_id: str) -> str:
        return f"{self.backend}:result:{task_id}"

    def result_pattern(self) -> str:
        return f"{self.backend}:result:*"

    def task_id_of_result(self, key: str) -> str | None:
        prefix = f"{self.backend}:result:"
        return key[len(prefix):] or None if key.startswith(prefix) else None

    def heartbeat(self, worker_id: str) -> str:
        return f"{self.backend}:worker:heartbeat:{worker_id}"

    def heartbeats(self) -> str:
        return f"{self.backend}:worker:heartbeats"

    @staticmethod
    def heartbeat_channel(worker_namespace: str = "stem") -> str:
        """The pub/sub channel of heartbeats (its ``stem:`` prefix is hard-coded in Stem)."""
        return f"{HEARTBEAT_CHANNEL_PREFIX}{worker_namespace}"
