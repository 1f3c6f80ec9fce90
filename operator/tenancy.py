"""Which S3 keys belong to which namespace, and what one attempt may touch: pure functions.

Every namespace has its own prefix in the platform bucket::

    <upload_prefix>/<namespace>/...    images uploaded for that namespace's edits
    <result_prefix>/<namespace>/...    results of its EditJobs

An EditJob may only name an upload of its own namespace as ``spec.source.s3Key``:
otherwise one tenant could have the worker read (and hand back, edited) another
tenant's image or result just by naming its key. The same rule drives the
session policy of an attempt's short-lived credentials
(:mod:`editflow.operator.credentials`): read its one input object, write under
its one output prefix, nothing else, not even a bucket listing.
"""

from __future__ import annotations

import json
from typing import Any

from editflow.core.errors import ErrorInfo, InvalidInputError

#: The errorCode an EditJob ends with when it names a key of another namespace.
S3_KEY_OUTSIDE_NAMESPACE = "s3_key_outside_namespace"

#: What a worker does with its output prefix (minio's put_object goes multipart above 5 MiB).
_WRITE_ACTIONS = ("s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts")


class S3KeyOutsideNamespaceError(InvalidInputError):
    """``spec.source.s3Key`` names an object outside the namespace's upload prefix."""

    code = S3_KEY_OUTSIDE_NAMESPACE


def namespace_prefix(prefix: str, namespace: str) -> str:
    """``<prefix>/<namespace>/``: the part of the bucket that belongs to one namespace."""
    return f"{prefix.strip('/')}/{namespace}/"


def check_source_key(key: str, *, namespace: str, upload_prefix: str, field: str) -> None:
    """Refuse a source key outside ``<upload_prefix>/<namespace>/`` (or that climbs out of it).

    ``..`` and empty segments are refused too: S3 keys are not paths, but some
    gateways and tools normalise them, and a key that reads as another
    namespace's object to a person must not pass.
    """
    allowed = namespace_prefix(upload_prefix, namespace)
    segments = key.split("/")
    if not key.startswith(allowed) or any(s in ("", ".", "..") for s in segments):
        raise S3KeyOutsideNamespaceError(
            f"{field} {key!r} is not an upload of namespace {namespace!r}: "
            f"it must lie under {allowed} (upload the image with POST /v1/uploads)",
            field=field,
        )


def source_key_refusal(editjob: dict[str, Any], *, upload_prefix: str) -> ErrorInfo | None:
    """Why an EditJob's ``spec.source.s3Key`` must not be read (``None``: no key, or its own)."""
    key = ((editjob.get("spec") or {}).get("source") or {}).get("s3Key")
    if not isinstance(key, str):
        return None
    try:
        check_source_key(
            key,
            namespace=editjob["metadata"]["namespace"],
            upload_prefix=upload_prefix,
            field="spec.source.s3Key",
        )
    except S3KeyOutsideNamespaceError as exc:
        return exc.info()
    return None


#: The errorCode of an EditJob whose ``spec.output.prefix`` lies outside its namespace.
OUTPUT_PREFIX_OUTSIDE_NAMESPACE = "output_prefix_outside_namespace"


def _climbs(key: str) -> bool:
    return any(s in ("", ".", "..") for s in key.strip("/").split("/"))


def output_prefix_refusal(editjob: dict[str, Any], *, result_prefix: str) -> ErrorInfo | None:
    """Why ``spec.output.prefix`` must not be written (``None``: unset, or inside its own
    ``<result_prefix>/<namespace>/``). Otherwise a tenant could have a worker write into
    another namespace's results (issue 20 item 3)."""
    prefix = ((editjob.get("spec") or {}).get("output") or {}).get("prefix")
    if not isinstance(prefix, str):
        return None
    allowed = namespace_prefix(result_prefix, editjob["metadata"]["namespace"])
    if (prefix.strip("/") + "/").startswith(allowed) and not _climbs(prefix):
        return None
    return ErrorInfo(
        code=OUTPUT_PREFIX_OUTSIDE_NAMESPACE,
        message=(
            f"spec.output.prefix {prefix!r} is outside this namespace's results: "
            f"it must lie under {allowed} (or be left out)"
        ),
        retriable=False,
        field="spec.output.prefix",
    )


