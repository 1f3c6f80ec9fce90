"""The one settings object, read from the environment (``EDITFLOW_*``).

Nested groups use ``__`` as the separator, e.g. ``EDITFLOW_S3__ENDPOINT``.
Secrets (S3 keys, NATS passwords, the API token) can also be given as
``*_FILE`` paths so Kubernetes Secrets mounted as files work unchanged.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    cache_dir: str = Field("/var/cache/editflow/models", description="where S3 weights land")
    device: str = Field("auto", description="auto | cuda | cuda:N | cpu")
    dtype: str = Field("auto", pattern="^(auto|bfloat16|float16|float32)$")
    cpu_offload: str = Field("none", pattern="^(none|model|sequential)$")
    attention_backend: str | None = Field(
        None, description="diffusers attention backend name, e.g. flash, _native_cudnn"
    )
    compile_repeated_blocks: bool = False
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
    completions_stream: str = Field("EDITFLOW_COMPLETIONS", pattern=r"^[A-Za-z0-9_-]+$")
    completion_subject_prefix: str = "editflow.completions"
    review_subject_prefix: str = "editflow.reviews"
    dlq_stream: str = Field("EDITFLOW_DLQ", pattern=r"^[A-Za-z0-9_-]+$")
    dlq_subject_prefix: str = "editflow.dlq"
    advisories_stream: str = Field("EDITFLOW_ADVISORIES", pattern=r"^[A-Za-z0-9_-]+$")
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
    worker_service_account: str = "editflow-worker"
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
    models_pvc: str | None = Field(None, description="PVC holding the model directories")
    models_mount_path: str = "/models"
    default_model: str = "longcat-image-edit"
    result_prefix: str = "results"
    deadline_seconds: int = Field(1800, ge=30)
    pending_timeout_seconds: int = Field(600, ge=10)
    max_attempts: int = Field(3, ge=1, le=10)
    backoff_seconds: int = Field(30, ge=0)
    job_ttl_seconds: int = Field(3600, ge=0)
    max_running_per_namespace: int = Field(4, ge=1)
    sample_rate: float = Field(0.05, ge=0, le=1)
    retention_seconds: int = Field(7 * 24 * 3600, ge=60)
    resync_seconds: float = Field(10, gt=0)
    watch_timeout_seconds: int = Field(60, ge=5)
    liveness_stale_seconds: float = Field(120, gt=0)
    health_port: int = Field(8080, ge=0, le=65535)
    metrics_port: int = Field(9090, ge=0, le=65535)
    callback_signing_key: SecretStr | None = None
    callback_max_attempts: int = Field(5, ge=1)
    callback_backoff_seconds: float = Field(10, ge=0)
    alert_webhook_url: str | None = Field(
        None, description="chat-robot style webhook told about timeouts and NeedsReview edits"
    )
    callback_ca_file: str | None = Field(
        None, description="extra CA bundle trusted for HTTPS callbacks (on-prem OA)"
    )


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
