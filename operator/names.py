"""Deterministic names and the labels that link EditJob -> Job -> Pod -> OA ids.

One approval event always maps to the same EditJob name, and one attempt of
an EditJob to the same Job name, so a repeated create is ``AlreadyExists``
rather than a second GPU run (the KEDA/Knative duplicate-Job complaint).
"""

from __future__ import annotations

import hashlib
import re

from editflow.operator.crd import GROUP

LABEL_EDITJOB = f"{GROUP}/editjob"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_FORM = f"{GROUP}/oa-form"
LABEL_APPROVAL = f"{GROUP}/oa-approval"
#: Jobs of approvers' previews: they count against the preview share of the GPU cap.
LABEL_LANE = f"{GROUP}/lane"
LANE_PREVIEW = "preview"
#: Warm worker Jobs and Pods: the model of the pool they belong to.
LABEL_POOL = f"{GROUP}/warm-pool"
#: Every worker Pod, in every dispatch mode, carries ``LABEL_WORKER: "true"``: the chart's
#: worker NetworkPolicy selects it, so no mode's Pods escape the policy (issue 20 item 4).
LABEL_WORKER = f"{GROUP}/worker"
WORKER_LABELS = {LABEL_WORKER: "true"}
#: The hash of the configuration a warm worker's Pod was created from.
ANNOTATION_CONFIG_HASH = f"{GROUP}/config-hash"
ANNOTATION_EVENT_ID = f"{GROUP}/event-id"
ANNOTATION_CANCEL = f"{GROUP}/cancel"
ANNOTATION_RESOLVE = f"{GROUP}/resolve-result-key"
#: A desk reviewer sent a NeedsReview edit back to its applicant with this message.
ANNOTATION_SEND_BACK = f"{GROUP}/send-back"
#: The desk reviewer ({"id", "name"} as JSON) who resolved or sent back the edit.
ANNOTATION_REVIEWED_BY = f"{GROUP}/reviewed-by"
#: The id of the desk action carried by the annotations above (its idempotency key).
ANNOTATION_REVIEW_ACTION = f"{GROUP}/review-action"
#: The operator's deletion finalizer (kopf's, named by us): deleting an EditJob reports `cancelled`.
FINALIZER = f"{GROUP}/cleanup"
MANAGED_BY = {
    "app.kubernetes.io/managed-by": "editflow-operator",
    "app.kubernetes.io/part-of": "editflow",
}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def editjob_name(event_id: str) -> str:
    """``ej-<id>`` when the id is already a short DNS label (uuids are), else ``ej-<hash>``."""
    lowered = event_id.lower()
    if lowered == event_id and len(event_id) <= 50 and _DNS_LABEL.match(event_id):
        return f"ej-{event_id}"
    return f"ej-{_digest(event_id, 32)}"


def job_name(editjob: str, attempt: int) -> str:
    """``<editjob>-a<attempt>``, shortened with a hash to stay a valid 63-char label value
    (the Job controller copies the Job name into the Pod's ``job-name`` label)."""
    suffix = f"-a{attempt}"
    if len(editjob) + len(suffix) <= 63:
        return editjob + suffix
    return f"{editjob[: 63 - len(suffix) - 9]}-{_digest(editjob, 8)}{suffix}"


def label_value(value: str) -> str:
    """A label-safe rendering of an OA id (ids may contain anything)."""
    if len(value) <= 63 and _LABEL_VALUE.match(value):
        return value
    return _digest(value, 40)
