"""An attempt's STS credentials on a real MinIO: its own input and output, nothing else;
and the read-only weights credential, which cannot write.

The credentials are minted exactly as the dispatcher mints them (the
operator's key, AssumeRole, the attempt's session policy) and then used
directly, as a compromised worker would, against another namespace's objects
and every key outside the attempt.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from minio import Minio
from minio.error import S3Error
from pydantic import SecretStr

from editflow.core.errors import InvalidInputError
from editflow.core.s3 import s3_client, weights_s3_settings
from editflow.core.settings import OperatorSettings, S3Settings, Settings, WorkerSettings
from editflow.devstack.stack import LocalStack
from editflow.operator.credentials import (
    MIN_DURATION_SECONDS,
    AttemptCredentialMinter,
    AttemptCredentials,
    CredentialMintError,
    attempt_duration_seconds,
)
from editflow.operator.s3users import provision_weights_reader

OP = OperatorSettings(deadline_seconds=60, pending_timeout_seconds=30)


@pytest.fixture(scope="module")
def minio_only() -> Iterator[S3Settings]:
    """Just MinIO (no control plane): STS is part of the S3 server."""
    with LocalStack(kube=False, nats=False) as running:
        yield running.s3_settings()


def editjob(namespace: str, name: str, s3_key: str | None) -> dict:
    source = {"s3Key": s3_key} if s3_key else {"url": "https://cdn.example.com/a.png"}
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"},
        "spec": {"source": source, "prompt": "remove the watermark"},
    }


def put(client: Minio, bucket: str, key: str, data: bytes = b"png") -> None:
    client.put_object(bucket, key, io.BytesIO(data), len(data), content_type="image/png")


def read(client: Minio, bucket: str, key: str) -> bytes:
    response = client.get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def session_settings(admin: S3Settings, creds: AttemptCredentials) -> S3Settings:
    """The S3 settings a worker reads from its attempt Secret (EDITFLOW_S3__* env)."""
    return admin.model_copy(
        update={
            "access_key": SecretStr(creds.access_key),
            "secret_key": SecretStr(creds.secret_key),
            "session_token": SecretStr(creds.session_token),
        }
    )


def as_worker(admin: S3Settings, creds: AttemptCredentials) -> Minio:
    return s3_client(session_settings(admin, creds))


def denied(call) -> str:
    with pytest.raises(S3Error) as refused:
        call()
    assert refused.value.code == "AccessDenied", refused.value
    return refused.value.code


def test_attempt_credentials_reach_only_their_own_input_and_output(minio_only: S3Settings):
    bucket = minio_only.bucket
    admin = s3_client(minio_only)
    a_input = "uploads/team-a/ab/input.png"
    a_other_input = "uploads/team-a/cd/someone-else.png"
    b_input = "uploads/team-b/ef/input.png"
    b_result = "results/team-b/edit-b/attempt-1/result.png"
    for key in (a_input, a_other_input, b_input, b_result):
        put(admin, bucket, key, key.encode())

    job_a = editjob("team-a", "edit-a", a_input)
    creds = asyncio.run(AttemptCredentialMinter(minio_only, OP).mint(job_a, 1))
    assert creds.input_key == a_input
    assert creds.output_prefix == "results/team-a/edit-a/attempt-1/"
    worker = as_worker(minio_only, creds)

    # Allowed: its own input, and writing under its own output prefix.
    assert read(worker, bucket, a_input) == a_input.encode()
    assert worker.stat_object(bucket, a_input).size == len(a_input)
    put(worker, bucket, "results/team-a/edit-a/attempt-1/result.png", b"edited")
    put(worker, bucket, "results/team-a/edit-a/attempt-1/result.json", b"{}")
    assert read(admin, bucket, "results/team-a/edit-a/attempt-1/result.png") == b"edited"

    # Refused: the other namespace's objects, read or written.
    denied(lambda: read(worker, bucket, b_input))
    denied(lambda: read(worker, bucket, b_result))
    denied(lambda: put(worker, bucket, b_result, b"overwritten"))
    denied(lambda: put(worker, bucket, "uploads/team-b/ef/new.png"))
    # Refused: every key of its own namespace outside this attempt.
    denied(lambda: read(worker, bucket, a_other_input))
    denied(lambda: put(worker, bucket, a_other_input, b"replaced"))
    denied(lambda: put(worker, bucket, "results/team-a/edit-a/attempt-2/result.png"))
    denied(lambda: put(worker, bucket, "results/team-a/edit-a/result.png"))
    denied(lambda: read(worker, bucket, "results/team-a/edit-a/attempt-1/result.png"))
    denied(lambda: worker.remove_object(bucket, "results/team-a/edit-a/attempt-1/result.png"))
    # Refused: listing the bucket (it would show every tenant's keys), or any bucket.
    denied(lambda: list(worker.list_objects(bucket, recursive=True)))
    denied(lambda: list(worker.list_objects(bucket, prefix="results/team-a/edit-a/attempt-1/")))
    denied(worker.list_buckets)
    assert read(admin, bucket, b_result) == b_result.encode()  # untouched


def test_a_url_source_gets_no_read_permission_at_all(minio_only: S3Settings):
    bucket = minio_only.bucket
    admin = s3_client(minio_only)
    put(admin, bucket, "uploads/team-a/ab/input.png")
    creds = asyncio.run(
        AttemptCredentialMinter(minio_only, OP).mint(editjob("team-a", "edit-u", None), 2)
    )
    worker = as_worker(minio_only, creds)
    assert creds.input_key is None
    denied(lambda: read(worker, bucket, "uploads/team-a/ab/input.png"))
    put(worker, bucket, "results/team-a/edit-u/attempt-2/result.png")


def test_credentials_live_for_the_attempt_not_an_hour(minio_only: S3Settings):
    """DurationSeconds reaches MinIO as sized (minio's AssumeRoleProvider would make it 1 h)."""
    assert attempt_duration_seconds(editjob("a", "e", None), OP) == MIN_DURATION_SECONDS
    before = datetime.now(UTC)
    creds = asyncio.run(
        AttemptCredentialMinter(minio_only, OP).mint(editjob("team-a", "edit-d", None), 1)
    )
    assert creds.expires_at <= before + timedelta(seconds=MIN_DURATION_SECONDS + 120)
    assert creds.expires_at > before


def test_the_wrong_operator_key_is_a_retriable_mint_error(minio_only: S3Settings):
    wrong = minio_only.model_copy(update={"secret_key": SecretStr("not-the-key")})
    with pytest.raises(CredentialMintError, match="answered 403") as refused:
        asyncio.run(AttemptCredentialMinter(wrong, OP).mint(editjob("a", "e", None), 1))
    assert refused.value.retriable
    assert "ATTEMPT_CREDENTIALS" in refused.value.message


def test_the_weights_credential_reads_weights_and_cannot_write(minio_only: S3Settings):
    """Weights come with their own read-only key (the attempt's keys cannot reach them)."""
    bucket = minio_only.bucket
    admin = s3_client(minio_only)
    put(admin, bucket, "models/longcat/manifest.json", b"{}")
    put(admin, bucket, "uploads/team-a/ab/input.png")
    reader_key, reader_secret = "weights-reader", "weights-reader-secret-1"
    # As the operator does at every start with the chart's generated reader (issue 20 §1).
    reader = WorkerSettings(
        weights_s3_prefix="models",
        weights_access_key=SecretStr(reader_key),
        weights_secret_key=SecretStr(reader_secret),
    )
    at_start = Settings(
        s3=minio_only, worker=reader, operator=OperatorSettings(weights_reader_create=True)
    )
    assert provision_weights_reader(at_start)
    assert provision_weights_reader(at_start)  # every start: idempotent
    assert not provision_weights_reader(Settings(s3=minio_only, worker=reader))  # not asked
    with pytest.raises(InvalidInputError, match="weights_s3_prefix"):
        provision_weights_reader(
            at_start.model_copy(update={"worker": WorkerSettings(weights_access_key=reader_key)})
        )
    # What the worker's weights download uses (EDITFLOW_WORKER__WEIGHTS_*), even though its
    # own S3 settings carry an attempt session that cannot read the weights.
    attempt = asyncio.run(
        AttemptCredentialMinter(minio_only, OP).mint(editjob("team-a", "edit-w", None), 1)
    )
    session = as_worker(minio_only, attempt)
    denied(lambda: read(session, bucket, "models/longcat/manifest.json"))
    worker = WorkerSettings(
        weights_s3_prefix="models",
        weights_access_key=SecretStr(reader_key),
        weights_secret_key=SecretStr(reader_secret),
    )
    weights = s3_client(weights_s3_settings(worker, session_settings(minio_only, attempt)))
    assert read(weights, bucket, "models/longcat/manifest.json") == b"{}"
    assert [o.object_name for o in weights.list_objects(bucket, prefix="models/longcat/")] == [
        "models/longcat/manifest.json"
    ]
    denied(lambda: put(weights, bucket, "models/longcat/manifest.json", b"tampered"))
    denied(lambda: put(weights, bucket, "models/other/x.bin"))
    denied(lambda: weights.remove_object(bucket, "models/longcat/manifest.json"))
    denied(lambda: read(weights, bucket, "uploads/team-a/ab/input.png"))
    denied(lambda: list(weights.list_objects(bucket, prefix="uploads/")))
    assert read(admin, bucket, "models/longcat/manifest.json") == b"{}"


def test_a_warm_attempt_carries_its_own_sealed_credentials_only_its_pool_can_open(
    minio_only: S3Settings, tmp_path
):
    """Warm mode (issue 20 §1): the dispatcher seals the attempt's STS key into the work
    message with its namespace's pool key; the worker's own code opens it with the mounted
    key and gets the same reach as a Job-mode attempt. Another namespace's key opens nothing,
    and the message holds no key in the clear."""
    import json

    from editflow.core.sealing import SealError, format_keys, new_pool_key
    from editflow.core.settings import Settings
    from editflow.events.worker_contract import WorkerRequest
    from editflow.inference.worker import open_attempt
    from editflow.operator.caches import ClusterCache
    from editflow.operator.warmpool import WarmDispatcher

    bucket = minio_only.bucket
    admin = s3_client(minio_only)
    a_input, b_input = "uploads/team-a/ab/warm.png", "uploads/team-b/ef/warm.png"
    for key in (a_input, b_input):
        put(admin, bucket, key, key.encode())
    team_a, team_b = new_pool_key(0), new_pool_key(0)

    class _Keys:
        async def sealing_key(self, namespace: str):
            assert namespace == "team-a"
            return team_a

    op = OP.model_copy(update={"worker_mode": "warm"})
    dispatcher = WarmDispatcher(
        None,  # type: ignore[arg-type]
        ClusterCache(None, ["team-a"]),  # type: ignore[arg-type]
        op,
        nats=None,
        minter=AttemptCredentialMinter(minio_only, op),
        pool_keys=_Keys(),  # type: ignore[arg-type]
    )
    job = editjob("team-a", "edit-w", a_input)
    job["metadata"]["uid"] = "uid-w"
    attempt = dispatcher._new_attempt(job, 1)
    payload = asyncio.run(dispatcher._sealed_payload(attempt))
    body = json.loads(payload)
    assert body["credentials"] and "SecretAccessKey" not in payload.decode()
    request = WorkerRequest.model_validate(body)
    assert minio_only.access_key.get_secret_value() not in payload.decode()

    # The warm worker: no S3 key in its environment, its namespace's pool key mounted.
    mounted = tmp_path / "keys"
    mounted.write_text(format_keys([team_a]))
    bare = Settings(
        s3=minio_only.model_copy(update={"access_key": SecretStr(""), "secret_key": SecretStr("")}),
        worker=WorkerSettings(pool_key_file=str(mounted)),
    )
    opened, _token = open_attempt(bare, request)
    worker = s3_client(opened.s3)
    assert read(worker, bucket, a_input) == a_input.encode()
    put(worker, bucket, "results/team-a/edit-w/attempt-1/result.png", b"edited")
    denied(lambda: read(worker, bucket, b_input))
    denied(lambda: list(worker.list_objects(bucket, recursive=True)))

    # Another namespace's warm worker cannot open it.
    mounted.write_text(format_keys([team_b]))
    with pytest.raises(SealError):
        open_attempt(bare, request)
