"""The EditJob (and EditOutcome) CustomResourceDefinitions: the one source of truth.

The Helm chart's ``files/crds/editjob.yaml`` is rendered from :func:`editjob_crd`
(``editflow operator crd``) and a test keeps the two in sync. The OpenAPI
schema carries descriptions, enums, bounds and required fields so that the
apiserver itself refuses an invalid EditJob with a message naming the field,
and ``kubectl explain editjob.spec`` reads like documentation.
"""

from __future__ import annotations

from typing import Any

from editflow.events.worker_contract import MODEL_NAMES

GROUP = "editflow.io"
VERSION = "v1alpha1"
KIND = "EditJob"
PLURAL = "editjobs"
SINGULAR = "editjob"
SHORT_NAMES = ("ej",)

PHASES = ("Pending", "Queued", "Running", "Succeeded", "Failed", "NeedsReview", "Cancelled")
MODELS = MODEL_NAMES
OUTPUT_FORMATS = ("png", "jpeg")

_DNS_LABELISH = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


def _s(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _i(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "integer", "description": description, **extra}


def _obj(description: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "description": description, "properties": properties, **extra}


SOURCE = _obj(
    "Where the image to edit comes from: exactly one of url or s3Key.",
    {
        "url": _s(
            "http(s) URL of the image. Private, loopback, link-local and metadata addresses "
            "are refused unless the operator allow-lists them.",
            maxLength=4096,
            pattern=r"^https?://",
        ),
        "s3Key": _s(
            "Object key in the platform bucket, an upload of this namespace "
            "(uploads/<namespace>/...).",
            maxLength=1024,
        ),
    },
    **{
        "x-kubernetes-validations": [
            {
                "rule": "has(self.url) != has(self.s3Key)",
                "message": "set exactly one of spec.source.url or spec.source.s3Key",
            },
        ]
    },
)

PARAMETERS = _obj(
    "Generation parameters; omitted ones take the model's defaults.",
    {
        "steps": _i("Denoising steps (LongCat: 50, Turbo: 8).", minimum=1, maximum=200),
        "guidanceScale": {
            "type": "number",
            "description": "Classifier-free guidance (LongCat: 4.5, Turbo: 1).",
            "minimum": 0,
            "maximum": 30,
        },
        "seed": _i("Random seed for a reproducible result.", minimum=0, maximum=2**32 - 1),
        "negativePrompt": _s("What to avoid in the result.", maxLength=2000),
    },
)

OA_REFS = _obj(
    "The OA approval this edit belongs to (carried into labels, events and the audit log).",
    {
        "eventId": _s("CloudEvent id of the approval event: the idempotency key.", maxLength=256),
        "formId": _s("OA form id.", maxLength=256),
        "approvalInstanceId": _s("OA approval instance id.", maxLength=256),
        "applicant": _s("Who asked for the edit.", maxLength=256),
        "approvers": {
            "type": "array",
            "description": "Who approved it, in order.",
            "items": {"type": "string", "maxLength": 256},
            "maxItems": 10,
        },
        "department": _s("The applicant's department (GPU cost goes to it).", maxLength=256),
        "costCenter": _s("The cost centre the edit is charged to.", maxLength=256),
    },
)

CALLBACK = _obj(
    "Where the completion is also reported (the completion event always goes to NATS).",
    {
        "natsSubject": _s("NATS subject for the completion event.", maxLength=256),
        "webhookUrl": _s(
            "HTTPS URL that receives the signed completion.", maxLength=2048, pattern=r"^https://"
        ),
    },
)

RETRY = _obj(
    "How retriable failures (infrastructure, timeouts) are retried; permanent errors never are.",
    {
        "maxAttempts": _i("Attempts in total, the first included.", minimum=1, maximum=10),
        "backoffSeconds": _i(
            "Delay before the second attempt; doubles for each further one.",
            minimum=0,
            maximum=3600,
        ),
    },
)

OUTPUT = _obj(
    "Where and how the result is written.",
    {
        "prefix": _s("Key prefix in the bucket for the result.", maxLength=512),
        "format": _s("Image format of the result.", enum=list(OUTPUT_FORMATS)),
        "quality": _i("JPEG quality.", minimum=50, maximum=100),
    },
)

SPEC = _obj(
    "What to edit and how. Immutable once the EditJob is created.",
    {
        "source": SOURCE,
        "prompt": _s(
            "One edit instruction (Chinese or English): action + object + result; put text "
            "to render in quotes.",
            minLength=1,
            maxLength=2000,
        ),
        "model": _s("Model registry entry.", enum=list(MODELS), default=MODELS[0]),
        "parameters": PARAMETERS,
        "usage": _s(
            "OA usage (e.g. wechat-article, mini-program, display-board): selects the output "
            "profile.",
            maxLength=64,
        ),
        "template": _obj(
            "Prompt template the instruction was built from, if any.",
            {
                "id": _s("Template id.", maxLength=64),
                "parameters": {
                    "type": "object",
                    "description": "Template parameters.",
                    "additionalProperties": {"type": "string", "maxLength": 500},
                },
            },
        ),
        "output": OUTPUT,
        "oa": OA_REFS,
        "callback": CALLBACK,
        "priority": _i("Higher runs first when GPUs are busy.", minimum=0, maximum=100),
        "deadlineSeconds": _i(
            "Active deadline of one attempt's Job, in seconds.", minimum=30, maximum=86400
        ),
        "pendingTimeoutSeconds": _i(
            "How long an attempt may wait for a GPU before it counts as failed.",
            minimum=10,
            maximum=86400,
        ),
        "retry": RETRY,
        "variants": _i(
            "Results from one pipeline call (num_images_per_prompt); the applicant picks one.",
            minimum=1,
            maximum=4,
        ),
        "preview": {
            "type": "boolean",
            "description": "An approver's preview: Turbo, 8 steps, reduced size, labelled "
            "approximate; runs in the preview share of the namespace's GPU cap.",
        },
    },
    required=["source", "prompt"],
    **{
        "x-kubernetes-validations": [
            {"rule": "self == oldSelf", "message": "spec is immutable: create a new EditJob"},
        ]
    },
)

CONDITION = _obj(
    "A status condition.",
    {
        "type": _s("Condition type."),
        "status": _s("True, False or Unknown.", enum=["True", "False", "Unknown"]),
        "reason": _s("Machine-readable reason (CamelCase)."),
        "message": _s("What a person should know."),
        "lastTransitionTime": _s("When the status last changed.", format="date-time"),
    },
    required=["type", "status"],
)

REVIEWER = _obj(
    "A desk reviewer, as the gateway identified them.",
    {"id": _s("The reviewer's id."), "name": _s("The reviewer's name.")},
)

STATUS = _obj(
    "What happened, written by the operator.",
    {
        "phase": _s("Where the edit is in its life.", enum=list(PHASES)),
        "message": _s("Human-readable summary of the current phase."),
        "attempts": _i("Attempts started so far."),
        "jobName": _s(
            "The current attempt: its Kubernetes Job (worker.mode job) or its work message (warm)."
        ),
        "workerPod": _s("The Pod that runs (or ran) the current attempt."),
        "queuePosition": _i("1 = next to start (refreshed every few seconds while Queued)."),
        "resultKey": _s("Object key of the result image."),
        "resultUrl": _s("Presigned URL of the result image."),
        "costSeconds": {"type": "number", "description": "Total edit time in seconds."},
        "gpuSeconds": {
            "type": "number",
            "description": "GPU-seconds of every attempt (failed and cancelled ones too).",
        },
        "errorCode": _s("Stable error code of the last failure."),
        "completionEventId": _s(
            "Id of the outcome's completion event, written with the final phase (the outcome "
            "to deliver)."
        ),
        "delivery": _obj(
            "The outcome's delivery while a webhook waits for its next try (gone once done).",
            {
                "delivered": {"type": "array", "items": {"type": "string"}, "maxItems": 8},
                "gaveUp": {"type": "array", "items": {"type": "string"}, "maxItems": 8},
                "attempts": _i("Webhook attempts so far."),
                "nextAttemptAt": _s("When the webhook is tried again.", format="date-time"),
                "lastError": _s("Why the last attempt failed.", maxLength=500),
            },
        ),
        "completionPublishedAt": _s(
            "When the completion event reached the completions stream.", format="date-time"
        ),
        "callbackDelivery": _s(
            "The OA callback webhook: pending, delivered, gave_up, or none.",
            enum=["pending", "delivered", "gave_up", "none"],
        ),
        "queuedAt": _s("When the edit started waiting for capacity.", format="date-time"),
        "startedAt": _s("When the current attempt started.", format="date-time"),
        "finishedAt": _s("When the edit reached its final phase.", format="date-time"),
        "sampledForReview": {"type": "boolean", "description": "Flagged for quality review."},
        "variants": {
            "type": "array",
            "description": "Every result when spec.variants > 1 (variant 1 is resultKey).",
            "maxItems": 4,
            "items": _obj(
                "One result of the edit.",
                {
                    "index": _i("1-based variant number.", minimum=1, maximum=4),
                    "seed": {"type": "integer", "description": "The variant's seed."},
                    "resultKey": _s("Object key of the variant's image."),
                    "resultUrl": _s("Presigned URL of the variant's image."),
                    "verdict": _s(
                        "The quality gate's verdict on this variant.",
                        enum=["ok", "no_visible_change", "global_change"],
                    ),
                },
            ),
        },
        "selectedVariant": _i("The variant the applicant picked.", minimum=1, maximum=4),
        "selectedAt": _s("When the applicant picked it.", format="date-time"),
        "selectedBy": _s("Who picked it (the OA user id)."),
        "quality": _obj(
            "The automatic quality gate's view of the result (gate.mode says what it decides).",
            {
                "verdict": _s(
                    "ok, no_visible_change or global_change.",
                    enum=["ok", "no_visible_change", "global_change"],
                ),
                "kind": _s("Kind of edit whose thresholds applied: subtle, local or global."),
                "changedFraction": {
                    "type": "number",
                    "description": "Share of the image that changed (blurred difference map).",
                },
                "ssim": {"type": "number", "description": "Global structural similarity."},
                "spread": {
                    "type": "number",
                    "description": "How evenly the change spreads (0: one place, 1: everywhere).",
                },
                "reason": _s("What the verdict means for this result."),
            },
        ),
        # -- the designer's desk (docs/desk.md) --
        "reviewedBy": REVIEWER,
        "reviewInstruction": _s(
            "A desk reviewer's corrected instruction for the re-run (spec.prompt stays the "
            "applicant's)."
        ),
        "reviewAttempts": _i("Attempts a desk reviewer added beyond maxAttempts (re-runs)."),
        "reviewVerdict": _obj(
            "A desk reviewer's verdict on a sampled or gate-flagged result.",
            {
                "verdict": _s("good or poor.", enum=["good", "poor"]),
                "betterInstruction": _s("An instruction the reviewer would have used instead."),
                "by": REVIEWER,
                "at": _s("When the verdict was recorded.", format="date-time"),
            },
        ),
        "workerLog": _obj(
            "Warm mode: the worker's own log lines of its last failed attempt (a Job "
            "attempt's are its Pod's termination message); the desk shows them.",
            {
                "attempt": _i("The attempt the lines are of."),
                "lines": {
                    "type": "array",
                    "maxItems": 20,
                    "items": {"type": "string", "maxLength": 200},
                    "description": "The last lines, each cut at 200 characters.",
                },
            },
        ),
        "failedAttempts": {
            "type": "array",
            "maxItems": 10,
            "description": "Each failed attempt's worker, error code and message (the last "
            "10), for the desk: the fields above tell only the last attempt.",
            "items": {
                "type": "object",
                "properties": {
                    "attempt": _i("The attempt."),
                    "worker": _s("The Pod that ran it (warm mode: one of the pool's workers)."),
                    "errorCode": _s("Why it failed, as a code."),
                    "message": _s("Why it failed, in words (at most 500 characters)."),
                },
            },
        },
        "reviewActionId": _s("Id of the last desk action applied here (its idempotency key)."),
        "observedGeneration": _i("Generation the status refers to."),
        "conditions": {
            "type": "array",
            "description": "Ready, Scheduled, Completed, ... conditions.",
            "items": CONDITION,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    },
    **{"x-kubernetes-preserve-unknown-fields": True},
)

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
    {"name": "Attempts", "type": "integer", "jsonPath": ".status.attempts"},
    {"name": "Cost", "type": "number", "jsonPath": ".status.costSeconds", "description": "s"},
    {"name": "Gate", "type": "string", "jsonPath": ".status.quality.verdict"},
    {"name": "Result", "type": "string", "jsonPath": ".status.resultKey"},
    {"name": "Worker", "type": "string", "jsonPath": ".status.workerPod", "priority": 1},
    {"name": "Preview", "type": "boolean", "jsonPath": ".spec.preview", "priority": 1},
    {"name": "Queue", "type": "integer", "jsonPath": ".status.queuePosition", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _crd(
    *,
    plural: str,
    singular: str,
    kind: str,
    short_names: tuple[str, ...],
    columns: list[dict[str, Any]],
    description: str,
    spec: dict[str, Any],
    status: dict[str, Any],
) -> dict[str, Any]:
    """One namespaced editflow CRD with a status subresource (EditJob, EditOutcome)."""
    names: dict[str, Any] = {"plural": plural, "singular": singular, "kind": kind}
    if short_names:
        names["shortNames"] = list(short_names)
    names["categories"] = ["editflow"]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "editflow"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": names,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": _obj(
                            description,
                            {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                            required=["spec"],
                        )
                    },
                }
            ],
        },
    }


