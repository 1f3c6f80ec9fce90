"""``editflow gateway run`` as a real uvicorn process on a free loopback port, for stack tests."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from editflow.devstack import localmode
from editflow.devstack.procs import ManagedProcess
from editflow.devstack.stack import LocalStack

TOKEN = "stack-gateway-token"


@dataclass
class GatewayServer:
    url: str
    token: str
    process: ManagedProcess

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]


def gateway_env(stack: LocalStack, **overrides: str) -> dict[str, str]:
    s3 = stack.s3_settings()
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("EDITFLOW_")},
        "EDITFLOW_LOG_FORMAT": "json",
        "EDITFLOW_NATS__URL": stack.nats_url,
        "EDITFLOW_S3__ENDPOINT": s3.endpoint,
        "EDITFLOW_S3__BUCKET": s3.bucket,
        "EDITFLOW_S3__ACCESS_KEY": s3.access_key.get_secret_value(),
        "EDITFLOW_S3__SECRET_KEY": s3.secret_key.get_secret_value(),
        "EDITFLOW_GATEWAY__TOKEN": TOKEN,
        "EDITFLOW_GATEWAY__RATE_LIMIT_PER_MINUTE": "1000",
        **overrides,
    }


def isolated_events(tag: str | None = None) -> dict[str, str]:
    """Stream and subject names no operator consumes: edits published there never run."""
    tag = tag or uuid.uuid4().hex[:8]
    up = tag.upper()
    return {
        "EDITFLOW_EVENTS__APPROVALS_STREAM": f"GW{up}_APPROVALS",
        "EDITFLOW_EVENTS__APPROVAL_SUBJECT": f"gw{tag}.approvals.image-edit",
        "EDITFLOW_EVENTS__WITHDRAW_SUBJECT": f"gw{tag}.approvals.image-edit.withdraw",
        "EDITFLOW_EVENTS__COMPLETIONS_STREAM": f"GW{up}_COMPLETIONS",
        "EDITFLOW_EVENTS__COMPLETION_SUBJECT_PREFIX": f"gw{tag}.completions",
        "EDITFLOW_EVENTS__REVIEW_SUBJECT_PREFIX": f"gw{tag}.reviews",
        "EDITFLOW_EVENTS__DLQ_STREAM": f"GW{up}_DLQ",
        "EDITFLOW_EVENTS__DLQ_SUBJECT_PREFIX": f"gw{tag}.dlq",
        "EDITFLOW_EVENTS__ADVISORIES_STREAM": f"GW{up}_ADVISORIES",
        "EDITFLOW_EVENTS__CONSUMER": f"gw{tag}-nobody",
        "EDITFLOW_EVENTS__STORAGE": "memory",
        "EDITFLOW_GATEWAY__PROVISION_STREAMS": "true",
    }


@contextmanager
def running_gateway(stack: LocalStack, workdir: Path, **env: str) -> Iterator[GatewayServer]:
    """Start the gateway, wait until /readyz says NATS and S3 are reachable, stop it after."""
    gateway = localmode.GatewayProcess(gateway_env(stack, **env), workdir, TOKEN)
    try:
        gateway.start()
        yield GatewayServer(url=gateway.url, token=TOKEN, process=gateway.process)
    except BaseException:
        if gateway.process is not None:
            print(f"gateway log:\n{gateway.process.log_tail(60)}")
        raise
    finally:
        gateway.stop()
