"""Step 6: report the outcome: stdout, the termination message, S3; and the exit code.

The :class:`~editflow.events.worker_contract.WorkerResult` JSON goes

1. to S3 at :func:`~editflow.events.worker_contract.result_json_key` (next to
   the image), so the operator recovers it after the Job and Pod are gone;
2. to the termination message file, cut to fit the kubelet's 4096 bytes
   (the error message is shortened first, then the presigned URL dropped:
   both are complete in S3);
3. to stdout as the last line.

The process then exits with the error's :class:`~editflow.core.errors.ExitCode`.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from editflow.core.errors import EditflowError, ErrorInfo, ExitCode
from editflow.core.settings import S3Settings
from editflow.events.worker_contract import (
    TERMINATION_MESSAGE_LIMIT,
    WorkerResult,
    result_json_key,
)
from editflow.inference.output import put_bytes

log = logging.getLogger(__name__)


def result_json(result: WorkerResult) -> str:
    return result.model_dump_json(exclude_none=True)


def termination_message(result: WorkerResult, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """``result`` as JSON of at most ``limit`` UTF-8 bytes, still valid JSON."""
    text = result_json(result)
    if len(text.encode()) <= limit:
        return text
    data = json.loads(text)
    if error := data.get("error"):
        over = len(text.encode()) - limit
        message = error["message"]
        error["message"] = message[: max(0, len(message) - over - 40)] + " [truncated]"
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    if len(text.encode()) > limit:
        data.pop("result_url", None)
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    while len(text.encode()) > limit and data.get("error"):
        data["error"]["message"] = data["error"]["message"][: len(data["error"]["message"]) // 2]
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text


def write_termination_message(path: str | None, result: WorkerResult) -> bool:
    if not path:
        return False
    try:
        Path(path).write_text(termination_message(result), encoding="utf-8")
        return True
    except OSError as exc:  # outside Kubernetes /dev/termination-log may not exist
        log.info("termination message not written", extra={"path": path, "error": str(exc)})
        return False


def upload_result(
    result: WorkerResult, s3: S3Settings, key_prefix: str, *, retry_seconds: float = 0.0
) -> str | None:
    """Store ``result`` next to the image; best effort on the failure path."""
    key = result_json_key(key_prefix, result.edit_id, result.attempt)
    try:
        data = result_json(result).encode()
        put_bytes(s3, key, data, "application/json", retry_seconds=retry_seconds)
    except EditflowError as exc:
        log.warning("result JSON not stored in S3", extra={"key": key, "error": str(exc)})
        return None
    return key


def exit_code_for(result: WorkerResult, error: EditflowError | None) -> int:
    if result.status == "success":
        return ExitCode.OK
    if error is not None:
        return int(error.exit_code)
    return ExitCode.UNEXPECTED


def unexpected_error_info(exc: BaseException) -> ErrorInfo:
    return ErrorInfo(
        code="internal",
        message=f"unexpected worker failure: {type(exc).__name__}: {exc}",
        retriable=True,
    )


def print_last_line(result: WorkerResult) -> None:
    sys.stdout.flush()
    print(result_json(result), flush=True)