def editjob_crd() -> dict[str, Any]:
    """The CRD manifest, as the apiserver and the Helm chart receive it."""
    return _crd(
        plural=PLURAL,
        singular=SINGULAR,
        kind=KIND,
        short_names=SHORT_NAMES,
        columns=PRINTER_COLUMNS,
        description="An image edit approved in the OA system, run as a GPU Job.",
        spec=SPEC,
        status=STATUS,
    )


def editjob_path(namespace: str, name: str = "") -> str:
    """The REST path of a namespace's EditJobs, or of one of them."""
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return f"{base}/{name}" if name else base


# -- EditOutcome: the durable outbox -----------------------------------------------------
OUTCOME_KIND = "EditOutcome"
OUTCOME_PLURAL = "editoutcomes"
OUTCOME_SINGULAR = "editoutcome"

OUTCOME_SPEC = _obj(
    "One outcome to deliver: written before anything is sent, removed once all of it arrived.",
    {
        "editjob": _s("namespace/name of the EditJob (which may already be deleted)."),
        "editjobUid": _s("uid of that EditJob."),
        "approvalEventId": _s("The approval event the outcome answers."),
        "completion": _s("The completion CloudEvent (JSON) for the completions stream."),
        "review": _s("The manual-review CloudEvent (JSON), for NeedsReview outcomes."),
        "natsSubject": _s("The OA system's NATS callback subject, if any."),
        "webhookUrl": _s("The OA system's HTTPS callback, if any."),
        "alertUrl": _s(
            "Ignored: outcomes no longer copy the alert URL (the operator reads its setting)."
        ),
        "alert": _s("The alert body (JSON)."),
        "audit": _s("The audit record (JSON) for the long-kept audit stream."),
        "expiresAt": _s("Deliveries stop being retried after this.", format="date-time"),
    },
    **{"x-kubernetes-preserve-unknown-fields": True},
)

