"""EditJob + attempt -> the batch/v1 Job that runs the worker: a pure function.

Each attempt is its own Job (brief §8): ``backoffLimit: 0`` so Kubernetes
never retries on its own, a pod failure policy that fails the Job at once on
the worker's *permanent* exit codes, an active deadline, a TTL after it
finished, owned by the EditJob so deleting the EditJob removes it. The
worker's only input is its command line (the contract in
:mod:`editflow.events.worker_contract`).
"""

from __future__ import annotations

from typing import Any

from editflow.core.errors import PERMANENT_EXIT_CODES
from editflow.core.sealing import POOL_KEY_FIELD, POOL_KEY_SECRET
from editflow.core.settings import OperatorSettings
from editflow.core.staging import staged_models_root
from editflow.events.worker_contract import (
    GenerationParameters,
    OutputSpec,
    SourceRef,
    WorkerRequest,
)
from editflow.operator.crd import GROUP, KIND, VERSION
from editflow.operator.names import (
    ANNOTATION_EVENT_ID,
    LABEL_APPROVAL,
    LABEL_ATTEMPT,
    LABEL_EDITJOB,
    LABEL_FORM,
    LABEL_LANE,
    LANE_PREVIEW,
    MANAGED_BY,
    WORKER_LABELS,
    job_name,
    label_value,
)

WORKER_CONTAINER = "worker"
TERMINATION_LOG = "/dev/termination-log"


def deadline_of(editjob: dict[str, Any], op: OperatorSettings) -> int:
    """An attempt's deadline in seconds: the EditJob's own, else the operator's default."""
    return int((editjob.get("spec") or {}).get("deadlineSeconds") or op.deadline_seconds)


def weights_cache_volume(settings: OperatorSettings) -> dict[str, Any] | None:
    """The shared weights cache as a Pod volume, or None (then each Pod caches in its /tmp).

    A ReadWriteMany PVC works under every Pod Security level; fsGroup 10001 (the Pod's)
    makes it writable for the worker where the volume type supports ownership management.
    A hostPath is per node and needs a namespace at the ``privileged`` level; its directory
    must exist and belong to uid 10001 (a kubelet-created DirectoryOrCreate is root's).
    """
    if settings.weights_cache_pvc:
        return {
            "name": "weights-cache",
            "persistentVolumeClaim": {"claimName": settings.weights_cache_pvc},
        }
    if settings.weights_cache_host_path:
        return {
            "name": "weights-cache",
            "hostPath": {"path": settings.weights_cache_host_path, "type": "Directory"},
        }
    return None


def worker_request(
    editjob: dict[str, Any], attempt: int, settings: OperatorSettings
) -> WorkerRequest:
    """What the worker is asked to do for this attempt."""
    spec = editjob["spec"]
    meta = editjob["metadata"]
    params = spec.get("parameters") or {}
    output = spec.get("output") or {}
    template = (spec.get("template") or {}).get("id")
    prefix = output.get("prefix") or f"{settings.result_prefix}/{meta['namespace']}"
    return WorkerRequest(
        edit_id=meta["name"],
        attempt=attempt,
        source=SourceRef(url=spec["source"].get("url"), s3_key=spec["source"].get("s3Key")),
        # A desk reviewer's re-run carries the corrected instruction in status; spec keeps
        # the applicant's (docs/desk.md).
        prompt=(editjob.get("status") or {}).get("reviewInstruction") or spec["prompt"],
        model=spec.get("model") or settings.default_model,
        parameters=GenerationParameters(
            **{
                field: value
                for field, value in (
                    ("steps", params.get("steps")),
                    ("guidance_scale", params.get("guidanceScale")),
                    ("seed", params.get("seed")),
                    ("negative_prompt", params.get("negativePrompt")),
                )
                if value is not None
            }
        ),
        # Only what the EditJob says: an unset format/quality lets the usage's profile decide.
        output=OutputSpec(
            key_prefix=prefix,
            **{k: output[k] for k in ("format", "quality") if k in output},
        ),
        usage=spec.get("usage"),
        event_id=(spec.get("oa") or {}).get("eventId"),
        # Set only when there is one: the serialised request stays what it was without.
        **({"template": template} if template else {}),
        **({"variants": int(spec["variants"])} if int(spec.get("variants") or 1) > 1 else {}),
        **({"preview": True} if spec.get("preview") else {}),
    )


def labels_for(editjob: dict[str, Any], attempt: int) -> dict[str, str]:
    oa = editjob["spec"].get("oa") or {}
    labels = {
        **MANAGED_BY,
        "app.kubernetes.io/name": "editflow-worker",
        **WORKER_LABELS,
        LABEL_EDITJOB: editjob["metadata"]["name"],
        LABEL_ATTEMPT: str(attempt),
    }
    if editjob["spec"].get("preview"):
        labels[LABEL_LANE] = LANE_PREVIEW  # counted in the preview share of the cap
    if oa.get("formId"):
        labels[LABEL_FORM] = label_value(oa["formId"])
    if oa.get("approvalInstanceId"):
        labels[LABEL_APPROVAL] = label_value(oa["approvalInstanceId"])
    return labels


#: Where a warm worker mounts its namespace's pool key (editflow.core.sealing).
POOL_KEY_DIR = "/var/run/editflow/pool-key"


