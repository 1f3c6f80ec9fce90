"""``editflow gateway run`` as a real uvicorn process on a free loopback port, for stack tests."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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

    def log_lines(self, start: int = 0) -> list[dict]:
        """The gateway's JSON log lines from line ``start`` on (other output is skipped)."""
        lines = self.process.log_path.read_text(errors="replace").splitlines()[start:]
        out = []
        for line in lines:
            with suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    out.append(record)
        return out

    def log_length(self) -> int:
        return len(self.process.log_path.read_text(errors="replace").splitlines())

    def metric(self, name: str) -> float | None:
        """One unlabelled sample of the gateway's /metrics, or ``None`` when absent."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

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
        # As deployed: the gateway's namespace is the operator's (uploads live under it).
        "EDITFLOW_NAMESPACE": localmode.NAMESPACE,
        "EDITFLOW_GATEWAY__RATE_LIMIT_PER_MINUTE": "1000",
        # Source images are served from loopback in these tests (tests/harness.py image_host);
        # the gateway's SSRF guard refuses loopback unless allow-listed, as on a cluster.
        "EDITFLOW_WORKER__ALLOW_CIDRS": '["127.0.0.0/8"]',
        # Rate limits are shared through NATS KV: each gateway counts in its own bucket
        # unless a test makes replicas share one on purpose.
        "EDITFLOW_GATEWAY__RATE_LIMIT_BUCKET": f"gwtest_{uuid.uuid4().hex[:10]}",
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
