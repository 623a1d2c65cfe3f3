"""The alert rules ``stem-observe demo`` runs: the shipped defaults' ideas on demo time scales
(windows of seconds, not minutes), so alerts fire and resolve within a one-minute run."""

from __future__ import annotations

__all__ = ["DEMO_RULES"]

DEMO_RULES = """
rules:
  - name: DeadLetterGrowth
    kind: rate
    signals: [task-dead-lettered]
    group_by: [queue]
    window: 15s
    threshold: 1
    for: 0s
    keep_firing_for: 5s
    severity: error
    annotations:
      summary: "{value} tasks dead-lettered on queue {queue} in {window}"
      runbook_url: https://github.com/stem-observe/stem-observe/blob/main/docs/runbooks.md#stemdeadlettergrowth
  - name: RetryRateHigh
    kind: rate
    signals: [task-retry]
    group_by: [queue]
    window: 15s
    threshold: 8
    for: 5s
    keep_firing_for: 5s
    severity: warning
    annotations:
      summary: "{value} retries on queue {queue} in {window} (threshold {threshold})"
routing:
  receivers:
    - name: console
      kind: console
  route:
    receiver: console
    group_by: [alertname, queue]
    group_wait: 2s
    group_interval: 5s
    repeat_interval: 1h
    send_resolved: true
"""
