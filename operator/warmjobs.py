"""A warm worker's Job: a pure function of the operator's settings, namespace and model.

A warm worker is a Job (not a Deployment) because it ends by itself: after
``warm_idle_seconds`` without work it exits 0 and the pool shrinks, down to zero.
The same :func:`~editflow.operator.jobspec.worker_pod_spec` as a Job-mode attempt
keeps both modes equally locked down. The Pod carries the hash of the configuration
it was made from, so the operator can retire workers an upgrade left behind.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

from editflow.core.settings import OperatorSettings
from editflow.core.staging import staged_label
from editflow.operator.jobspec import worker_pod_spec
from editflow.operator.names import ANNOTATION_CONFIG_HASH, LABEL_POOL, MANAGED_BY, WORKER_LABELS


def _nats_env(settings: OperatorSettings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    if settings.warm_nats_url:
        env.append({"name": "EDITFLOW_NATS__URL", "value": settings.warm_nats_url})
    if settings.warm_nats_secret:
        env += [
            {
                "name": name,
                "valueFrom": {"secretKeyRef": {"name": settings.warm_nats_secret, "key": key}},
            }
            for name, key in (
                ("EDITFLOW_NATS__USER", "user"),
                ("EDITFLOW_NATS__PASSWORD", "password"),
            )
        ]
    return env


def _env(settings: OperatorSettings, namespace: str) -> list[dict[str, Any]]:
    return [
        *_nats_env(settings),
        {"name": "EDITFLOW_NAMESPACE", "value": namespace},
        {"name": "EDITFLOW_WORKER__IDLE_SECONDS", "value": str(float(settings.warm_idle_seconds))},
        {
            "name": "EDITFLOW_WORKER__MAX_AGE_SECONDS",
            "value": str(float(settings.warm_max_age_seconds)),
        },
        {"name": "EDITFLOW_WORKER__MAX_DELIVERIES", "value": str(settings.warm_max_deliveries)},
        {
            "name": "EDITFLOW_WORKER__ACK_WAIT_SECONDS",
            "value": str(float(settings.warm_ack_wait_seconds)),
        },
    ]


def _pod_spec(settings: OperatorSettings, namespace: str, model: str) -> dict[str, Any]:
    spec = worker_pod_spec(
        settings,
        command=list(settings.warm_worker_command),
        args=["--model", model],
        env=_env(settings, namespace),
        # attempt_credentials: false is the documented insecure opt-in (an S3 without STS):
        # then, and only then, a warm worker reads S3 with the namespace's shared key.
        pool_key=settings.attempt_credentials,
    )
    if settings.weights_cache_staged:
        spec["affinity"] = staged_node_affinity(model)
    return spec


def staged_node_affinity(model: str) -> dict[str, Any]:
    """Prefer a node whose prestage Pod has staged ``model`` (its weights are on the node,
    and so is the worker image): a preference, so an unstaged node still takes the worker."""
    term = {"matchExpressions": [{"key": staged_label(model), "operator": "Exists"}]}
    preferred = [{"weight": 100, "preference": term}]
    return {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": preferred}}


def config_hash(settings: OperatorSettings, namespace: str, model: str) -> str:
    """12 hex digits over everything a warm worker is started with (image, env, mounts)."""
    spec = _pod_spec(settings, namespace, model)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def warm_job_name(model: str) -> str:
    """``editflow-warm-<model>-<random>``: workers come and go, so names are not reused."""
    stem = f"editflow-warm-{model}"[:50].rstrip("-")
    return f"{stem}-{secrets.token_hex(3)}"


def warm_job_manifest(settings: OperatorSettings, namespace: str, model: str) -> dict[str, Any]:
    digest = config_hash(settings, namespace, model)
    spec = _pod_spec(settings, namespace, model)
    spec["containers"][0]["env"].append({"name": "EDITFLOW_WORKER__CONFIG_HASH", "value": digest})
    labels = {
        **MANAGED_BY,
        **WORKER_LABELS,
        "app.kubernetes.io/name": "editflow-warm-worker",
        LABEL_POOL: model,
    }
    annotations = {ANNOTATION_CONFIG_HASH: digest}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": warm_job_name(model),
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            # A worker that dies is replaced by the pool, not restarted by the Job: the pool
            # backs off after failed starts (a model that does not load is not a crash loop).
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": min(settings.job_ttl_seconds, 600),
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {
                    **spec,
                    # Draining finishes the edit in flight (worker drain_seconds) first.
                    "terminationGracePeriodSeconds": int(settings.deadline_seconds) + 30,
                },
            },
        },
    }
