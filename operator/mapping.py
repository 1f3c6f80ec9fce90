"""Approval event -> EditJob manifest: a pure function with golden-file tests.

The event's CloudEvent id becomes the EditJob's name (see :mod:`.names`), so
the bridge may see the same event twice (at-least-once delivery) and still
create exactly one EditJob.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from editflow.core.errors import InvalidInputError
from editflow.events.models import ApprovalEvent
from editflow.operator.crd import GROUP, KIND, MODELS, VERSION
from editflow.operator.names import (
    ANNOTATION_EVENT_ID,
    FINALIZER,
    LABEL_APPROVAL,
    LABEL_FORM,
    MANAGED_BY,
    editjob_name,
    label_value,
)
from editflow.operator.tenancy import check_source_key

PRIORITIES = {"low": 10, "normal": 50, "high": 90}


def _source(
    image_url: str | None, image_key: str | None, bucket: str, *, namespace: str, upload_prefix: str
) -> dict[str, str]:
    """The EditJob's source; an S3 key must be an upload of the EditJob's own namespace."""
    if image_key is not None:
        check_source_key(
            image_key, namespace=namespace, upload_prefix=upload_prefix, field="data.image_key"
        )
        return {"s3Key": image_key}
    assert image_url is not None
    parts = urlsplit(image_url)
    if parts.scheme == "s3":
        if parts.netloc != bucket:
            raise InvalidInputError(
                f"s3 images must live in the platform bucket {bucket!r}, not {parts.netloc!r}",
                field="data.image_url",
            )
        key = parts.path.lstrip("/")
        check_source_key(
            key, namespace=namespace, upload_prefix=upload_prefix, field="data.image_url"
        )
        return {"s3Key": key}
    return {"url": image_url}


#: The model a preview of the default model runs (same family, distilled to 8 steps).
PREVIEW_MODELS = {"longcat-image-edit": "longcat-image-edit-turbo"}
PREVIEW_STEPS = 8


def apply_preview(spec: dict[str, Any]) -> None:
    """An approver's preview: the Turbo model where there is one, 8 steps, one result.

    The reduced size is the worker's (``preview`` in the request). The result is labelled
    approximate: a Turbo 8-step edit at a smaller size does not reproduce the full edit.
    """
    spec["preview"] = True
    spec["model"] = PREVIEW_MODELS.get(spec.get("model") or "", spec.get("model"))
    spec["parameters"] = {**(spec.get("parameters") or {}), "steps": PREVIEW_STEPS}
    spec.pop("variants", None)


def editjob_from_approval(
    event: ApprovalEvent,
    *,
    namespace: str,
    bucket: str,
    default_model: str,
    upload_prefix: str = "uploads",
) -> dict[str, Any]:
    """The EditJob an approval event asks for.

    ``upload_prefix`` is ``operator.upload_prefix``: an ``image_key`` (or ``s3://``
    URL) must lie under ``<upload_prefix>/<namespace>/``.
    """
    data = event.data
    model = data.model or default_model
    if model not in MODELS:
        raise InvalidInputError(
            f"unknown model {model!r}; expected one of {', '.join(MODELS)}", field="data.model"
        )
    spec: dict[str, Any] = {
        "source": _source(
            data.image_url, data.image_key, bucket, namespace=namespace, upload_prefix=upload_prefix
        ),
        "prompt": data.instruction,
        "model": model,
        "usage": data.usage,
        "priority": PRIORITIES[data.priority],
        "oa": {
            "eventId": event.id,
            "formId": data.form_id,
            "approvalInstanceId": data.approval_id,
            "applicant": data.applicant.id,
            "approvers": [a.id for a in data.approvers],
            **({"department": data.department} if data.department else {}),
            **({"costCenter": data.cost_center} if data.cost_center else {}),
        },
    }
    if data.generation is not None:
        params = {
            "steps": data.generation.steps,
            "guidanceScale": data.generation.guidance_scale,
            "seed": data.generation.seed,
        }
        spec["parameters"] = {k: v for k, v in params.items() if v is not None}
    if data.template is not None:
        spec["template"] = {"id": data.template.id, "parameters": dict(data.template.params)}
    if data.variants > 1:
        spec["variants"] = data.variants
    if data.stage == "preview":
        apply_preview(spec)
    if data.callback is not None:
        callback = {
            "natsSubject": data.callback.nats_subject,
            "webhookUrl": data.callback.webhook_url,
        }
        spec["callback"] = {k: v for k, v in callback.items() if v is not None}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": editjob_name(event.id),
            "namespace": namespace,
            "labels": {
                **MANAGED_BY,
                LABEL_FORM: label_value(data.form_id),
                LABEL_APPROVAL: label_value(data.approval_id),
            },
            "annotations": {ANNOTATION_EVENT_ID: event.id},
            # Created with the operator's finalizer, so kopf need not PATCH it in afterwards.
            "finalizers": [FINALIZER],
        },
        "spec": spec,
    }
