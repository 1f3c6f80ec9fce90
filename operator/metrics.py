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
CACHE_EVENTS = Counter(
    "editflow_cache_watch_events_total", "watch events applied to the caches", ["kind"]
)
CACHE_RELISTS = Counter(
    "editflow_cache_relists_total", "full (paginated) lists: start and 410 Gone", ["kind"]
)
QUEUE_LENGTH = Gauge("editflow_queue_length", "EditJobs waiting for a GPU slot", ["namespace"])
WORKQUEUE_DEPTH = Gauge("editflow_workqueue_depth", "EditJob keys waiting for a reconcile")
STATUS_WRITES = Counter("editflow_status_writes_total", "EditJob status patches written")
OUTBOX_WRITTEN = Counter("editflow_outbox_written_total", "outcomes and alerts put in the outbox")
OUTBOX_PENDING = Gauge("editflow_outbox_pending", "outcomes in the outbox not yet fully delivered")
OUTBOX_DELIVERIES = Counter(
    "editflow_outbox_deliveries_total",
    "webhook and alert delivery attempts from the outbox",
    ["part", "result"],
)

# Cost attribution: bounded label sets (the full detail is in the audit stream).
# department: one of operator.metrics_departments, else "other" (or "none" when unset);
# usage: one of the worker's output profiles, else "other"; model: the registry's names.
GPU_SECONDS = Counter(
    "editflow_gpu_seconds_total",
    "GPU-seconds of finished edits, every attempt counted (failed and cancelled ones too)",
    ["department", "usage", "model"],
)
EDITS_FINISHED = Counter(
    "editflow_edits_finished_total",
    "Edits that reached a final phase",
    ["department", "usage", "model", "phase"],
)
EDIT_SECONDS = Histogram(
    "editflow_edit_seconds",
    "From the EditJob's creation to its final phase (queueing and retries included)",
    ["phase"],
    buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
QUALITY_VERDICTS = Counter(
    "editflow_quality_verdicts_total",
    "The quality gate's verdicts on finished edits",
    ["verdict"],
)

# -- warm dispatch (worker.mode warm) --------------------------------------------------
WARM_WORKERS = Gauge("editflow_warm_workers", "warm workers heard from, by state", ["state"])
WARM_WAITING = Gauge("editflow_warm_waiting", "attempts waiting for an idle warm worker")
WARM_HANDED_OUT = Counter("editflow_warm_handed_out_total", "attempts handed to warm workers")
WARM_RESULTS_REFUSED = Counter(
    "editflow_warm_results_refused_total",
    "worker results refused: their token did not match the attempt (forged, or misrouted)",
)
WARM_WORKERS_STARTED = Counter("editflow_warm_workers_started_total", "warm worker Jobs created")
WARM_WORKERS_REPLACED = Counter(
    "editflow_warm_workers_replaced_total", "warm workers deleted (stuck past a deadline)"
)
