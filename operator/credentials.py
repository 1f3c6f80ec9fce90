"""Short-lived S3 credentials for one attempt: STS AssumeRole with a session policy.

A worker runs untrusted input (an image, a prompt) through a large model; with
the bucket-wide key a compromised worker could read every tenant's uploads and
results. Instead, when an attempt is dispatched the operator asks the S3
server's STS API (MinIO's ``AssumeRole``, the same call as AWS STS) for
credentials whose session policy (:func:`editflow.operator.tenancy.attempt_policy`)
allows exactly: read the attempt's input object, write under its output prefix.
The session policy can only narrow what the operator's own key may do.

In Job mode they reach the worker through a per-attempt Secret owned by the Job
(:func:`credentials_secret_manifest`), so the Secret goes when the Job goes.

Why not :class:`minio.credentials.AssumeRoleProvider`: it silently raises any
``DurationSeconds`` under one hour to one hour, and an attempt's credentials
should live only as long as the attempt can (MinIO accepts 15 minutes to 12
hours). The request is the same one the provider sends, signed by minio's own
SigV4 STS signer.
"""

from __future__ import annotations

import asyncio
import base64
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import urllib3
from minio.credentials import Credentials
from minio.helpers import sha256_hash
from minio.signer import sign_v4_sts

from editflow.core.errors import EditflowError
from editflow.core.kubetime import stamp
from editflow.core.settings import OperatorSettings, S3Settings
from editflow.events.worker_contract import attempt_prefix
from editflow.operator.jobspec import worker_request
from editflow.operator.names import LABEL_ATTEMPT, LABEL_EDITJOB, MANAGED_BY
from editflow.operator.tenancy import attempt_policy, policy_json

#: What MinIO (and AWS) accept for ``DurationSeconds``.
MIN_DURATION_SECONDS = 900
MAX_DURATION_SECONDS = 12 * 3600
#: Time after the Job's deadline for the last result upload to land.
UPLOAD_MARGIN_SECONDS = 120

_STS_NS = {"sts": "https://sts.amazonaws.com/doc/2011-06-15/"}
#: Mints run in the default thread pool, several at once (the reconciler's workers start
#: attempts concurrently): urllib3 keeps one connection per host unless told more, and threw
#: the others away after each mint, so every mint beyond the first paid a new TCP connection.
_HTTP = urllib3.PoolManager(
    maxsize=16,
    timeout=urllib3.Timeout(connect=5, read=10),
    retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
)


class CredentialMintError(EditflowError):
    """STS refused or could not be reached; the dispatch is retried (reconcile backoff)."""

    code = "attempt_credentials"
    retriable = True


@dataclass(frozen=True)
class AttemptCredentials:
    """One attempt's session credentials and what they are limited to."""

    access_key: str
    secret_key: str
    session_token: str
    expires_at: datetime
    input_key: str | None
    output_prefix: str


def attempt_duration_seconds(editjob: dict[str, Any], op: OperatorSettings) -> int:
    """How long the attempt may live: its wait for a GPU node plus its deadline (clamped).

    The Job's ``activeDeadlineSeconds`` counts from the Job's start, waiting Pod
    included, and the operator ends an attempt that waits longer than the pending
    timeout, so the sum (plus a margin for the last upload) bounds the worker's life.
    """
    spec = editjob["spec"]
    deadline = int(spec.get("deadlineSeconds") or op.deadline_seconds)
    pending = int(spec.get("pendingTimeoutSeconds") or op.pending_timeout_seconds)
    wanted = pending + deadline + UPLOAD_MARGIN_SECONDS
    return max(MIN_DURATION_SECONDS, min(MAX_DURATION_SECONDS, wanted))


def attempt_scope(
    editjob: dict[str, Any], attempt: int, op: OperatorSettings
) -> tuple[str | None, str]:
    """(input key or None for a URL source, output prefix ending in ``/``) of one attempt."""
    request = worker_request(editjob, attempt, op)
    return request.source.s3_key, attempt_prefix(request) + "/"


def _text(root: ET.Element, path: str) -> str:
    node = root.find(path, _STS_NS)
    if node is None or not node.text:
        raise CredentialMintError(f"the STS answer has no {path.rsplit(':', 1)[-1]}")
    return node.text


