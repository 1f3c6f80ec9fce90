"""Result URLs handed to OA, presigned with the operator's own key.

The worker's result JSON carries a URL the worker presigned, but in Job mode
the worker holds only its attempt's STS session (:mod:`.credentials`), and a
URL signed with session credentials stops working when the session expires
(minutes after the attempt), long before ``s3.presign_expiry_seconds``. So the
operator re-signs ``result_key`` with its long-lived key when it records the
success, and the worker's URL is never passed on. Presigning is computed
locally (the region is configured): no S3 call in the reconcile path.
"""

from __future__ import annotations

from datetime import timedelta

from editflow.core.s3 import presigning_client
from editflow.core.settings import S3Settings
from editflow.events.worker_contract import WorkerResult


class ResultPresigner:
    """GET URLs on the public endpoint, valid ``presign_expiry_seconds``."""

    def __init__(self, s3: S3Settings) -> None:
        self.bucket = s3.bucket
        self.expiry = timedelta(seconds=s3.presign_expiry_seconds)
        self.client = presigning_client(s3)

    def url(self, key: str) -> str:
        return self.client.presigned_get_object(self.bucket, key, expires=self.expiry)


def signed_by_operator(result: WorkerResult, presigner: ResultPresigner) -> WorkerResult:
    """The result with ``result_url`` re-signed by the operator (unchanged without a key)."""
    if result.status != "success" or not result.result_key:
        return result
    variants = [
        v.model_copy(update={"result_url": presigner.url(v.result_key)}) for v in result.variants
    ]
    return result.model_copy(
        update={"result_url": presigner.url(result.result_key), "variants": variants}
    )
