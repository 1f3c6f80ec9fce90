"""One attempt's worker log (``editflow edits logs``): what ``kubectl logs`` shows for its Job.

An attempt's Pods carry the labels ``editflow.io/editjob`` and ``editflow.io/attempt``
(:func:`editflow.operator.jobspec.labels_for`), so the log is found by label, through
the apiserver's ``pods/log``, with the same credentials as the operator (``KUBECONFIG``
or the service account). A finished Job is removed after the chart's ``jobTTLSeconds``;
after that the log is gone, and the message says where the attempt's result JSON is.

A warm worker (``worker.mode: warm``) serves many attempts, so its Pod has no attempt
label: every warm worker Pod of the namespace is read and only the lines that carry the
attempt's ``edit_id`` and ``attempt`` are kept (every line a warm worker logs while it
handles a message names both). An attempt redelivered after a worker died shows the
lines of each worker that took it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from editflow.operator.crd import editjob_path
from editflow.operator.jobspec import WORKER_CONTAINER
from editflow.operator.kube import JSON, AsyncKube, KubeAPIError
from editflow.operator.names import LABEL_ATTEMPT, LABEL_EDITJOB, LABEL_POOL


class AttemptLogsError(Exception):
    """Why there is no log to show, in words a person can act on."""


async def attempt_logs(name: str, namespace: str, attempt: int | None = None) -> str:
    """The worker container's log of ``attempt`` (default: the latest) of EditJob ``name``."""
    kube = AsyncKube()
    try:
        try:
            editjob = await kube.get(editjob_path(namespace, name))
        except KubeAPIError as exc:
            raise AttemptLogsError(f"editjob {namespace}/{name}: {exc.message or exc}") from None
        if editjob is None:
            raise AttemptLogsError(f"editjob {namespace}/{name} not found")
        status = editjob.get("status") or {}
        started = int(status.get("attempts") or 0)
        if started == 0:
            raise AttemptLogsError(
                f"editjob {namespace}/{name} has not started an attempt yet "
                f"(phase {status.get('phase') or 'Pending'}: {status.get('message', '')})"
            )
        wanted = attempt or started
        if not 1 <= wanted <= started:
            raise AttemptLogsError(
                f"editjob {namespace}/{name} has attempts 1 to {started}, not {wanted}"
            )
        selector = f"{LABEL_EDITJOB}={name},{LABEL_ATTEMPT}={wanted}"
        pods = await kube.list(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)
        if not pods:
            warm = await warm_attempt_logs(kube, namespace, name, wanted)
            if warm:
                return warm
            where = status.get("resultKey") or f"the results prefix, {name}/attempt-{wanted}/"
            raise AttemptLogsError(
                f"attempt {wanted} of {namespace}/{name} has no Pod left (finished Jobs are "
                f"removed after the chart's jobTTLSeconds); its result JSON stays in S3 ({where})"
            )
        parts = []
        async for pod_name, text, error in _worker_logs(kube, namespace, pods):
            if error is not None:
                text = f"(no log from Pod {pod_name}: {error.message or error})\n"
            if len(pods) > 1:
                text = f"==> Pod {pod_name} <==\n{text}"
            parts.append(text)
        return "".join(parts)
    finally:
        await kube.close()


def attempt_lines(log: str, edit_id: str, attempt: int) -> str:
    """The JSON log lines of one attempt (edit id and attempt match) out of a worker's log."""
    kept = []
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("edit_id") == edit_id and record.get("attempt") == attempt:
            kept.append(line + "\n")
    return "".join(kept)


async def _worker_logs(
    kube: AsyncKube, namespace: str, pods: list[JSON]
) -> AsyncIterator[tuple[str, str, KubeAPIError | None]]:
    """(Pod name, worker container log, the error when there is none), oldest Pod first."""
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", "")):
        pod_name = pod["metadata"]["name"]
        try:
            text = await kube.text(
                f"/api/v1/namespaces/{namespace}/pods/{pod_name}/log", container=WORKER_CONTAINER
            )
        except KubeAPIError as exc:
            yield pod_name, "", exc
            continue
        yield pod_name, text, None


async def warm_attempt_logs(kube: AsyncKube, namespace: str, name: str, attempt: int) -> str:
    pods = await kube.list(f"/api/v1/namespaces/{namespace}/pods", labelSelector=LABEL_POOL)
    parts = []
    async for pod_name, text, error in _worker_logs(kube, namespace, pods):
        lines = attempt_lines(text, name, attempt) if error is None else ""
        if lines:
            parts.append(f"==> warm worker Pod {pod_name} <==\n{lines}")
    return "".join(parts)
