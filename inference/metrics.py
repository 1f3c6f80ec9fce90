"""Prometheus metrics of the warm worker (its own registry, served on ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

EDITS = Counter(
    "editflow_worker_edits_total",
    "Edits finished by this worker, by model, status and error code.",
    ["model", "status", "code"],
    registry=REGISTRY,
)
STEP_SECONDS = Histogram(
    "editflow_worker_step_seconds",
    "Seconds spent per step of the worker's straight line.",
    ["model", "step"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320),
    registry=REGISTRY,
)
MODEL_LOAD_SECONDS = Gauge(
    "editflow_worker_model_load_seconds", "Seconds the warm model took to load.", ["model"],
    registry=REGISTRY,
)  # fmt: skip
READY = Gauge("editflow_worker_ready", "1 when the worker takes requests.", registry=REGISTRY)
IN_FLIGHT = Gauge("editflow_worker_in_flight", "Edits running now.", registry=REGISTRY)
MODEL_LOADS = Gauge(
    "editflow_worker_model_loads", "Pipelines loaded by this process (1 when warm).",
    registry=REGISTRY,
)  # fmt: skip
