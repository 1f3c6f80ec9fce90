"""The operator's key reaches every tenant's objects, so it presigns only the edit's own
results (issue 20 §1): a worker of namespace A that reports B's object as its result gets a
failed attempt, not a URL to B's object. Presigning is computed locally (no S3 call)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr

from editflow.core.settings import S3Settings
from editflow.events.worker_contract import VariantResult, WorkerResult
from editflow.operator.presign import (
    RESULT_OUTSIDE_EDIT,
    KeyOutsideEdit,
    ResultPresigner,
    signed_by_operator,
)
from editflow.operator.tenancy import edit_result_prefix

S3 = S3Settings(
    endpoint="127.0.0.1:9", bucket="edits", access_key=SecretStr("k"), secret_key=SecretStr("s")
)
EDIT_A = {"metadata": {"name": "poster", "namespace": "team-a"}, "spec": {}}
WITHIN = edit_result_prefix(EDIT_A, result_prefix="results")


def result(key: str, *variant_keys: str) -> WorkerResult:
    variants = [
        VariantResult(index=i + 1, result_key=k, seed=i) for i, k in enumerate(variant_keys)
    ]
    return WorkerResult(
        status="success", edit_id="poster", attempt=1, model="m", result_key=key, variants=variants
    )


def test_the_edits_own_results_are_signed() -> None:
    own = f"{WITHIN}attempt-1/result.png"
    signed = signed_by_operator(
        result(own, own, f"{WITHIN}attempt-1/result-2.png"), ResultPresigner(S3), within=WITHIN
    )
    assert signed.status == "success"
    assert urlsplit(signed.result_url).path == f"/edits/{own}"
    assert all(v.result_url for v in signed.variants)


@pytest.mark.parametrize(
    "key",
    [
        "results/team-b/poster/attempt-1/result.png",  # another namespace's result
        "uploads/team-b/ab/input.png",  # another namespace's upload
        f"{WITHIN}../../team-b/x/result.png",  # climbing out
        WITHIN,  # the prefix itself
        "results/team-a/poster-2/attempt-1/result.png",  # a sibling edit sharing the stem
    ],
)
def test_a_result_outside_the_edit_fails_and_is_never_signed(key: str) -> None:
    for reported in (result(key), result(f"{WITHIN}attempt-1/result.png", key)):
        checked = signed_by_operator(reported, ResultPresigner(S3), within=WITHIN)
        assert checked.status == "failed" and checked.result_url is None
        assert checked.result_key is None and checked.variants == []
        assert checked.error is not None and checked.error.code == RESULT_OUTSIDE_EDIT
        assert not checked.error.retriable and key in checked.error.message
    with pytest.raises(KeyOutsideEdit):
        ResultPresigner(S3).url(key, within=WITHIN)
