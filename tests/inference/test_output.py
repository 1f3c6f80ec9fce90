"""Output profiles, metadata, the termination message's size limit and upload patience."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from editflow.core.errors import ErrorInfo, UpstreamError
from editflow.core.s3 import s3_client
from editflow.devstack.stack import LocalStack
from editflow.events.worker_contract import TERMINATION_MESSAGE_LIMIT, WorkerRequest, WorkerResult
from editflow.inference.output import final_size, object_metadata, put_bytes
from editflow.inference.profiles import OutputProfile, output_profile
from editflow.inference.report import termination_message


def req(**extra: object) -> WorkerRequest:
    return WorkerRequest.model_validate(
        {"edit_id": "e", "source": {"s3_key": "in/a.png"}, "prompt": "p", **extra}
    )


def test_usage_selects_the_profile() -> None:
    assert output_profile(req(usage="wechat-article")) == OutputProfile("jpeg", 90)
    assert output_profile(req(usage="mini-program")).max_long_side == 750
    assert output_profile(req(usage="display-board")).format == "png"


def test_explicit_output_fields_win_over_the_usage() -> None:
    profile = output_profile(req(usage="wechat-article", output={"format": "png"}))
    assert profile.format == "png" and profile.quality == 90


def test_unknown_or_missing_usage_uses_the_request_output() -> None:
    assert output_profile(req()) == OutputProfile("png", 95)
    assert output_profile(req(usage="intranet", output={"quality": 80})).quality == 80


def test_profile_caps_only_shrink() -> None:
    assert final_size((1024, 768), OutputProfile("jpeg", max_long_side=750)) == (750, 562)
    assert final_size((512, 384), OutputProfile("jpeg", max_long_side=750)) == (512, 384)


def test_metadata_is_ascii_and_hashes_the_prompt() -> None:
    meta = object_metadata(edit_id="e", attempt=1, event_id="审批-1", prompt="把背景换成海边",
                           model="longcat-image-edit", seed=9)  # fmt: skip
    assert all(value.isascii() for value in meta.values())
    assert len(meta["prompt-sha256"]) == 64 and "把" not in json.dumps(meta)


def test_termination_message_fits_4096_bytes_and_stays_json() -> None:
    huge = ErrorInfo(code="model_failed", message="长" * 5000, retriable=True)
    result = WorkerResult(status="failed", edit_id="e", attempt=1, model="m", error=huge,
                          result_url="https://x/" + "a" * 2000)  # fmt: skip
    text = termination_message(result)
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    back = WorkerResult.model_validate_json(text)
    assert back.error.code == "model_failed" and back.error.retriable


def test_presigned_url_uses_the_public_endpoint_and_the_expiry() -> None:
    from pydantic import SecretStr

    from editflow.core.settings import S3Settings
    from editflow.inference.output import presign

    s3 = S3Settings(endpoint="minio.editflow.svc:9000", access_key=SecretStr("a"),
                    secret_key=SecretStr("b"), public_endpoint="https://files.example.com",
                    presign_expiry_seconds=3600)  # fmt: skip
    url = presign(s3, "results/e/attempt-1/result.png")
    assert url.startswith("https://files.example.com/editflow/results/e/attempt-1/result.png?")
    assert "X-Amz-Expires=3600" in url


# -- upload patience, against the platform's real MinIO ---------------------------------------
@pytest.mark.slow
def test_a_write_waits_out_an_s3_outage_instead_of_losing_the_edit(stack: LocalStack) -> None:
    """MinIO stopped before the write and back 12 s later: the write lands, once, whole.

    12 s is past what the MinIO client's own connection retries (about 6 s) cover.
    """
    s3 = stack.s3_settings()
    assert stack.minio is not None
    key = f"tests/patience/{uuid.uuid4().hex}.bin"
    body = b"edited image" * 1000
    failures: list[BaseException] = []

    def write() -> None:
        try:
            put_bytes(s3, key, body, "application/octet-stream", retry_seconds=60)
        except BaseException as exc:  # reported by the assertion below
            failures.append(exc)

    stack.minio.stop()
    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(12)
    # From this thread: the platform's processes die with the thread that started them.
    stack.minio.restart()
    writer.join(90)
    assert not writer.is_alive() and not failures, failures
    response = s3_client(s3).get_object(s3.bucket, key)
    try:
        assert response.read() == body
    finally:
        response.close()
        response.release_conn()


@pytest.mark.slow
def test_a_refused_write_fails_at_once_and_says_where(stack: LocalStack, caplog) -> None:
    """A 4xx (here: no such bucket) is an answer, not an outage: no retry, the key named."""
    s3 = stack.s3_settings().model_copy(update={"bucket": "no-such-bucket-here"})
    with pytest.raises(UpstreamError, match=r"s3://no-such-bucket-here/tests/refused\.bin"):
        put_bytes(s3, "tests/refused.bin", b"x", "application/octet-stream", retry_seconds=60)
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]
