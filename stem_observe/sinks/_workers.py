"""Worker series: up, in flight, concurrency and last heartbeat, with staleness and expiry.

A worker is *up* from ``worker-ready`` or a heartbeat until ``worker-shutdown`` or until its
heartbeat is older than ``worker_stale_factor`` times its interval; that is judged when the
metrics are collected, so a worker that crashed without a word reads 0 within one scrape.
A worker unseen for ``worker_forget_after_s`` loses its series and frees its label slot:
worker ids often carry a pid, and restarts must not exhaust the label limit.

In flight has one writer per worker: in-process task signals count up and down, and a
heartbeat (which reports the worker's own count) replaces the count.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from stem_observe.config import Settings
from stem_observe.sinks._instruments import Spec

__all__ = ["WorkerGauges"]

_ROLES = ("worker_up", "worker_inflight", "worker_concurrency", "worker_last_heartbeat")


class _Worker:
    __slots__ = ("children", "inflight", "interval_s", "label", "labels", "last_beat",
                 "last_seen", "stopped")

    def __init__(
        self, label: str, labels: dict[str, tuple[str, ...]], children: dict[str, Any],
        interval_s: float,
    ) -> None:
        self.label = label
        self.labels = labels  # role -> the label values of its child
        self.children = children
        self.interval_s = interval_s
        self.last_seen = time.time()  # when a signal about it arrived
        self.last_beat = self.last_seen  # when it says it last beat
        self.inflight = 0
        self.stopped = False


class WorkerGauges:
    """Keeps the worker roles of ``metrics``; ``admit``/``forget`` bound the worker label."""

    def __init__(
        self,
        settings: Settings,
        metrics: dict[str, Any],
        specs: dict[str, Spec],
        admit: Callable[[str, str | None], str],
        forget: Callable[[str, str], None],
    ) -> None:
        self.settings = settings
        self._metrics = metrics
        self._specs = specs
        self._admit = admit
        self._forget = forget
        self._workers: dict[str, _Worker] = {}
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        self._lock = threading.Lock()

    def _get(self, worker_id: str, namespace: str | None = None) -> _Worker:
        worker = self._workers.get(worker_id)
        if worker is not None:
            return worker
        with self._lock:
            worker = self._workers.get(worker_id)
            if worker is None:
                values = {
                    "worker": self._admit("worker", worker_id),
                    "namespace": self._admit("namespace", namespace or "stem"),
                }
                labels = {
                    role: tuple(values[k] for k in self._specs[role].keys)
                    for role in _ROLES if role in self._specs
                }
                children = {
                    role: self._metrics[role].labels(*label_values)
                    for role, label_values in labels.items()
                }
                worker = _Worker(values["worker"], labels, children,
                                 self.settings.worker_heartbeat_interval_s)
                self._workers[worker_id] = worker
        return worker

    # ----------------------------------------------------------------- events

    def ready(self, worker_id: str, namespace: str, concurrency: int | None) -> None:
        worker = self._get(worker_id, namespace)
        worker.stopped = False
        worker.last_seen = worker.last_beat = time.time()
        worker.children["worker_up"].set(1)
        if concurrency is not None:
            worker.children["worker_concurrency"].set(concurrency)

    def heartbeat(
        self, worker_id: str, namespace: str, *, timestamp: float, inflight: int,
        concurrency: int | None, interval_s: float | None,
    ) -> None:
        worker = self._get(worker_id, namespace)
        worker.stopped = False
        # Staleness is judged by when the worker says it beat: a heartbeat read long after it
        # was written (a sidecar starting next to a dead worker's last key) is not fresh.
        worker.last_seen = time.time()
        worker.last_beat = min(worker.last_seen, timestamp)
        if interval_s:
            worker.interval_s = interval_s
        worker.inflight = inflight
        children = worker.children
        children["worker_up"].set(1)
        children["worker_inflight"].set(inflight)
        if "worker_last_heartbeat" in children:
            children["worker_last_heartbeat"].set(timestamp)
        if concurrency is not None and "worker_concurrency" in children:
            children["worker_concurrency"].set(concurrency)

    def shutdown(self, worker_id: str, namespace: str) -> None:
        worker = self._get(worker_id, namespace)
        worker.stopped = True
        worker.last_seen = time.time()
        worker.inflight = 0
        worker.children["worker_up"].set(0)
        worker.children["worker_inflight"].set(0)

    def task_started(self, worker_id: str) -> None:
        worker = self._get(worker_id)
        worker.inflight += 1
        worker.children["worker_inflight"].set(worker.inflight)

    def task_finished(self, worker_id: str) -> None:
        worker = self._get(worker_id)
        worker.inflight = max(0, worker.inflight - 1)
        worker.children["worker_inflight"].set(worker.inflight)

    def forget(self, worker_id: str) -> None:
        """Drop a worker's series now (its source says it is gone)."""
        worker = self._workers.get(worker_id)
        if worker is not None:
            self._remove(worker_id, worker)

    # ----------------------------------------------------------------- collection

    def sweep(self, now: float | None = None) -> None:
        """Mark stale workers down and forget long-gone ones (called at collection)."""
        now = time.time() if now is None else now
        stale_factor = self.settings.worker_stale_factor
        forget_after = self.settings.worker_forget_after_s
        for worker_id, worker in list(self._workers.items()):
            age = now - worker.last_seen
            if age > forget_after:
                self._remove(worker_id, worker)
            elif not worker.stopped and (
                now - worker.last_beat > stale_factor * worker.interval_s
            ):
                worker.children["worker_up"].set(0)

    def _remove(self, worker_id: str, worker: _Worker) -> None:
        with self._lock:
            if self._workers.get(worker_id) is not worker:
                return
            del self._workers[worker_id]
        for role, label_values in worker.labels.items():
            with contextlib.suppress(KeyError):
                self._metrics[role].remove(*label_values)
        self._forget("worker", worker.label)

