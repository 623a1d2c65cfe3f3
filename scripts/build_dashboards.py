"""Writes the Grafana dashboards in ``dashboards/``: JSON importable through Grafana's import
dialog (Grafana 10.4 or later), the Prometheus data source chosen at import.

    python scripts/build_dashboards.py           # write dashboards/*.json
    python scripts/build_dashboards.py --check   # exit 1 when a committed file differs

The five dashboards share their variables, annotations, panel defaults and layout through
``dashboard_kit.py``; ``tests/unit/test_dashboards.py`` checks the committed JSON is what this
writes. Queries read the metric names of the ``stem`` profile and the recording rules in
``alerts/prometheus`` (``queue:stem_tasks_*:rate5m`` …).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from dashboard_kit import (
    NAMESPACE,
    NQ,
    NS,
    NW,
    PER_S,
    QUEUE,
    QUEUE_BY_DEPTH,
    QUEUE_LINKS,
    TASK,
    TQ,
    TRACE_URL,
    WORKER,
    WORKER_LINKS,
    WORKERS_LINK,
    Json,
    Q,
    Section,
    bargauge,
    dashboard,
    firing_alerts,
    heatmap,
    or_zero,
    quantile,
    quantiles,
    rate,
    sel,
    stat,
    table,
    target,
    text,
    timeseries,
    total_in_range,
)

DASHBOARD_DIR: Final = Path(__file__).resolve().parent.parent / "dashboards"
FAILURE_RATIO_THRESHOLD: Final = 0.1  # StemFailureRatioHigh's threshold


def overview() -> Json:
    started = "queue:stem_tasks_started:rate5m"
    return dashboard(
        "stem-overview", "Stem / Overview",
        "Throughput, outcomes, task duration with exemplars, backlog and workers of a Stem "
        "deployment, from stem-observe's metrics and the recording rules in alerts/prometheus.",
        variables=[NAMESPACE, QUEUE, TRACE_URL],
        annotations=[firing_alerts("Stem.*", QUEUE, NAMESPACE)],
        sections=[
            Section(None)
            .add(stat("Tasks started", "Executions started per second, selected queues.",
                      f"sum({sel(started, Q)})", unit=PER_S), 4, 4)
            .add(stat("Worst failure ratio", "Highest share of finished runs that failed for "
                      "good on one queue over 5m (what StemFailureRatioHigh compares).",
                      f"max({sel('queue:stem_tasks_failure:ratio5m', Q)})",
                      unit="percentunit", steps=[(0.05, "orange"),
                                                 (FAILURE_RATIO_THRESHOLD, "red")]), 4, 4)
            .add(stat("Dead letters in range", "Tasks moved to a dead-letter queue in the "
                      "time range.",
                      or_zero(total_in_range('stem_tasks_dead_lettered_total', Q)),
                      steps=[(1, "red")], in_range=True), 4, 4)
            .add(stat("Backlog", "Messages waiting to be delivered, selected queues.",
                      f"sum({sel('stem_queue_depth', NQ)})"), 4, 4)
            .add(stat("Oldest waiting message", "Age of the oldest message not yet "
                      "delivered, on any selected queue.",
                      f"max({sel('stem_queue_oldest_message_age_seconds', NQ)})", unit="s",
                      steps=[(60, "orange"), (300, "red")]), 4, 4)
            .add(stat("Workers up", "Workers running and heartbeating.",
                      f"sum({sel('stem_worker_up', NS)})", links=WORKERS_LINK), 4, 4),
            Section("Task outcomes")
            .add(timeseries(
                "Outcomes", "Per second over 5m, all selected queues (recording rules "
                "queue:stem_tasks_*:rate5m).",
                [target(f"sum({sel(f'queue:stem_tasks_{o}:rate5m', Q)})", o)
                 for o in ("started", "succeeded", "retried", "failed", "dead_lettered")],
                unit=PER_S))
            .add(timeseries("Throughput by queue", "Executions started per second.",
                            [target(sel(started, Q), "{{queue}}")], unit=PER_S,
                            links=QUEUE_LINKS))
            .add(timeseries("Succeeded by queue", "Executions that succeeded, per second.",
                            [target(sel("queue:stem_tasks_succeeded:rate5m", Q), "{{queue}}")],
                            unit=PER_S, links=QUEUE_LINKS), 8)
            .add(timeseries(
                "Retries by queue, against the 1h baseline", "Attempts that failed and were "
                "retried, per second over 5m; dashed: the queue's average rate over the hour "
                "before the last 5 minutes, the baseline StemRetrySpike compares against (none "
                "until Prometheus holds retry counters from before the last 5 minutes).",
                [target(sel("queue:stem_tasks_retried:rate5m", Q), "{{queue}}"),
                 target(sel("queue:stem_tasks_retried:rate1h", Q), "{{queue}} 1h baseline")],
                unit=PER_S, links=QUEUE_LINKS, dashed=".* 1h baseline"), 8)
            .add(timeseries("Failures by queue", "Tasks that failed for good, per second.",
                            [target(sel("queue:stem_tasks_failed:rate5m", Q), "{{queue}}")],
                            unit=PER_S, links=QUEUE_LINKS), 8)
            .add(timeseries("Failure ratio by queue", "failed / (succeeded + failed) over 5m; "
                            "the red line is StemFailureRatioHigh's threshold.",
                            [target(sel("queue:stem_tasks_failure:ratio5m", Q), "{{queue}}")],
                            unit="percentunit", threshold=FAILURE_RATIO_THRESHOLD,
                            links=QUEUE_LINKS))
            .add(timeseries("Dead letters by queue", "Tasks moved to a dead-letter queue, per "
                            "second over 5m.",
                            [target(sel("queue:stem_tasks_dead_lettered:rate5m", Q),
                                    "{{queue}}")], unit=PER_S, links=QUEUE_LINKS)),
            Section("Task duration")
            .add(timeseries(
                "Task duration p50 / p95 / p99", "Execution time of every outcome. The "
                "diamonds are exemplars: hover one for its task_id and trace_id (the trace "
                "link comes from the data source's exemplar setting).",
                quantiles("stem_task_duration_seconds", Q, exemplar=True), unit="s"))
            .add(timeseries(
                "Task duration p95 by queue", "95th percentile execution time per queue, "
                "with exemplars.",
                [target(quantile(0.95, "stem_task_duration_seconds", Q, by="queue"),
                        "{{queue}}", exemplar=True)], unit="s", links=QUEUE_LINKS)),
            Section("Backlog and workers")
            .add(timeseries("Backlog by queue", "Messages waiting to be delivered.",
                            [target(f"sum by (queue) ({sel('stem_queue_depth', NQ)})",
                                    "{{queue}}")], links=QUEUE_LINKS), 8)
            .add(timeseries("Oldest waiting message by queue", "Age of the oldest message "
                            "not yet delivered.",
                            [target("max by (queue) "
                                    f"({sel('stem_queue_oldest_message_age_seconds', NQ)})",
                                    "{{queue}}")], unit="s", links=QUEUE_LINKS), 8)
            .add(timeseries("Workers up", "Workers running and heartbeating; dashed: workers "
                            "known (up or not yet forgotten).",
                            [target(f"sum by (namespace) ({sel('stem_worker_up', NS)})",
                                    "{{namespace}} up"),
                             target(f"count by (namespace) ({sel('stem_worker_up', NS)})",
                                    "{{namespace}} known")],
                            dashed=".* known", stepped=True, links=WORKER_LINKS), 8),
        ])


def task() -> Json:
    def outcome(name: str, *, error: bool = False) -> Json:
        total = f"sum({rate(f'stem_tasks_{name}_total', TQ)})"
        return target(or_zero(total) if error else total, name, exemplar=error)

    def in_range(title: str, metric: str, what: str) -> Json:
        return stat(title, f"{what} in the time range.",
                    or_zero(total_in_range(metric, TQ)), steps=[(1, "red")],
                    in_range=True)

    return dashboard(
        "stem-task", "Stem / Task",
        "One task: rates by outcome, duration and queue wait with exemplars, failures by "
        "error type, dead letters by reason, retries.",
        variables=[QUEUE, TASK, TRACE_URL],
        annotations=[firing_alerts("Stem.*", QUEUE, TASK)],
        sections=[
            Section(None)
            .add(stat("Started", "Executions started per second.",
                      f"sum({rate('stem_tasks_started_total', TQ)})", unit=PER_S), 4, 4)
            .add(stat("Duration p95", "95th percentile execution time.",
                      quantile(0.95, "stem_task_duration_seconds", TQ), unit="s"), 4, 4)
            .add(in_range("Failed", "stem_tasks_failed_total", "Runs that failed for good"),
                 4, 4)
            .add(in_range("Retried", "stem_tasks_retried_total", "Attempts retried"), 4, 4)
            .add(in_range("Dead-lettered", "stem_tasks_dead_lettered_total",
                          "Tasks moved to a dead-letter queue"), 4, 4)
            .add(in_range("Revoked", "stem_tasks_revoked_total", "Tasks revoked"), 4, 4),
            Section("Outcomes")
            .add(timeseries(
                "Rates by outcome", "Per second. Failed, retried, revoked and dead-lettered "
                "carry exemplars: hover a diamond for the task_id and trace_id of one such "
                "run.",
                [outcome("published"), outcome("received"), outcome("started"),
                 outcome("succeeded"), outcome("failed", error=True),
                 outcome("retried", error=True), outcome("revoked", error=True),
                 outcome("dead_lettered", error=True)], unit=PER_S), 24, 9)
            .add(timeseries("Started by queue", "Executions started per second, per queue.",
                            [target(f"sum by (queue) ({rate('stem_tasks_started_total', TQ)})",
                                    "{{queue}}")], unit=PER_S, links=QUEUE_LINKS))
            .add(timeseries("Retries by queue", "Attempts that failed and were retried, per "
                            "second, with exemplars.",
                            [target(f"sum by (queue) ({rate('stem_tasks_retried_total', TQ)})",
                                    "{{queue}}", exemplar=True)], unit=PER_S,
                            links=QUEUE_LINKS)),
            Section("Duration and queue wait")
            .add(timeseries("Duration p50 / p95 / p99", "Execution time of every outcome, "
                            "with exemplars on p99.",
                            quantiles("stem_task_duration_seconds", TQ, exemplar=True),
                            unit="s"))
            .add(heatmap("Duration heatmap", "How many runs took how long; the dots are "
                         "exemplars (task_id, trace_id).", "stem_task_duration_seconds", TQ))
            .add(timeseries("Queue wait p50 / p95 / p99", "Time from publish (or ETA) to the "
                            "start of execution.",
                            quantiles("stem_task_queue_wait_seconds", TQ), unit="s"))
            .add(timeseries("Queue wait p95 by queue", "95th percentile queue wait per queue.",
                            [target(quantile(0.95, "stem_task_queue_wait_seconds", TQ,
                                             by="queue"), "{{queue}}")], unit="s",
                            links=QUEUE_LINKS)),
            Section("Failures and dead letters")
            .add(timeseries("Failures by error type", "Runs that failed for good, by "
                            "exception type, per second, with exemplars.",
                            [target("sum by (error_type) "
                                    f"({rate('stem_task_failures_by_error_total', TQ)})",
                                    "{{error_type}}", exemplar=True)], unit=PER_S))
            .add(timeseries("Dead letters by reason", "Tasks moved to a dead-letter queue, by "
                            "reason, per second, with exemplars.",
                            [target("sum by (reason) "
                                    f"({rate('stem_tasks_dead_lettered_total', TQ)})",
                                    "{{reason}}", exemplar=True)], unit=PER_S))
            .add(table("Failures by error type in range", "Final failures in the time range.",
                       [("Failures", "sort_desc(" + total_in_range(
                           "stem_task_failures_by_error_total", TQ, "queue, error_type") + ")")],
                       ["queue", "error_type"]))
            .add(table("Dead letters by reason in range", "Dead letters in the time range; "
                       "`stem-observe dlq list --queue QUEUE` lists them.",
                       [("Dead letters", "sort_desc(" + total_in_range(
                           "stem_tasks_dead_lettered_total", TQ, "queue, reason") + ")")],
                       ["queue", "reason"]))
            .add(text("From a point on a graph to the task", TASK_HELP), 24, 5),
        ])


TASK_HELP: Final = (
    "The diamonds on the duration, failure, retry and dead-letter panels are **exemplars**: "
    "hover one to see the `task_id` and `trace_id` of a run behind that point. When the "
    "Prometheus data source links `trace_id` (see the README), the link opens the trace, "
    "here at `${trace_url}<trace_id>` (change *Trace URL* above). "
    "`stem-observe dlq show --queue QUEUE TASK_ID` shows a dead letter; "
    "`stem-observe dlq replay --queue QUEUE --task ${task} --dry-run` what a replay would "
    "send again.")


def queues() -> Json:
    def by_queue(func: str, metric: str) -> str:
        return f"{func} by (queue) ({sel(metric, NQ)})"

    return dashboard(
        "stem-queues", "Stem / Queues and dead letters",
        "Backlog, in-flight, delayed and overdue messages, dead-letter queues, queue wait "
        "and failure ratio per queue.",
        variables=[NAMESPACE, QUEUE_BY_DEPTH, TRACE_URL],
        annotations=[firing_alerts("Stem.*", QUEUE_BY_DEPTH, NAMESPACE)],
        sections=[
            Section(None)
            .add(stat("Backlog", "Messages waiting to be delivered.",
                      f"sum({sel('stem_queue_depth', NQ)})"), 4, 4)
            .add(stat("In flight", "Messages delivered and not acknowledged.",
                      f"sum({sel('stem_queue_inflight', NQ)})"), 4, 4)
            .add(stat("Delayed", "Messages scheduled for later (ETA, retry backoff).",
                      f"sum({sel('stem_queue_delayed', NQ)})"), 4, 4)
            .add(stat("Overdue", "Delayed messages already past their due time: nothing is "
                      "moving them to the queue.",
                      f"sum({sel('stem_queue_delayed_overdue', NQ)})",
                      steps=[(1, "red")]), 4, 4)
            .add(stat("Dead-letter entries", "Entries in the dead-letter queues.",
                      f"sum({sel('stem_dlq_depth', NQ)})", steps=[(1, "red")]), 4, 4)
            .add(stat("Oldest dead letter", "Age of the oldest dead-letter entry.",
                      f"max({sel('stem_dlq_oldest_age_seconds', NQ)})", unit="s"), 4, 4),
            Section("Backlog")
            .add(timeseries("Backlog by queue", "Messages waiting to be delivered.",
                            [target(by_queue("sum", "stem_queue_depth"), "{{queue}}")],
                            links=QUEUE_LINKS))
            .add(timeseries("In flight by queue", "Messages delivered and not acknowledged.",
                            [target(by_queue("sum", "stem_queue_inflight"), "{{queue}}")],
                            links=QUEUE_LINKS))
            .add(timeseries("Delayed and overdue by queue", "Messages scheduled for later; "
                            "dashed: those already past their due time.",
                            [target(by_queue("sum", "stem_queue_delayed"), "{{queue}} delayed"),
                             target(by_queue("sum", "stem_queue_delayed_overdue"),
                                    "{{queue}} overdue")], dashed=".* overdue",
                            links=QUEUE_LINKS))
            .add(timeseries("Oldest waiting message by queue", "Age of the oldest message not "
                            "yet delivered.",
                            [target(by_queue("max", "stem_queue_oldest_message_age_seconds"),
                                    "{{queue}}")], unit="s", links=QUEUE_LINKS)),
            Section("Dead letters")
            .add(timeseries("Dead-letter queue depth", "Entries in each dead-letter queue.",
                            [target(by_queue("sum", "stem_dlq_depth"), "{{queue}}")],
                            links=QUEUE_LINKS), 8)
            .add(timeseries("Oldest dead letter by queue", "Age of the oldest entry of each "
                            "dead-letter queue.",
                            [target(by_queue("max", "stem_dlq_oldest_age_seconds"),
                                    "{{queue}}")], unit="s", links=QUEUE_LINKS), 8)
            .add(timeseries("Dead letters by queue and reason", "Tasks moved to a dead-letter "
                            "queue per second, with exemplars (task_id, trace_id).",
                            [target("sum by (queue, reason) "
                                    f"({rate('stem_tasks_dead_lettered_total', Q)})",
                                    "{{queue}} {{reason}}", exemplar=True)], unit=PER_S,
                            links=QUEUE_LINKS), 8),
            Section("Waiting and failing")
            .add(timeseries("Queue wait p50 / p95 / p99", "Time from publish (or ETA) to the "
                            "start of execution, selected queues.",
                            quantiles("stem_task_queue_wait_seconds", Q), unit="s"))
            .add(timeseries("Queue wait p95 by queue", "95th percentile queue wait per queue.",
                            [target(quantile(0.95, "stem_task_queue_wait_seconds", Q,
                                             by="queue"), "{{queue}}")], unit="s",
                            links=QUEUE_LINKS))
            .add(timeseries("Failure ratio against the alert threshold", "failed / (succeeded "
                            "+ failed) over 5m (queue:stem_tasks_failure:ratio5m, the series "
                            "StemFailureRatioHigh reads); the red line is its threshold.",
                            [target(sel("queue:stem_tasks_failure:ratio5m", Q), "{{queue}}")],
                            unit="percentunit", threshold=FAILURE_RATIO_THRESHOLD,
                            links=QUEUE_LINKS))
            .add(table("Queues now", "The latest value of each queue gauge.",
                       [("Backlog", by_queue("sum", "stem_queue_depth")),
                        ("In flight", by_queue("sum", "stem_queue_inflight")),
                        ("Delayed", by_queue("sum", "stem_queue_delayed")),
                        ("Overdue", by_queue("sum", "stem_queue_delayed_overdue")),
                        ("Oldest waiting",
                         by_queue("max", "stem_queue_oldest_message_age_seconds")),
                        ("Dead letters", by_queue("sum", "stem_dlq_depth")),
                        ("Oldest dead letter", by_queue("max", "stem_dlq_oldest_age_seconds"))],
                       ["queue"], units=[("Oldest waiting", "s"),
                                         ("Oldest dead letter", "s")])),
        ])


def workers() -> Json:
    def by_worker(func: str, metric: str) -> str:
        return f"{func} by (worker) ({sel(metric, NW)})"

    heartbeat_age = ("time() - max by (worker) "
                     f"({sel('stem_worker_last_heartbeat_timestamp_seconds', NW)})")
    return dashboard(
        "stem-workers", "Stem / Workers and scheduler",
        "Workers up, in flight against concurrency, heartbeat age, and the scheduler's due, "
        "dispatched and failed entries and drift.",
        variables=[NAMESPACE, WORKER],
        annotations=[firing_alerts("Stem.*", WORKER, NAMESPACE)],
        sections=[
            Section(None)
            .add(stat("Workers up", "Workers running and heartbeating.",
                      f"sum({sel('stem_worker_up', NW)})"), 4, 4)
            .add(stat("Workers down", "Workers known but not up (shut down, or heartbeat "
                      "stale).", f"sum(1 - {sel('stem_worker_up', NW)})",
                      steps=[(1, "red")]), 4, 4)
            .add(stat("In flight", "Tasks executing.",
                      f"sum({sel('stem_worker_inflight', NW)})"), 4, 4)
            .add(stat("Concurrency", "Task slots of the selected workers.",
                      f"sum({sel('stem_worker_concurrency', NW)})"), 4, 4)
            .add(stat("Utilisation", "In flight / concurrency.",
                      f"sum({sel('stem_worker_inflight', NW)}) / "
                      f"sum({sel('stem_worker_concurrency', NW)})", unit="percentunit",
                      steps=[(0.9, "orange")]), 4, 4)
            .add(stat("Stalest heartbeat", "Seconds since the oldest last heartbeat.",
                      "max(time() - "
                      f"{sel('stem_worker_last_heartbeat_timestamp_seconds', NW)})",
                      unit="s", steps=[(60, "orange"), (180, "red")]), 4, 4),
            Section("Workers")
            .add(timeseries("Up by worker", "1 while the worker runs and heartbeats.",
                            [target(by_worker("max", "stem_worker_up"), "{{worker}}")],
                            stepped=True))
            .add(timeseries("Seconds since last heartbeat",
                            "time() - stem_worker_last_heartbeat_timestamp_seconds.",
                            [target(heartbeat_age, "{{worker}}")], unit="s"))
            .add(timeseries("In flight against concurrency", "Tasks executing; dashed: the "
                            "worker's concurrency.",
                            [target(by_worker("sum", "stem_worker_inflight"),
                                    "{{worker}} in flight"),
                             target(by_worker("sum", "stem_worker_concurrency"),
                                    "{{worker}} concurrency")], dashed=".* concurrency"))
            .add(table("Workers now", "The latest value of each worker gauge.",
                       [("Up", by_worker("max", "stem_worker_up")),
                        ("In flight", by_worker("sum", "stem_worker_inflight")),
                        ("Concurrency", by_worker("sum", "stem_worker_concurrency")),
                        ("Since heartbeat", heartbeat_age)],
                       ["worker"], units=[("Since heartbeat", "s")])),
            Section("Scheduler")
            .add(timeseries("Schedule entries due and dispatched", "Per second, by schedule; "
                            "dashed: dispatched.",
                            [target(f"sum by (schedule) ({rate('stem_scheduler_due_total')})",
                                    "{{schedule}} due"),
                             target("sum by (schedule) "
                                    f"({rate('stem_scheduler_dispatch_success_total')})",
                                    "{{schedule}} dispatched")],
                            unit=PER_S, dashed=".* dispatched"))
            .add(timeseries("Dispatch failures", "Schedule dispatches that failed, per "
                            "second.",
                            [target(or_zero(
                                f"sum({rate('stem_scheduler_dispatch_failed_total')})"),
                                "failed")], unit=PER_S, threshold=0))
            .add(timeseries("Drift p50 / p95 / p99", "How late schedule entries were "
                            "dispatched.", quantiles("stem_scheduler_drift_seconds"),
                            unit="s"))
            .add(timeseries("Drift p95 by schedule", "95th percentile drift per schedule.",
                            [target(quantile(0.95, "stem_scheduler_drift_seconds",
                                             by="schedule"), "{{schedule}}")], unit="s")),
        ])


def bridge() -> Json:
    def errors(*series: tuple[str, str]) -> list[Json]:
        return [target(or_zero(f"sum({rate(metric)})"), name) for name, metric in series]

    return dashboard(
        "stem-bridge", "Stem / stem-observe health",
        "The bridge's own health: receiver errors, dropped spans and events, the Stem "
        "watcher, the alerting engine, notifications, the Redis outbox and fleet mode.",
        variables=[],
        annotations=[firing_alerts("StemObserve.*")],
        sections=[
            Section(None)
            .add(stat("Receiver errors in range", "Exceptions raised by signal receivers "
                      "(the task was not affected).",
                      or_zero(total_in_range('stem_observe_receiver_errors_total')),
                      steps=[(1, "red")], in_range=True), 4, 4)
            .add(stat("Open spans", "Task spans started and not yet ended.",
                      "sum(stem_observe_open_spans)"), 4, 4)
            .add(stat("Watcher reaches Redis", "1 when the Stem watcher's last poll reached "
                      "Redis (lowest of all instances).", "min(stem_observe_stem_redis_up)",
                      base="red", steps=[(1, "green")]), 4, 4)
            .add(stat("Keyspace notifications", "1 when status changes arrive by keyspace "
                      "notifications; 0: the periodic scan alone finds them.",
                      "min(stem_observe_stem_keyspace_notifications)"), 4, 4)
            .add(stat("Queues watched", "Queues the Stem watcher sees.",
                      "max(stem_observe_stem_queues)"), 4, 4)
            .add(stat("Alerts firing", "Alerts of the built-in rules engine now firing.",
                      'sum(stem_observe_alerts{state="firing"})', steps=[(1, "red")]), 4, 4),
            Section("Signals and spans")
            .add(timeseries("Receiver errors and label overflow", "Per second: receiver "
                            "exceptions, and label values folded into __overflow__ because a "
                            "label reached its limit.",
                            errors(("receiver errors", "stem_observe_receiver_errors_total"),
                                   ("label overflow", "stem_observe_label_overflow_total")),
                            unit=PER_S, threshold=0), 8)
            .add(timeseries("Spans dropped by reason", "open_span_limit: ended early; "
                            "late_outcome: outcomes of those spans; export_failed: not "
                            "delivered by the OTLP exporter.",
                            [target("sum by (reason) "
                                    f"({rate('stem_observe_spans_dropped_total')})",
                                    "{{reason}}")], unit=PER_S), 8)
            .add(timeseries("Open spans", "Task spans started and not yet ended.",
                            [target("sum(stem_observe_open_spans)", "open spans")]), 8),
            Section("Stem watcher (serve)")
            .add(timeseries("Transitions by source", "Task status transitions turned into "
                            "signals, by how they were seen.",
                            [target("sum by (source) "
                                    f"({rate('stem_observe_stem_transitions_total')})",
                                    "{{source}}")], unit=PER_S), 8)
            .add(timeseries("Poll duration p50 / p95 / p99", "One watcher poll cycle.",
                            quantiles("stem_observe_stem_poll_seconds"), unit="s"), 8)
            .add(timeseries("Watcher errors and drops", "Per second: items that could not be "
                            "parsed, poll steps skipped on bad data, items seen but not sent.",
                            errors(("parse errors", "stem_observe_stem_parse_errors_total"),
                                   ("step errors", "stem_observe_stem_step_errors_total"),
                                   ("dropped", "stem_observe_stem_dropped_total")),
                            unit=PER_S, threshold=0), 8),
            Section("Alerting engine")
            .add(timeseries("Alerts by state", "Alerts of the built-in rules engine.",
                            [target("sum by (state) (stem_observe_alerts)", "{{state}}")],
                            stepped=True), 6)
            .add(timeseries("Rule errors by stage", "Errors the engine caught, per second.",
                            [target("sum by (stage) "
                                    f"({rate('stem_observe_rule_errors_total')})",
                                    "{{stage}}")], unit=PER_S, threshold=0), 6)
            .add(timeseries("Evaluation time p50 / p95 / p99", "One tick of the engine.",
                            quantiles("stem_observe_rule_evaluation_seconds"), unit="s"), 6)
            .add(bargauge("Alert states restored in range", "Saved alert states read at "
                          "start-up, by outcome.",
                          total_in_range("stem_observe_alert_states_restored_total",
                                         by="outcome"),
                          "{{outcome}}"), 6),
            Section("Notifications")
            .add(timeseries("Notifications by receiver and outcome", "Deliveries per second: "
                            "sent, retried, rate_limited, failed, dead_lettered, handed_back.",
                            [target("sum by (receiver, outcome) "
                                    f"({rate('stem_observe_notifications_total')})",
                                    "{{receiver}} {{outcome}}")], unit=PER_S))
            .add(bargauge("Notifications in range", "Deliveries by receiver and outcome.",
                          total_in_range("stem_observe_notifications_total",
                                         by="receiver, outcome"),
                          "{{receiver}} {{outcome}}"))
            .add(timeseries("Notification latency", "From hand-over to a successful delivery, "
                            "retries and waits included.",
                            [target(quantile(0.5, "stem_observe_notification_latency_seconds",
                                             by="receiver"), "{{receiver}} p50"),
                             target(quantile(0.95, "stem_observe_notification_latency_seconds",
                                             by="receiver"), "{{receiver}} p95")],
                            unit="s", dashed=".* p95"), 8)
            .add(timeseries("Delivery queue depth", "Notifications waiting for a receiver's "
                            "delivery thread.",
                            [target("sum by (receiver) (stem_observe_notification_queue_depth)",
                                    "{{receiver}}")]), 8)
            .add(timeseries("Notifications dropped and failed", "Per second: dropped because "
                            "a receiver's queue was full; given up after retries.",
                            [*errors(("dropped", "stem_observe_notifications_dropped_total")),
                             target(or_zero("sum(" + rate("stem_observe_notifications_total",
                                                          'outcome="failed"') + ")"),
                                    "failed")], unit=PER_S, threshold=0), 8),
            Section("Redis outbox (serve --state-redis)", collapsed=True)
            .add(timeseries("Outbox length", "Entries in each receiver's outbox stream (the "
                            "leader's view).",
                            [target("sum by (receiver) (stem_observe_outbox_length)",
                                    "{{receiver}}")]), 6)
            .add(timeseries("Sending leader", "1 on the instance holding a receiver's sending "
                            "lease.",
                            [target("max by (receiver, instance) (stem_observe_outbox_leader)",
                                    "{{receiver}} {{instance}}")], stepped=True), 6)
            .add(timeseries("Offered to the outbox", "By receiver and outcome: queued, "
                            "duplicate, unavailable (sent locally), full.",
                            [target("sum by (receiver, outcome) "
                                    f"({rate('stem_observe_outbox_enqueued_total')})",
                                    "{{receiver}} {{outcome}}")], unit=PER_S), 6)
            .add(timeseries("Outbox reclaimed and dead letters", "Per second: entries taken "
                            "over from an instance that held them too long; entries moved to "
                            "the dead stream.",
                            errors(("reclaimed", "stem_observe_outbox_reclaimed_total"),
                                   ("dead letters", "stem_observe_outbox_dead_letters_total")),
                            unit=PER_S), 6),
            Section("Fleet stream consumer (serve --fleet)", collapsed=True)
            .add(stat("Fleet stream reachable", "1 when the last read of the fleet stream "
                      "reached Redis (lowest of all instances).",
                      "min(stem_observe_fleet_redis_up)", base="red",
                      steps=[(1, "green")]), 6)
            .add(timeseries("Fleet events by kind", "Events read from the fleet stream and "
                            "emitted, per second.",
                            [target("sum by (kind) "
                                    f"({rate('stem_observe_fleet_events_total')})",
                                    "{{kind}}")], unit=PER_S), 6)
            .add(timeseries("Claimed from stopped consumers", "Entries claimed from consumers "
                            "that stopped before acknowledging them, per second.",
                            [target(f"sum({rate('stem_observe_fleet_claimed_total')})",
                                    "claimed")], unit=PER_S), 6)
            .add(timeseries("Fleet parse errors and worker drops", "Per second: stream "
                            "entries that could not be decoded; events workers could not "
                            "forward, as they reported them.",
                            errors(("parse errors", "stem_observe_fleet_parse_errors_total"),
                                   ("dropped by workers",
                                    "stem_observe_fleet_dropped_events_total")),
                            unit=PER_S, threshold=0), 6),
            Section("Fleet forwarder (worker processes)", collapsed=True)
            .add(timeseries("Forwarded", "Events written to the fleet stream, per second, "
                            "all scraped workers.",
                            [target(f"sum({rate('stem_observe_fleet_forwarded_total')})",
                                    "forwarded")], unit=PER_S), 8)
            .add(timeseries("Forwarder queue", "Events waiting to be forwarded.",
                            [target("sum(stem_observe_fleet_queue_size)", "queued")]), 8)
            .add(timeseries("Forwarder drops", "Events not forwarded (queue full, closed, "
                            "unencodable), per second.",
                            errors(("dropped", "stem_observe_fleet_dropped_total")),
                            unit=PER_S, threshold=0), 8),
        ])


DASHBOARDS: Final[dict[str, Callable[[], Json]]] = {
    "stem-overview.json": overview,
    "stem-task.json": task,
    "stem-queues.json": queues,
    "stem-workers.json": workers,
    "stem-bridge.json": bridge,
}

def render(board: Json) -> str:
    return json.dumps(board, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def build() -> dict[str, str]:
    """File name → JSON text of every dashboard."""
    return {name: render(make()) for name, make in DASHBOARDS.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed files instead of writing them")
    args = parser.parse_args(argv)
    stale = []
    for name, content in build().items():
        path = DASHBOARD_DIR / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != content:
                stale.append(name)
        else:
            DASHBOARD_DIR.mkdir(exist_ok=True)
            path.write_text(content, encoding="utf-8")
    if stale:
        print("out of date: " + ", ".join(stale) + " (run scripts/build_dashboards.py)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
