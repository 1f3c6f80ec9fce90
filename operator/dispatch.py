"""How an attempt runs: the operator's dispatcher seam (issue 21 item 1: the attempt is the unit).

The reconciler decides *when* an attempt starts or stops; a :class:`Dispatcher` knows
*how*, and answers *what happened* to it as an
:class:`~editflow.operator.attempts.AttemptState`, its result read from the attempt's own
channel. :class:`JobDispatcher` is one batch/v1 Job per attempt (brief §8), observed from
the watch-fed caches; its result is the worker container's termination message, else the
result JSON in S3. :class:`~editflow.operator.warmpool.WarmDispatcher`
(``worker.mode: warm``) hands each attempt as one work message to a worker that keeps the
model loaded; its result comes on the result subject, else from S3. A third mode is one
more class with these three calls and its :class:`~editflow.operator.attempts.StartWords`.
"""

from __future__ import annotations

from typing import Any, Protocol

from editflow.core.settings import OperatorSettings
from editflow.operator import metrics
from editflow.operator.attempts import (
    JOB_WORDS,
    AttemptState,
    ResultReader,
    StartWords,
    job_attempt_state,
    result_from_pods,
)
from editflow.operator.caches import ClusterCache, job_path
from editflow.operator.credentials import (
    AttemptCredentialMinter,
    credentials_secret_manifest,
    credentials_secret_name,
)
from editflow.operator.jobspec import deadline_of, job_manifest
from editflow.operator.kube import JSON, AsyncKube, KubeAPIError
from editflow.operator.names import job_name
from editflow.operator.workindex import job_finished


class Dispatcher(Protocol):
    #: How this mode tells a person that an attempt started.
    words: StartWords

    async def observe(self, editjob: JSON) -> AttemptState:
        """The EditJob's current attempt (``status.jobName``) as this mode sees it now.

        Reads the caches, and the attempt's result channel; a dispatcher takes over an
        attempt an earlier operator process started.
        """

    async def start(self, editjob: JSON, attempt: int) -> str:
        """Start ``attempt`` (idempotent: a repeat finds it already started); returns its name."""

    async def stop(self, namespace: str, name: str) -> bool:
        """Stop the attempt; ``False`` when it was already gone."""


class JobDispatcher:
    """One Kubernetes Job per attempt.

    With a ``minter`` (``EDITFLOW_OPERATOR__ATTEMPT_CREDENTIALS``, the default)
    each attempt gets its own short-lived S3 keys: minted, then the Job (whose
    worker reads them from ``<job>-s3``), then that Secret, owned by the Job so
    it goes with it. The Pod waits (CreateContainerConfigError, retried by the
    kubelet) the few milliseconds until the Secret exists; a repeat after a crash
    between the two finds the Job and creates the missing Secret.
    """

    words = JOB_WORDS

    def __init__(
        self,
        kube: AsyncKube,
        cache: ClusterCache,
        op: OperatorSettings,
        minter: AttemptCredentialMinter | None = None,
        *,
        results: ResultReader,
    ) -> None:
        self.kube = kube
        self.cache = cache
        self.op = op
        self.minter = minter
        self.results = results

    async def observe(self, editjob: JSON) -> AttemptState:
        namespace = editjob["metadata"]["namespace"]
        status = editjob.get("status") or {}
        name, number = status.get("jobName") or "", int(status.get("attempts") or 0)
        job = self.cache.jobs.get((namespace, name))
        pods = tuple(self.cache.pods_of(namespace, name))
        result = None
        if job is None or job_finished(job):
            # The termination message, else the result JSON in S3 (it outlives the Job).
            result = result_from_pods(pods) or await self.results.from_s3(editjob, number)
            result = result and self.results.signed(editjob, result)
        return job_attempt_state(
            name, number, job, pods, result, deadline_seconds=deadline_of(editjob, self.op)
        )

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