def s3_env(secret: str, *, session_token: bool) -> list[dict[str, Any]]:
    """The worker's S3 key from a Secret (``access-key``, ``secret-key``, ``session-token``)."""
    keys = [("EDITFLOW_S3__ACCESS_KEY", "access-key"), ("EDITFLOW_S3__SECRET_KEY", "secret-key")]
    if session_token:
        keys.append(("EDITFLOW_S3__SESSION_TOKEN", "session-token"))
    return [
        {"name": env, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for env, key in keys
    ]


def worker_pod_spec(
    settings: OperatorSettings,
    *,
    command: list[str],
    args: list[str],
    env: list[dict[str, Any]],
    credentials_secret: str | None = None,
    pool_key: bool = False,
) -> dict[str, Any]:
    """The worker Pod both dispatch modes run: non-root, read-only root, GPU, weights.

    One function so a Job-mode attempt and a warm worker never drift apart in what they
    mount, which key they read S3 with, or how locked down they are.
    """
    resources: dict[str, dict[str, str]] = {
        kind: dict(values) for kind, values in settings.worker_resources.items()
    }
    if settings.gpus_per_job:
        resources.setdefault("limits", {})["nvidia.com/gpu"] = str(settings.gpus_per_job)
    # A warm worker with sealed per-attempt credentials (``pool_key``) holds no S3 key at all:
    # each attempt's key comes inside its work message (issue 20 §1).
    all_env: list[dict[str, Any]] = [
        *(
            []
            if pool_key
            else s3_env(
                credentials_secret or settings.s3_secret,
                session_token=credentials_secret is not None,
            )
        ),
        *(
            {
                "name": env_name,
                "valueFrom": {"secretKeyRef": {"name": settings.weights_secret, "key": key}},
            }
            for env_name, key in (
                ("EDITFLOW_WORKER__WEIGHTS_ACCESS_KEY", "access-key"),
                ("EDITFLOW_WORKER__WEIGHTS_SECRET_KEY", "secret-key"),
            )
            if settings.weights_secret
        ),
        *env,
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
    ]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]  # noqa: S108
    if pool_key:
        volumes.append(
            {"name": "pool-key", "secret": {"secretName": POOL_KEY_SECRET, "defaultMode": 0o440}}
        )
        mounts.append({"name": "pool-key", "mountPath": POOL_KEY_DIR, "readOnly": True})
        all_env.append(
            {
                "name": "EDITFLOW_WORKER__POOL_KEY_FILE",
                "value": f"{POOL_KEY_DIR}/{POOL_KEY_FIELD}",
            }
        )
    if settings.models_pvc:
        volumes.append(
            {
                "name": "models",
                "persistentVolumeClaim": {"claimName": settings.models_pvc, "readOnly": True},
            }
        )
        mounts.append({"name": "models", "mountPath": settings.models_mount_path, "readOnly": True})
        all_env.append(
            {"name": "EDITFLOW_WORKER__MODELS_ROOT", "value": settings.models_mount_path}
        )
    cache = weights_cache_volume(settings)
    if cache is not None and settings.weights_cache_staged:
        # One trusted writer (the prestage DaemonSet, issue 20 §8): workers only read what it
        # verified, through its links; a model not staged yet goes to the Pod's own /tmp
        # (the ConfigMap's CACHE_DIR), never into the shared cache.
        volumes.append(cache)
        mounts.append(
            {
                "name": cache["name"],
                "mountPath": settings.weights_cache_mount_path,
                "readOnly": True,
            }
        )
        if not settings.models_pvc:
            root = staged_models_root(settings.weights_cache_mount_path)
            all_env.append({"name": "EDITFLOW_WORKER__MODELS_ROOT", "value": root})
    elif cache is not None:
        # Weights from S3 land once per node (hostPath) or per cluster (RWX PVC), not per Pod.
        volumes.append(cache)
        mounts.append({"name": cache["name"], "mountPath": settings.weights_cache_mount_path})
        all_env.append(
            {"name": "EDITFLOW_WORKER__CACHE_DIR", "value": settings.weights_cache_mount_path}
        )
    container: dict[str, Any] = {
        "name": WORKER_CONTAINER,
        "image": settings.worker_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "args": args,
        "envFrom": [{"configMapRef": {"name": settings.worker_configmap, "optional": True}}],
        "env": all_env,
        "resources": resources,
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": settings.worker_service_account,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if settings.node_selector:
        pod_spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in settings.tolerations]
    if settings.priority_class:
        pod_spec["priorityClassName"] = settings.priority_class
    return pod_spec


def job_manifest(
    editjob: dict[str, Any],
    attempt: int,
    settings: OperatorSettings,
    *,
    credentials_secret: str | None = None,
) -> dict[str, Any]:
    """The Job of one attempt.

    ``credentials_secret`` names the attempt's own Secret of short-lived keys
    (:mod:`editflow.operator.credentials`); without it the worker gets the
    bucket-wide ``settings.s3_secret``.
    """
    meta = editjob["metadata"]
    spec = editjob["spec"]
    request = worker_request(editjob, attempt, settings)
    labels = labels_for(editjob, attempt)
    annotations = {}
    if (spec.get("oa") or {}).get("eventId"):
        annotations[ANNOTATION_EVENT_ID] = spec["oa"]["eventId"]
    pod_spec = worker_pod_spec(
        settings,
        command=list(settings.worker_command),
        args=[
            "--request",
            # exclude_unset: the worker tells an explicit field from a default (profiles).
            request.model_dump_json(exclude_unset=True),
            "--termination-log",
            TERMINATION_LOG,
        ],
        env=[{"name": "EDITFLOW_EDIT_ID", "value": meta["name"]}],
        credentials_secret=credentials_secret,
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(meta["name"], attempt),
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": KIND,
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline_of(editjob, settings),
            "ttlSecondsAfterFinished": settings.job_ttl_seconds,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": WORKER_CONTAINER,
                            "operator": "In",
                            "values": list(PERMANENT_EXIT_CODES),
                        },
                    },
                ]
            },
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": pod_spec,
            },
        },
    }
