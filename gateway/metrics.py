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
        # The designer's desk (issue 22): queue depth as last read, and how long people took.
        desk_buckets = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800)
        self.desk_queue = Gauge(
            "editflow_desk_queue_depth",
            "Open desk tickets per namespace and lane (as of the last queue read)",
            ["namespace", "lane"],
            registry=self.registry,
        )
        self.desk_first_claim = Histogram(
            "editflow_desk_time_to_first_claim_seconds",
            "From a ticket entering its lane to its first claim",
            ["lane"],
            buckets=desk_buckets,
            registry=self.registry,
        )
        self.desk_resolve = Histogram(
            "editflow_desk_time_to_resolve_seconds",
            "From a ticket entering its lane to the action that resolves it",
            ["lane", "action"],
            buckets=desk_buckets,
            registry=self.registry,
        )
        self.desk_verdicts = Counter(
            "editflow_desk_sample_verdicts_total",
            "Verdicts reviewers gave on sampled and gate-flagged edits",
            ["lane", "verdict"],
            registry=self.registry,
        )
        self.desk_oldest = Gauge(
            "editflow_desk_oldest_ticket_timestamp_seconds",
            "When the oldest open ticket of a lane entered it (Unix time; absent: lane empty); "
            "the NeedsReview-waiting alert compares it with time()",
            ["namespace", "lane"],
            registry=self.registry,
        )