OUTCOME_STATUS = _obj(
    "Delivery progress, written by the operator.",
    {
        "delivered": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Parts delivered: completion, review, audit, subject, webhook, alert.",
        },
        "attempts": _i("Webhook delivery attempts so far."),
        "nextAttemptAt": _s("When the next webhook attempt is due.", format="date-time"),
        "lastError": _s("Why the last attempt failed."),
        "gaveUp": {"type": "array", "items": {"type": "string"}, "description": "Parts given up."},
    },
    **{"x-kubernetes-preserve-unknown-fields": True},
)


OUTCOME_COLUMNS = [
    {"name": "EditJob", "type": "string", "jsonPath": ".spec.editjob"},
    {"name": "Delivered", "type": "string", "jsonPath": ".status.delivered"},
    {"name": "Attempts", "type": "integer", "jsonPath": ".status.attempts"},
    {"name": "Error", "type": "string", "jsonPath": ".status.lastError"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def editoutcome_crd() -> dict[str, Any]:
    """The outbox's CRD: one small object per outcome (not one per namespace: no hot spot)."""
    return _crd(
        plural=OUTCOME_PLURAL,
        singular=OUTCOME_SINGULAR,
        kind=OUTCOME_KIND,
        short_names=(),
        columns=OUTCOME_COLUMNS,
        description="An EditJob outcome waiting to be delivered (editflow's outbox).",
        spec=OUTCOME_SPEC,
        status=OUTCOME_STATUS,
    )


def editoutcome_path(namespace: str, name: str = "") -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{OUTCOME_PLURAL}"
    return f"{base}/{name}" if name else base
