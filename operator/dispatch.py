"""How an attempt runs: the operator's dispatcher seam.

The reconciler decides *when* an attempt starts or stops and reads *what
happened* to it; a :class:`Dispatcher` knows *how*. :class:`JobDispatcher` is
one batch/v1 Job per attempt (brief §8), observed from the watch-fed caches.
:class:`~editflow.operator.warmpool.WarmDispatcher` (``worker.mode: warm``) hands
each attempt as one work message to a worker that keeps the model loaded, with
the same three calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from editflow.core.settings import OperatorSettings
from editflow.events.worker_contract import WorkerResult
from editflow.operator import metrics
from editflow.operator.caches import ClusterCache, job_path
from editflow.operator.credentials import (
    AttemptCredentialMinter,
    credentials_secret_manifest,
    credentials_secret_name,
)
from editflow.operator.jobspec import job_manifest
from editflow.operator.kube import JSON, AsyncKube, KubeAPIError
from editflow.operator.names import job_name


@dataclass(frozen=True)
class AttemptView:
    """What the cluster shows of one attempt (``job`` is None when it is gone).

    ``job`` is the attempt's batch/v1 Job, or (warm mode) a Job-shaped record with the
    same condition vocabulary, so one :func:`~editflow.operator.decide.decide` serves both.
    """

    job: JSON | None
    pods: tuple[JSON, ...]
    #: The attempt's result when the dispatcher already has it (warm: heard from the worker).
    result: WorkerResult | None = None
    #: Look for the result in S3 even though the attempt seems to run (after a restart).
    check_result: bool = False


class Dispatcher(Protocol):
    def observe(self, namespace: str, name: str, editjob: JSON | None = None) -> AttemptView:
        """The attempt named ``name`` as the caches see it (no apiserver call).

        ``editjob`` lets a dispatcher take over an attempt an earlier process started.
        """

    async def start(self, editjob: JSON, attempt: int) -> str:
        """Start ``attempt`` (idempotent: a repeat finds it already started); returns its name."""

    async def stop(self, namespace: str, name: str) -> bool:
        """Stop the attempt; ``False`` when it was already gone."""

    def record_result(self, namespace: str, name: str, result: WorkerResult) -> None:
        """A result the reconciler found in S3 for an attempt the dispatcher watches."""


class JobDispatcher:
    """One Kubernetes Job per attempt.

    With a ``minter`` (``EDITFLOW_OPERATOR__ATTEMPT_CREDENTIALS``, the default)
    each attempt gets its own short-lived S3 keys: minted, then the Job (whose
    worker reads them from ``<job>-s3``), then that Secret, owned by the Job so
    it goes with it. The Pod waits (CreateContainerConfigError, retried by the
    kubelet) the few milliseconds until the Secret exists; a repeat after a crash
    between the two finds the Job and creates the missing Secret.
    """

    def __init__(
        self,
        kube: AsyncKube,
        cache: ClusterCache,
        op: OperatorSettings,
        minter: AttemptCredentialMinter | None = None,
    ) -> None:
        self.kube = kube
        self.cache = cache
        self.op = op
        self.minter = minter

    def observe(self, namespace: str, name: str, editjob: JSON | None = None) -> AttemptView:
        job = self.cache.jobs.get((namespace, name))
        return AttemptView(job=job, pods=tuple(self.cache.pods_of(namespace, name)))

    async def start(self, editjob: JSON, attempt: int) -> str:
        namespace = editjob["metadata"]["namespace"]
        name = job_name(editjob["metadata"]["name"], attempt)
        secret = credentials_secret_name(name) if self.minter else None
        # Minted first: a refusal (STS down, key not allowed) leaves nothing behind to clean up.
        creds = await self.minter.mint(editjob, attempt) if self.minter else None
        manifest: dict[str, Any] = job_manifest(
            editjob, attempt, self.op, credentials_secret=secret
        )
        job: JSON | None = None
        try:
            job = await self.kube.create(job_path(namespace), manifest)
            metrics.JOBS_CREATED.inc()
            # Write-through: the next reconcile must see the Job even before its watch event.
            self.cache.jobs.upsert(job)
        except KubeAPIError as exc:
            if exc.status != 409:
                raise
        if creds is not None:
            job = job or self.cache.jobs.get((namespace, name))
            job = job or await self.kube.get(job_path(namespace, name))
            if job is not None:
                try:
                    await self.kube.create(
                        f"/api/v1/namespaces/{namespace}/secrets",
                        credentials_secret_manifest(job, creds),
                    )
                except KubeAPIError as exc:
                    if exc.status != 409:
                        raise
        return name

    async def stop(self, namespace: str, name: str) -> bool:
        return await self.kube.delete(job_path(namespace, name))

    def record_result(self, namespace: str, name: str, result: WorkerResult) -> None:
        """Nothing to do: a Job's result is read again from its Pod or from S3."""
