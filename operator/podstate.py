"""What the apiserver says about an attempt's Job and Pods: read-only walks, written once.

The decision function, the warm pool and the reconciler all ask the same questions of the
same objects (has the Job finished, did the scheduler find no node, how did the container
end, is it stuck in a state that waiting will not change); each answer lives here.
"""

from __future__ import annotations

from typing import Any

JSON = dict[str, Any]

#: Container waiting reasons that do not go away by waiting: the kubelet says so, and an
#: attempt that sits in one would otherwise count as Running until its deadline.
STUCK_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "CrashLoopBackOff",
    }
)


def job_outcome(job: JSON) -> tuple[str, str] | None:
    """(Complete|Failed, reason) once the Job finished, else None."""
    for cond in job.get("status", {}).get("conditions") or []:
        if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
            return cond["type"], cond.get("reason", "")
    return None


def unschedulable(pod: JSON) -> str | None:
    """The scheduler's message for a Pending Pod it found no node for (no free GPU, say),
    else None. Not bound *yet* is not news: only the scheduler's verdict is (writing
    Running -> Queued -> Running for every Pod a scheduler takes a moment over cost two
    status writes per edit at 10 events/s)."""
    status = pod.get("status") or {}
    if status.get("phase") != "Pending" or (pod.get("spec") or {}).get("nodeName"):
        return None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return cond.get("message") or "waiting for a node"
    return None


def terminated(pod: JSON, container: str | None = None) -> JSON | None:
    """The ``terminated`` state of the Pod's first ended container (or of ``container``)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if container is not None and status.get("name") != container:
            continue
        ended = (status.get("state") or {}).get("terminated")
        if ended:
            return ended
    return None


def exit_code(pods: tuple[JSON, ...]) -> int | None:
    """The exit code of the first ended container of ``pods``."""
    for pod in pods:
        ended = terminated(pod)
        if ended and "exitCode" in ended:
            return int(ended["exitCode"])
    return None


def stuck(pods: tuple[JSON, ...]) -> tuple[JSON, str, str] | None:
    """(pod, reason, message) of the first container waiting in a :data:`STUCK_REASONS`."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                return pod, str(waiting["reason"]), str(waiting.get("message") or "")
    return None
