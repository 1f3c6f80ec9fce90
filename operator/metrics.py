"""Prometheus metrics of the operator (served on ``EDITFLOW_OPERATOR__METRICS_PORT``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PHASES = Counter("editflow_editjob_phase_transitions_total", "EditJob phase changes", ["phase"])
JOBS_CREATED = Counter("editflow_jobs_created_total", "GPU Jobs created (one per attempt)")
COMPLETIONS = Counter(
    "editflow_completions_published_total",
    "completion events published (duplicate=true: JetStream already had it)",
    ["status", "duplicate"],
)
RECONCILE_SECONDS = Histogram("editflow_reconcile_seconds", "time per EditJob reconcile")
RECONCILE_ERRORS = Counter("editflow_reconcile_errors_total", "reconciles that raised")
IN_FLIGHT = Gauge(
    "editflow_jobs_in_flight", "unfinished GPU Jobs (Pending Pods included)", ["namespace"]
)
BRIDGE_EVENTS = Counter(
    "editflow_bridge_events_total",
    "approval/withdraw events handled by the bridge",
    ["type", "result"],
)
CALLBACKS = Counter("editflow_callbacks_total", "HTTPS callback deliveries", ["result"])
WATCH_LAG = Gauge("editflow_watch_stale_seconds", "how long the watch has lagged behind a re-list")
