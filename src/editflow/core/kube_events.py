"""The body of a core/v1 Kubernetes Event, for every editflow component that reports one.

The operator explains EditJobs in ``kubectl describe`` and the process kubelet
explains Pods; both post the same shape, built here (pure: no client, no I/O).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from editflow.core.kubetime import stamp as kube_stamp


def event_body(
    obj: dict[str, Any],
    *,
    api_version: str,
    kind: str,
    event_type: str,
    reason: str,
    message: str,
    component: str,
    instance: str,
    host: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """An Event about ``obj`` (its metadata names it); messages are cut to 1 KiB."""
    meta = obj["metadata"]
    stamp = kube_stamp(now)
    source: dict[str, str] = {"component": component}
    if host:
        source["host"] = host
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": api_version,
            "kind": kind,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "type": event_type,
        "reason": reason,
        "message": message[:1024],
        "source": source,
        "reportingComponent": component,
        "reportingInstance": instance,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
