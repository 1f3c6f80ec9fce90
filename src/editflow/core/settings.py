"""The one settings object, read from the environment (``EDITFLOW_*``).

Nested groups use ``__`` as the separator, e.g. ``EDITFLOW_S3__ENDPOINT``.
Secrets (S3 keys, NATS passwords, the API token) can also be given as
``*_FILE`` paths so Kubernetes Secrets mounted as files work unchanged.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from editflow.core.acceleration import Acceleration


def _read_secret_file(path: str | None) -> SecretStr | None:
    if not path:
        return None
    return SecretStr(Path(path).read_text(encoding="utf-8").strip())


class S3Settings(BaseModel):
    """Where results and inputs live (MinIO or any S3)."""

    endpoint: str = Field("127.0.0.1:9000", description="host:port of the S3 API")
    secure: bool = Field(False, description="use HTTPS to reach the S3 API")
    access_key: SecretStr = SecretStr("")
    secret_key: SecretStr = SecretStr("")
    session_token: SecretStr | None = Field(
        None, description="STS session token of short-lived keys (a worker's attempt credentials)"
    )
    access_key_file: str | None = None
    secret_key_file: str | None = None
    region: str = "us-east-1"
    bucket: str = "editflow"
    public_endpoint: str | None = Field(
        None, description="scheme://host:port used in presigned URLs handed to OA users"
    )
    presign_expiry_seconds: int = Field(7 * 24 * 3600, ge=60, le=7 * 24 * 3600)

    @model_validator(mode="after")
    def _load_files(self) -> S3Settings:
        if key := _read_secret_file(self.access_key_file):
            self.access_key = key
        if key := _read_secret_file(self.secret_key_file):
            self.secret_key = key
        return self


class NatsSettings(BaseModel):
    """How editflow reaches NATS JetStream."""

    url: str = "nats://127.0.0.1:4222"
    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    creds_file: str | None = None
    nkey_seed_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    inbox_prefix: str | None = Field(
        None,
        description="prefix of this client's reply inboxes; default _INBOX_<user> with a user "
        "(the chart lets each user subscribe to its own inboxes only), else _INBOX",
    )

    @property
    def effective_inbox_prefix(self) -> str:
        """Replies to a user's JetStream API calls, pulls and KV reads land under a prefix no
        other user may subscribe to (``_INBOX.>`` for all let any role read every reply)."""
        if self.inbox_prefix:
            return self.inbox_prefix
        return f"_INBOX_{self.user}" if self.user else "_INBOX"


#: The quality gate's kinds of edit and threshold fields (editflow.inference.quality).
GATE_KINDS = ("subtle", "local", "global")
GATE_FIELDS = ("no_change_fraction", "no_change_ssim", "global_fraction", "global_spread")


class WorkerSettings(BaseModel):
    """The GPU worker (``editflow worker run|serve``): where weights live, how to run them.

    A model's weights are looked up as ``<models_root>/<model name>`` (a local
    directory or a mounted PVC); if that is missing and ``weights_s3_prefix``
    is set, ``<weights_s3_prefix>/<model name>/`` is downloaded once into
    ``<cache_dir>/<model name>`` and verified against its ``manifest.json``.
    """

    models_root: str = Field("/models", description="directory (or PVC mount) of model dirs")
    weights_s3_prefix: str | None = Field(
        None, description="S3 prefix holding <model>/ dirs with a manifest.json (platform bucket)"
    )
    weights_s3_bucket: str | None = Field(None, description="bucket of the weights (default: s3)")
    # A separate read-only key for the weights prefix: an attempt's own S3 keys reach only its
    # input and output (operator.attempt_credentials), and a worker never needs to write weights.
    weights_access_key: SecretStr | None = Field(
        None, description="read-only key for weights_s3_prefix (default: the s3 key)"
    )
    weights_secret_key: SecretStr | None = None
    pool_key_file: str | None = Field(
        None,
        description="the namespace's warm-pool keys (mounted Secret editflow-warm-key): a warm "
        "worker opens each attempt's sealed S3 credentials with them",
    )
    cache_dir: str = Field("/var/cache/editflow/models", description="where S3 weights land")
    # Streaming overlaps the read, the hash check and the cache fill instead of a download
    # followed by a second read from disk (editflow.inference.streamload).
    stream_weights: bool = Field(
        True,
        description="load S3 weights not yet in cache_dir straight from parallel range reads "
        "(verified chunk by chunk, the cache filled behind them); false: download, then load",
    )
    stream_concurrency: int = Field(
        8,
        ge=1,
        le=10,
        description="parallel range reads of a streamed load (64 MiB each; at most the S3 "
        "client's 10 pooled connections)",
    )
    cache_max_bytes: int = Field(
        0,
        ge=0,
        description="size limit of cache_dir (0: none); least recently used models are evicted",
    )
    cache_models: list[str] = Field(
        default_factory=list,
        description="the models configured for this cluster: others found in cache_dir are "
        "evicted (empty: keep every model)",
    )
    device: str = Field("auto", description="auto | cuda | cuda:N | cpu")
    cpu_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="torch's intra-op threads when the model runs on the CPU (default: the "
        "Pod's CPU limit, else every core): N workers on one node would otherwise start N "
        "threads per core and spend the CPU waiting on each other",
    )
    dtype: str = Field("auto", pattern="^(auto|bfloat16|float16|float32)$")
    cpu_offload: str = Field("none", pattern="^(none|model|sequential)$")
    attention_backend: str | None = Field(
        None, description="diffusers attention backend name, e.g. flash, _native_cudnn"
    )
    compile_repeated_blocks: bool = Field(
        False,
        description="regional compile of every model whose acceleration leaves compile unset",
    )
    acceleration: dict[str, Acceleration] = Field(
        default_factory=dict,
        description="per model, a cache method, FP8 and regional compile over the registry's "
        'defaults (editflow.core.acceleration), e.g. {"longcat-image-edit-turbo": '
        '{"cache": {"method": "first_block", "threshold": 0.05}, "fp8": "rowwise"}}',
    )
    fetch_max_bytes: int = Field(30 * 1024 * 1024, ge=1024)
    fetch_timeout_seconds: float = Field(30.0, gt=0)
    fetch_max_redirects: int = Field(5, ge=0, le=20)
    fetch_ca_file: str | None = Field(
        None, description="extra CA bundle trusted for https sources (on-prem image hosts)"
    )
    max_pixels: int = Field(40_000_000, ge=1, description="decoded pixel cap (bombs)")
    allow_hosts: list[str] = Field(
        default_factory=list, description="host names exempt from the SSRF guard"
    )
    allow_cidrs: list[str] = Field(
        default_factory=list, description="networks exempt from the SSRF guard, e.g. 10.0.0.0/8"
    )
    termination_log: str = "/dev/termination-log"
    http_port: int = Field(8080, ge=0, le=65535, description="warm mode /healthz /readyz /metrics")
    drain_seconds: float = Field(300.0, ge=0, description="SIGTERM grace for the edit in flight")
    upload_retry_seconds: float = Field(
        60.0,
        ge=0,
        description="how long a result write is retried while S3 is unreachable or failing "
        "(the edited image is kept meanwhile); 0: fail at once",
    )
    # Warm mode (editflow worker serve); the operator sets these on the warm worker's Pod.
    idle_seconds: float = Field(
        300.0, ge=0, description="warm mode: exit 0 after this long without work (0: never)"
    )
    max_age_seconds: float = Field(
        0.0,
        ge=0,
        description="warm mode: past this age finish the edit in flight and exit 0 (0: no limit)",
    )
    max_deliveries: int = Field(
        3,
        ge=1,
        description="warm mode: deliveries an edit may use; the next one is reported as poison",
    )
    ack_wait_seconds: float = Field(
        60.0, gt=0, description="warm mode: how long a silent worker holds an edit"
    )
    config_hash: str = Field(
        "", description="warm mode: the operator's hash of the Pod's configuration (heartbeats)"
    )
    gate_thresholds: dict[str, dict[str, float | None]] = Field(
        default_factory=dict,
        description="quality gate thresholds per kind of edit over the defaults, e.g. "
        '{"subtle": {"no_change_fraction": 0.001}} (editflow.inference.quality)',
    )

    @field_validator("gate_thresholds")
    @classmethod
    def _known_gate_thresholds(
        cls, value: dict[str, dict[str, float | None]]
    ) -> dict[str, dict[str, float | None]]:
        for kind, fields in value.items():
            if kind not in GATE_KINDS:
                raise ValueError(
                    f"unknown kind of edit {kind!r}; expected one of {', '.join(GATE_KINDS)}"
                )
            unknown = sorted(set(fields) - set(GATE_FIELDS))
            if unknown:
                raise ValueError(
                    f"{kind}: unknown field(s) {', '.join(unknown)}; expected "
                    f"{', '.join(GATE_FIELDS)}"
                )
        return value


class EventsSettings(BaseModel):
    """Names and limits of the event bus (see ``editflow.events``); every name is configurable
    so that several installations (or test cases) can share one NATS account."""

    approvals_stream: str = Field("EDITFLOW_APPROVALS", pattern=r"^[A-Za-z0-9_-]+$")
    approval_subject: str = Field(
        "oa.approvals.image-edit", description="the only subject approval events are accepted on"
    )
    withdraw_subject: str = Field(
        "oa.approvals.image-edit.withdraw", description="the only subject withdraw events use"
    )
    select_subject: str | None = Field(
        None,
        description="the only subject select events (a variant picked) use; default "
        "<approval_subject>.select",
    )
    review_action_subject: str | None = Field(
        None,
        description="the only subject the desk's review actions (io.editflow.review.action.v1) "
        "use; default <approval_subject>.review",
    )
    completions_stream: str = Field("EDITFLOW_COMPLETIONS", pattern=r"^[A-Za-z0-9_-]+$")
    completion_subject_prefix: str = "editflow.completions"
    review_subject_prefix: str = "editflow.reviews"
    dlq_stream: str = Field("EDITFLOW_DLQ", pattern=r"^[A-Za-z0-9_-]+$")
    dlq_subject_prefix: str = "editflow.dlq"
    callback_subject_prefix: str = Field(
        "oa.callbacks.",
        pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?$",
        description="an approval's callback.nats_subject must lie under this prefix",
    )
    advisories_stream: str = Field("EDITFLOW_ADVISORIES", pattern=r"^[A-Za-z0-9_-]+$")
    # Unset, both follow the completions' names (EDITFLOW_COMPLETIONS -> EDITFLOW_AUDIT,
    # editflow.completions -> editflow.audit), so an installation that renames its streams
    # to share a NATS account gets an audit stream of its own too (events.topology).
    audit_stream: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]+$")
    audit_subject_prefix: str | None = None
    audit_max_age_seconds: float = Field(
        400 * 24 * 3600,
        gt=0,
        description="how long audit records are kept (default 400 days: a year and its review)",
    )
    consumer: str = Field("editflow-operator", pattern=r"^[A-Za-z0-9_-]+$")
    ack_wait_seconds: float = Field(60, gt=0)
    max_deliver: int = Field(6, ge=2)
    backoff_seconds: list[float] = Field(
        default_factory=lambda: [10, 30, 60, 120, 300],
        description="redelivery delays; fewer entries than max_deliver",
    )
    duplicate_window_seconds: float = Field(24 * 3600, gt=0)
    max_age_seconds: float = Field(7 * 24 * 3600, gt=0)
    dlq_max_age_seconds: float = Field(90 * 24 * 3600, gt=0)
    max_event_bytes: int = Field(64 * 1024, ge=1024, le=1024 * 1024)
    storage: str = Field("file", pattern="^(file|memory)$")
    replicas: int = Field(1, ge=1, le=5)
    signing_key: SecretStr | None = Field(
        None, description="HMAC-SHA256 key; when set, OA events must carry a valid signature"
    )
    signing_key_file: str | None = None

    @model_validator(mode="after")
    def _load_files(self) -> EventsSettings:
        if key := _read_secret_file(self.signing_key_file):
            self.signing_key = key
        return self


class OperatorSettings(BaseModel):
    """How the operator turns EditJobs into GPU Jobs (``EDITFLOW_OPERATOR__*``)."""

    namespaces: list[str] = Field(
        default_factory=list, description="namespaces to watch (default: EDITFLOW_NAMESPACE)"
    )
    worker_image: str = "editflow/worker:0.1.0"
    worker_command: list[str] = Field(
        default_factory=lambda: ["editflow", "worker", "run"],
        min_length=1,
        description="the worker container's command; the request follows as --request JSON",
    )
    worker_service_account: str = "editflow-worker"
    worker_mode: str = Field(
        "job",
        pattern="^(job|warm)$",
        description="job: one Job per attempt (a fresh Pod per edit); warm: a pool of warm "
        "workers per namespace and model that keep the model loaded (editflow worker serve)",
    )
    warm_worker_command: list[str] = Field(
        default_factory=lambda: ["editflow", "worker", "serve"],
        min_length=1,
        description="the warm worker container's command; --model <name> follows",
    )
    max_warm_workers: int = Field(
        2, ge=1, le=256, description="warm workers per namespace and model, at most"
    )
    warm_idle_seconds: float = Field(
        300, ge=0, description="a warm worker exits after this long without work (0: never)"
    )
    warm_max_age_seconds: float = Field(
        24 * 3600, ge=0, description="a warm worker older than this retires after its edit"
    )
    warm_max_deliveries: int = Field(
        3, ge=1, le=20, description="workers one edit may reach (each died holding it)"
    )
    warm_ack_wait_seconds: float = Field(
        60, gt=0, description="a worker silent this long loses the edit it holds to another"
    )
    warm_nats_url: str | None = Field(
        None, description="NATS URL warm workers connect to (default: the operator's own)"
    )
    warm_nats_secret: str | None = Field(
        None,
        description="Secret (keys user, password) with the warm workers' NATS credential in "
        "each namespace (the chart's worker role); none: the URL alone",
    )
    warm_key_rotation_seconds: float = Field(
        7 * 24 * 3600,
        ge=300,
        description="a namespace's warm-pool key (sealing attempt credentials) is replaced "
        "after this long; one previous key stays valid",
    )
    warm_stuck_grace_seconds: float = Field(
        60, ge=0, description="a worker still busy this long past the edit's deadline is deleted"
    )
    warm_duplicate_window_seconds: float | None = Field(
        None,
        gt=0,
        description="the work stream's duplicate window; unset: deadline + pending timeout, "
        "so a hand-out re-published after a failover is dropped for the attempt's whole life",
    )

    @property
    def work_duplicate_window(self) -> float:
        if self.warm_duplicate_window_seconds is not None:
            return self.warm_duplicate_window_seconds
        return float(self.deadline_seconds + self.pending_timeout_seconds)

    image_pull_policy: str = Field("IfNotPresent", pattern="^(Always|IfNotPresent|Never)$")
    gpus_per_job: int = Field(1, ge=0, le=8)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, str]] = Field(
        default_factory=lambda: [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    )
    priority_class: str | None = None
    worker_resources: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {"requests": {"cpu": "1", "memory": "2Gi"}}
    )
    worker_configmap: str = Field("editflow-worker", description="envFrom for every worker")
    s3_secret: str = Field("editflow-s3", description="Secret with access-key / secret-key")
    attempt_credentials: bool = Field(
        True,
        description="give each attempt short-lived S3 keys limited to its input and output "
        "(STS AssumeRole with the operator's key, in a Secret owned by the Job) instead of "
        "s3_secret; needs an S3 whose STS lets that key AssumeRole (MinIO: any user)",
    )
    upload_prefix: str = Field(
        "uploads",
        description="S3 key prefix of uploads (as the gateway's); spec.source.s3Key must lie "
        "under <upload_prefix>/<namespace>/",
    )
    weights_secret: str | None = Field(
        None,
        description="Secret (access-key / secret-key) of a read-only key for the weights prefix, "
        "given to workers as EDITFLOW_WORKER__WEIGHTS_ACCESS_KEY / _SECRET_KEY",
    )
    weights_reader_create: bool = Field(
        False,
        description="create the MinIO user of the read-only weights key (worker.weights_access_"
        "key / _secret_key, the Secret weights_secret) at start, allowed only to read "
        "worker.weights_s3_prefix (the chart's default with models.s3Prefix)",
    )
    models_pvc: str | None = Field(None, description="PVC holding the model directories")
    weights_cache_pvc: str | None = Field(
        None,
        description="ReadWriteMany PVC where workers keep weights downloaded from S3, shared by "
        "every worker that mounts it (one download per node or per cluster, not per Pod)",
    )
    weights_cache_host_path: str | None = Field(
        None,
        description="hostPath directory for the same cache, one per node (needs a namespace "
        "whose Pod Security level allows hostPath volumes: privileged)",
    )
    weights_cache_mount_path: str = "/var/cache/editflow/models"
    weights_cache_staged: bool = Field(
        False,
        description="the prestage DaemonSet is the weights cache's only writer (chart "
        "worker.prestage.enabled): workers mount it read-only, use its staged models in place "
        "(editflow.core.staging), fetch any other into their /tmp, and warm workers prefer "
        "nodes labelled as holding their model",
    )

    models_mount_path: str = "/models"
    default_model: str = "longcat-image-edit"
    result_prefix: str = "results"
    record_prefix: str = Field(
        "gateway/edits", description="the gateway's request records (gateway.record_prefix)"
    )
    s3_expiry_days: int = Field(
        30,
        ge=0,
        description="uploads, results and records expire after this many days (S3 lifecycle "
        "rules the operator sets at start; never the weights prefix); 0: no rules",
    )
    deadline_seconds: int = Field(1800, ge=30)
    pending_timeout_seconds: int = Field(600, ge=10)
    stuck_pod_seconds: float = Field(
        45,
        gt=0,
        description="an attempt whose Pod waits in ImagePullBackOff, CreateContainerConfigError, "
        "CrashLoopBackOff... this long ends with the kubelet's reason",
    )
    max_attempts: int = Field(3, ge=1, le=10)
    backoff_seconds: int = Field(30, ge=0)
    job_ttl_seconds: int = Field(3600, ge=0)
    max_running_per_namespace: int = Field(4, ge=1)
    preview_slots: int = Field(
        0,
        ge=0,
        description="of max_running_per_namespace, the attempts kept for approvers' previews "
        "(0: previews queue with the full edits)",
    )
    sample_rate: float = Field(0.05, ge=0, le=1)
    metrics_departments: list[str] = Field(
        default_factory=list,
        description="departments that get their own Prometheus label value; others count as "
        "'other' (label sets stay bounded: the audit stream has every department)",
    )
    gate_mode: str = Field(
        "advisory",
        pattern="^(advisory|enforce)$",
        description="quality gate: advisory records the verdict (and samples flagged edits "
        "for review); enforce sends flagged edits to NeedsReview",
    )
    retention_seconds: int = Field(7 * 24 * 3600, ge=60)
    resync_seconds: float = Field(
        10, gt=0, description="how often a running attempt is looked at again (level-triggered)"
    )
    reconcile_workers: int = Field(16, ge=1, le=256, description="reconciles at once")
    error_backoff_seconds: float = Field(
        0.5, gt=0, description="first retry of a failed reconcile; doubles per failure"
    )
    error_backoff_max_seconds: float = Field(60, gt=0)
    queue_status_refresh_seconds: float = Field(
        60,
        gt=0,
        description="a status write that changes only what is shown (queue position, message, "
        "worker, conditions) without a phase change is made at most this often per edit; "
        "progress events carry the rest at once (issue 21 item 5)",
    )
    delivery_recheck_seconds: float = Field(
        15,
        gt=0,
        description="a final EditJob whose outcome is not recorded as delivered is looked at "
        "again this often (NATS down, say)",
    )
    queue_status_refresh_batch: int = Field(
        100, ge=0, description="queued EditJobs (from the head) whose position is refreshed"
    )
    queue_safety_seconds: float = Field(
        300, gt=0, description="a queued EditJob is looked at again at least this often"
    )
    sweep_seconds: float = Field(
        60, gt=0, description="how often finished EditJobs are checked for retention"
    )
    bridge_concurrency: int = Field(
        32, ge=1, le=1024, description="approval events the bridge handles at once"
    )
    watch_timeout_seconds: int = Field(60, ge=5)
    liveness_stale_seconds: float = Field(120, gt=0)
    health_port: int = Field(8080, ge=0, le=65535)
    metrics_port: int = Field(9090, ge=0, le=65535)
    callback_signing_key: SecretStr | None = None
    callback_max_attempts: int = Field(5, ge=1)
    outbox_expiry_seconds: int = Field(
        24 * 3600, ge=60, description="an undelivered webhook is retried at most this long"
    )
    callback_backoff_seconds: float = Field(10, ge=0)
    callback_timeout_seconds: float = Field(
        30,
        gt=0,
        description="wall-clock deadline of one webhook delivery, however slowly it answers",
    )
    alert_webhook_url: str | None = Field(
        None, description="chat-robot style webhook told about timeouts and NeedsReview edits"
    )
    callback_ca_file: str | None = Field(
        None, description="extra CA bundle trusted for HTTPS callbacks (on-prem OA)"
    )
    # The SSRF guard for callback and alert webhooks (editflow.core.urlguard).
    callback_allow_hosts: list[str] = Field(
        default_factory=list,
        description="webhook host names exempt from the SSRF guard (an on-prem OA by name)",
    )
    callback_allow_cidrs: list[str] = Field(
        default_factory=list,
        description="networks webhooks may reach although private, e.g. 10.20.0.0/16",
    )
    dns_timeout_seconds: float = Field(
        1.0, gt=0, le=30, description="longest DNS lookup of a URL's host (bridge, webhooks)"
    )
    dns_cache_seconds: float = Field(
        60, ge=0, description="how long a DNS answer is reused (0: look up every time)"
    )
    # Leader election (operator/leader.py): with two replicas only the Lease holder acts.
    leader_election: bool = Field(False, description="hold a coordination.k8s.io Lease first")
    lease_name: str = Field("editflow-operator", description="the Lease, in EDITFLOW_NAMESPACE")
    lease_seconds: float = Field(10, ge=1, description="a standby takes over after this")
    lease_renew_deadline_seconds: float = Field(7, gt=0, description="the leader stops after")
    lease_retry_seconds: float = Field(2, gt=0, description="between Lease reads and renewals")

    @model_validator(mode="after")
    def _preview_share_leaves_room(self) -> OperatorSettings:
        if self.preview_slots and self.preview_slots >= self.max_running_per_namespace:
            raise ValueError(
                f"preview_slots ({self.preview_slots}) must be below max_running_per_namespace "
                f"({self.max_running_per_namespace}): the full edits need a share of the cap too"
            )
        return self

    @model_validator(mode="after")
    def _one_weights_cache(self) -> OperatorSettings:
        if self.weights_cache_pvc and self.weights_cache_host_path:
            raise ValueError(
                "weights_cache_pvc and weights_cache_host_path are both set: the weights cache "
                "is one volume, choose the PVC (any Pod Security level) or the hostPath"
            )
        return self


#: The first deployment's variable for the gateway token, still honoured.
LEGACY_TOKEN_ENV = "API_TOKEN"  # noqa: S105 - a variable name, not a secret


class GatewaySettings(BaseModel):
    """The HTTP gateway for OA systems that call HTTP (``EDITFLOW_GATEWAY__*``).

    A Bearer token is required on every API call whenever ``token`` (or
    ``token_file``, a mounted Secret) is set; without one the API is open,
    which suits only a laptop demo.
    """

    host: str = Field("0.0.0.0", description="listen address of `editflow gateway run`")  # noqa: S104
    port: int = Field(8000, ge=0, le=65535)
    token: SecretStr | None = Field(None, description="Bearer token; required when set")
    token_file: str | None = Field(None, description="file holding the token (mounted Secret)")
    cors_origins: list[str] = Field(
        default_factory=list, description="browser origins allowed to call the API (OA origin)"
    )
    rate_limit_per_minute: int = Field(
        5, ge=0, description="edit submissions per client IP per minute (0: unlimited)"
    )
    read_rate_limit_per_minute: int = Field(
        600, ge=0, description="other API calls (status polls, uploads) per IP per minute"
    )
    rate_limit_shared: bool = Field(
        True,
        description="count rate limits in a NATS KV bucket shared by every replica (false: "
        "per process); while NATS is unreachable each replica counts alone",
    )
    rate_limit_bucket: str = Field(
        "editflow_gateway_rate_limits",
        pattern=r"^[A-Za-z0-9_-]+$",
        description="the NATS KV bucket of the shared rate limits (created if missing)",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="CIDRs whose X-Forwarded-For is believed (the ingress), e.g. 10.0.0.0/8",
    )
    max_json_bytes: int = Field(64 * 1024, ge=1024, description="largest JSON request body")
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="largest image upload")
    wait_timeout_seconds: float = Field(
        300, gt=0, le=3600, description="how long POST /edit waits before answering 'failed'"
    )
    upload_prefix: str = Field("uploads", description="S3 key prefix of uploaded images")
    record_prefix: str = Field(
        "gateway/edits", description="S3 key prefix of the request records (id, fingerprint)"
    )
    source: str = Field("/editflow/gateway", description="CloudEvent source of its events")
    provision_streams: bool = Field(
        False, description="create the NATS streams if missing (standalone demo)"
    )
    desk_reviewers_file: str | None = Field(
        None,
        description="the desk's named reviewer tokens (mounted Secret): a JSON list of "
        '{"token","name","id","namespaces"}, or a folder with one such JSON object per file',
    )
    desk_trusted_header: str = Field(
        "X-Forwarded-Email",
        description="identity header of the authenticating proxy (oauth2-proxy's default); "
        "believed only from desk_trusted_proxy_cidrs",
    )
    desk_trusted_proxy_cidrs: list[str] = Field(
        default_factory=list,
        description="peer addresses whose desk_trusted_header is believed (empty: header off)",
    )
    desk_reviewers: dict[str, list[str]] = Field(
        default_factory=dict,
        description="namespaces of each person the trusted header names (identity -> namespaces)",
    )
    desk_claim_seconds: int = Field(
        900, ge=30, le=86_400, description="how long a reviewer's claim on a ticket lasts"
    )
    desk_waiting_seconds: int = Field(
        4 * 3600, ge=60, description="a ticket waiting longer than this gets a badge on the desk"
    )

    @model_validator(mode="after")
    def _load_files(self) -> GatewaySettings:
        if key := _read_secret_file(self.token_file):
            self.token = key
        elif self.token is None and os.environ.get(LEGACY_TOKEN_ENV):
            # The first deployment switched auth on with API_TOKEN; its installs keep working.
            self.token = SecretStr(os.environ[LEGACY_TOKEN_ENV])
        return self


class Settings(BaseSettings):
    """Everything an editflow process can be configured with."""

    model_config = SettingsConfigDict(
        env_prefix="EDITFLOW_", env_nested_delimiter="__", extra="ignore"
    )

    log_level: str = "INFO"
    log_format: str = Field("json", pattern="^(json|console)$")
    namespace: str = "default"
    s3: S3Settings = S3Settings()
    nats: NatsSettings = NatsSettings()
    events: EventsSettings = EventsSettings()
    worker: WorkerSettings = WorkerSettings()
    operator: OperatorSettings = OperatorSettings()
    gateway: GatewaySettings = GatewaySettings()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once; tests build their own ``Settings``)."""
    return Settings()
