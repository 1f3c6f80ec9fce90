"""Prometheus metrics of one gateway (its own registry, so apps in one process never clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "editflow_gateway_requests_total",
            "HTTP requests by route template, method and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "editflow_gateway_request_seconds",
            "HTTP request duration by route template (POST /edit includes its wait)",
            ["route", "method"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.submitted = Counter(
            "editflow_gateway_edits_submitted_total",
            "Approval events published for new edits, by endpoint",
            ["endpoint"],
            registry=self.registry,
        )
        self.replayed = Counter(
            "editflow_gateway_idempotent_replays_total",
            "POSTs answered with an existing edit (same Idempotency-Key)",
            registry=self.registry,
        )
        self.outcomes = Counter(
            "editflow_gateway_sync_outcomes_total",
            "Outcomes of synchronous POST /edit calls (timeout: the edit continues)",
            ["status"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "editflow_gateway_rate_limited_total",
            "Requests refused with 429, by limit",
            ["limit"],
            registry=self.registry,
        )
        self.rate_limit_fallbacks = Counter(
            "editflow_gateway_rate_limit_fallbacks_total",
            "Rate-limit decisions made by this replica alone because NATS KV did not answer",
            ["limit"],
            registry=self.registry,
        )
        self.rate_limit_shared = Gauge(
            "editflow_gateway_rate_limit_shared",
            "1 while rate limits are counted in the shared NATS KV bucket, 0 while per replica",
            registry=self.registry,
        )
        self.unauthorized = Counter(
            "editflow_gateway_unauthorized_total",
            "Requests refused with 401",
            registry=self.registry,
        )
        self.uploads = Counter(
            "editflow_gateway_upload_bytes_total",
            "Bytes of images uploaded to S3",
            registry=self.registry,
        )
