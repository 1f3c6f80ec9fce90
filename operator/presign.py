"""Result URLs handed to OA, presigned with the operator's own key.

The worker's result JSON carries a URL the worker presigned, but in Job mode
the worker holds only its attempt's STS session (:mod:`.credentials`), and a
URL signed with session credentials stops working when the session expires
(minutes after the attempt), long before ``s3.presign_expiry_seconds``. So the
operator re-signs ``result_key`` with its long-lived key when it records the
success, and the worker's URL is never passed on. Presigning is computed
locally (the region is configured): no S3 call in the reconcile path.

The operator's key reaches every tenant's objects, so it presigns only keys under the edit's
own result prefix (issue 20 §1): a worker that reports another namespace's object as its
result (a compromised worker, a tampered termination message) gets a failed attempt, never
a URL to that object.
"""

from __future__ import annotations

from datetime import timedelta

from editflow.core.errors import ErrorInfo
from editflow.core.s3 import presigning_client
from editflow.core.settings import S3Settings
from editflow.events.worker_contract import WorkerResult
from editflow.operator.tenancy import key_within

#: The error code of a result whose key lies outside its edit's result prefix.
RESULT_OUTSIDE_EDIT = "result_outside_edit"


class KeyOutsideEdit(ValueError):
    """A key the operator will not presign: it is not under the edit's result prefix."""

    def __init__(self, key: str, within: str) -> None:
        super().__init__(
            f"result key {key!r} is outside this edit's result prefix {within}: not presigned"
        )


class ResultPresigner:
    """GET URLs on the public endpoint, valid ``presign_expiry_seconds``."""

    def __init__(self, s3: S3Settings) -> None:
        self.bucket = s3.bucket
        self.expiry = timedelta(seconds=s3.presign_expiry_seconds)
        self.client = presigning_client(s3)

    def url(self, key: str, *, within: str) -> str:
        """A GET URL for ``key``, which must lie under ``within`` (the edit's result prefix,
        :func:`editflow.operator.tenancy.edit_result_prefix`); else :class:`KeyOutsideEdit`."""
        if not key_within(key, within):
            raise KeyOutsideEdit(key, within)
        return self.client.presigned_get_object(self.bucket, key, expires=self.expiry)


def signed_by_operator(
    result: WorkerResult, presigner: ResultPresigner, *, within: str
) -> WorkerResult:
    """The result with ``result_url`` re-signed by the operator (unchanged without a key), or
    a failed result when a key lies outside ``within``: nothing outside the edit is signed."""
    if result.status != "success" or not result.result_key:
        return result
    try:
        variants = [
            v.model_copy(update={"result_url": presigner.url(v.result_key, within=within)})
            for v in result.variants
        ]
        url = presigner.url(result.result_key, within=within)
    except KeyOutsideEdit as exc:
        error = ErrorInfo(code=RESULT_OUTSIDE_EDIT, message=str(exc), retriable=False)
        return result.model_copy(
            update={
                "status": "failed",
                "result_key": None,
                "result_url": None,
                "variants": [],
                "error": error,
            }
        )
    return result.model_copy(update={"result_url": url, "variants": variants})