def assume_role(
    s3: S3Settings, *, policy: str, duration_seconds: int
) -> tuple[str, str, str, datetime]:
    """POST ``Action=AssumeRole`` to the S3 endpoint, signed with the operator's key.

    Returns (access key, secret key, session token, expiry). Blocking: call it in a thread.
    """
    scheme = "https" if s3.secure else "http"
    url = f"{scheme}://{s3.endpoint}/"
    body = urlencode(
        {
            "Action": "AssumeRole",
            "Version": "2011-06-15",
            "DurationSeconds": str(duration_seconds),
            "Policy": policy,
        }
    )
    now = datetime.now(UTC)
    parts = urlsplit(url)
    headers = sign_v4_sts(
        method="POST",
        url=parts,
        region=s3.region,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Host": parts.netloc,
            "X-Amz-Date": now.strftime("%Y%m%dT%H%M%SZ"),
        },
        credentials=Credentials(
            access_key=s3.access_key.get_secret_value(),
            secret_key=s3.secret_key.get_secret_value(),
        ),
        content_sha256=sha256_hash(body),
        date=now,
    )
    try:
        response = _HTTP.request("POST", url, body=body, headers=headers)
    except urllib3.exceptions.HTTPError as exc:
        raise CredentialMintError(f"STS at {url} unreachable: {exc}") from exc
    text = response.data.decode("utf-8", "replace")
    if response.status != 200:
        raise CredentialMintError(
            f"STS AssumeRole at {url} answered {response.status}: {text[:300]} "
            "(the operator's S3 key must be allowed to call AssumeRole, or set "
            "EDITFLOW_OPERATOR__ATTEMPT_CREDENTIALS=false)"
        )
    root = ET.fromstring(text)  # noqa: S314 - the answer of our own S3 endpoint
    creds = ".//sts:AssumeRoleResult/sts:Credentials/sts:"
    expiry = datetime.strptime(_text(root, creds + "Expiration"), "%Y-%m-%dT%H:%M:%SZ")
    return (
        _text(root, creds + "AccessKeyId"),
        _text(root, creds + "SecretAccessKey"),
        _text(root, creds + "SessionToken"),
        expiry.replace(tzinfo=UTC),
    )


class AttemptCredentialMinter:
    """Mints an attempt's credentials with the operator's own S3 key."""

    def __init__(self, s3: S3Settings, op: OperatorSettings) -> None:
        self.s3 = s3
        self.op = op

    async def mint(self, editjob: dict[str, Any], attempt: int) -> AttemptCredentials:
        input_key, output_prefix = attempt_scope(editjob, attempt, self.op)
        policy = attempt_policy(
            bucket=self.s3.bucket, input_key=input_key, output_prefix=output_prefix
        )
        access, secret, token, expires = await asyncio.to_thread(
            assume_role,
            self.s3,
            policy=policy_json(policy),
            duration_seconds=attempt_duration_seconds(editjob, self.op),
        )
        return AttemptCredentials(access, secret, token, expires, input_key, output_prefix)


def credentials_secret_name(job_name: str) -> str:
    """The attempt's Secret: named after its Job (``<job>-s3`` stays within 253 characters)."""
    return f"{job_name}-s3"


def credentials_secret_manifest(job: dict[str, Any], creds: AttemptCredentials) -> dict[str, Any]:
    """The per-attempt Secret, owned by the Job so that it is deleted with it."""
    meta = job["metadata"]
    labels = meta.get("labels") or {}
    values = {
        "access-key": creds.access_key,
        "secret-key": creds.secret_key,
        "session-token": creds.session_token,
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": credentials_secret_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": {
                **MANAGED_BY,
                "app.kubernetes.io/component": "attempt-credentials",
                **{k: labels[k] for k in (LABEL_EDITJOB, LABEL_ATTEMPT) if k in labels},
            },
            "annotations": {
                "editflow.io/expires-at": stamp(creds.expires_at),
                "editflow.io/output-prefix": creds.output_prefix,
            },
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    # No blockOwnerDeletion: it would need update on jobs/finalizers.
                    "controller": True,
                }
            ],
        },
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    }