def edit_result_prefix(editjob: dict[str, Any], *, result_prefix: str) -> str:
    """``<output prefix>/<edit>/``: where this EditJob's results (and a designer's) live."""
    meta = editjob["metadata"]
    output = ((editjob.get("spec") or {}).get("output") or {}).get("prefix")
    base = output or f"{result_prefix.strip('/')}/{meta['namespace']}"
    return f"{base.strip('/')}/{meta['name']}/"


def key_within(key: str, prefix: str) -> bool:
    """Whether ``key`` names an object strictly under ``prefix`` (``.../``) without climbing
    out of it (``..``, ``.`` or empty segments): the check behind every key a tenant or a
    worker hands the operator, before the operator's own key reads or signs it."""
    return key.startswith(prefix) and len(key) > len(prefix) and not _climbs(key)


def resolve_key_refusal(
    editjob: dict[str, Any], key: str, *, result_prefix: str, field: str
) -> str | None:
    """Why a designer's result key must not be taken (``None``: under the edit's own
    result prefix). The gateway presigns a result key for the caller: a key of another
    tenant would hand out its object."""
    allowed = edit_result_prefix(editjob, result_prefix=result_prefix)
    if key_within(key, allowed):
        return None
    return f"{field} {key!r} is not a result of this edit: it must lie under {allowed}"


#: The errorCode of an EditJob that claims an approval it was not made for.
EVENT_ID_CLAIMED = "event_id_claimed"


def event_id_refusal(editjob: dict[str, Any]) -> ErrorInfo | None:
    """Why ``spec.oa.eventId`` must not be taken as this EditJob's approval (``None``: unset,
    or the EditJob carries the name the bridge derives from that id).

    The bridge names an approval's EditJob ``editjob_name(event id)`` (re-runs add
    ``-r<n>``). An EditJob under another name that claims the id would have its outcome
    published as the approval's and the id recorded as finished, swallowing the real approval
    (issue 20 §3). Without the chart's admission policy, which checks the requesting user,
    this is the check that remains; a tenant who also takes the exact name is stopped only by
    the policy (its ``ej-`` rule).
    """
    from editflow.operator.names import editjob_name

    event_id = ((editjob.get("spec") or {}).get("oa") or {}).get("eventId")
    if not isinstance(event_id, str) or not event_id:
        return None
    name = editjob["metadata"]["name"]
    own = editjob_name(event_id)
    if name == own or (name.startswith(f"{own}-r") and name[len(own) + 2 :].isdigit()):
        return None
    return ErrorInfo(
        code=EVENT_ID_CLAIMED,
        message=(
            "spec.oa.eventId is set by the approval bridge only (an approval id can be claimed "
            "by its approval alone): leave it out, and the EditJob gets an id of its own"
        ),
        retriable=False,
        field="spec.oa.eventId",
    )


def attempt_policy(*, bucket: str, input_key: str | None, output_prefix: str) -> dict[str, Any]:
    """The IAM session policy of one attempt: its input object and its output prefix only.

    No ``s3:ListBucket`` (a worker never lists, and a listing would show other
    tenants' keys) and no ``s3:DeleteObject`` (results are never rewritten).
    """
    out = output_prefix.strip("/")
    statements: list[dict[str, Any]] = [
        {
            "Sid": "WriteOutput",
            "Effect": "Allow",
            "Action": list(_WRITE_ACTIONS),
            "Resource": [f"arn:aws:s3:::{bucket}/{out}/*"],
        }
    ]
    if input_key:
        statements.insert(
            0,
            {
                "Sid": "ReadInput",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [f"arn:aws:s3:::{bucket}/{input_key}"],
            },
        )
    return {"Version": "2012-10-17", "Statement": statements}


def read_only_policy(*, bucket: str, prefix: str) -> dict[str, Any]:
    """Read (and list) one prefix, nothing else: the weights credential's policy."""
    base = prefix.strip("/")
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadWeights",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [f"arn:aws:s3:::{bucket}/{base}/*"],
            },
            {
                "Sid": "ListWeights",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
                "Condition": {"StringLike": {"s3:prefix": [f"{base}/*"]}},
            },
        ],
    }


def policy_json(policy: dict[str, Any]) -> str:
    """Compact JSON (STS limits a session policy to 2048 characters)."""
    return json.dumps(policy, separators=(",", ":"), sort_keys=True)
