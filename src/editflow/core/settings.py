"""The one settings object, read from the environment (``EDITFLOW_*``).

Nested groups use ``__`` as the separator, e.g. ``EDITFLOW_S3__ENDPOINT``.
Secrets (S3 keys, NATS passwords, the API token) can also be given as
``*_FILE`` paths so Kubernetes Secrets mounted as files work unchanged.
"""

from __future__ import annotations

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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once; tests build their own ``Settings``)."""
    return Settings()
