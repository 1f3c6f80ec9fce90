"""The one place that writes an EditJob's status (issue 21 item 2).

The reconciler (carrying out :func:`~editflow.operator.decide.decide`), the outcome
delivery (:mod:`.delivery`, recording that an outcome reached OA) and the bridge (a
person's action: the desk's review actions, the applicant's choice of a variant) all write
through :class:`StatusWriter`. A write goes out only when it changes something; what it returns
is put in the cache at once (the next reconcile sees it before its watch event) and
shown to the read models that follow the EditJob: the progress events and the desk.
"""

from __future__ import annotations

from typing import Any

from editflow.operator import metrics
from editflow.operator.caches import ClusterCache
from editflow.operator.crd import editjob_path
from editflow.operator.desk import DeskPublisher
from editflow.operator.kube import JSON, AsyncKube, KubeAPIError
from editflow.operator.progress import ProgressPublisher


def status_changes(current: JSON, patch: JSON) -> set[str]:
    """The fields of a merge patch that would change ``current`` (None deletes)."""
    changed = set()
    for field, value in patch.items():
        if value is None:
            if current.get(field) is not None:
                changed.add(field)
        elif current.get(field) != value:
            changed.add(field)
    return changed


def merged(editjob: JSON, patch: JSON) -> JSON:
    """The EditJob as it reads once ``patch`` (a status merge patch) is applied."""
    status: dict[str, Any] = dict(editjob.get("status") or {})
    for field, value in patch.items():
        if value is None:
            status.pop(field, None)
        else:
            status[field] = value
    return {**editjob, "status": status}


class StatusWriter:
    def __init__(
        self,
        kube: AsyncKube,
        cache: ClusterCache | None = None,
        *,
        progress: ProgressPublisher | None = None,
        desk: DeskPublisher | None = None,
    ) -> None:
        self.kube = kube
        self.cache = cache
        #: Queued (with its place) and running, for the OA side and the gateway (best effort).
        self.progress = progress
        #: The designer's desk read model (tickets in NATS KV), from the EditJobs written here.
        self.desk = desk

    async def write(self, editjob: JSON, patch: JSON, *, guarded: bool = False) -> JSON | None:
        """Write ``patch`` if it changes anything; the EditJob as written (None: it is gone).

        ``guarded``: only onto the EditJob as it was read (its resourceVersion; a 409
        otherwise), for a person's action decided on what they saw.
        """
        if not status_changes(editjob.get("status") or {}, patch):
            return editjob
        meta = editjob["metadata"]
        body: JSON = {"status": patch}
        if guarded:
            body["metadata"] = {"resourceVersion": meta.get("resourceVersion")}
        try:
            written = await self.kube.patch(
                editjob_path(meta["namespace"], meta["name"]) + "/status", body
            )
        except KubeAPIError as exc:
            if exc.status == 404:
                return None  # deleted meanwhile: nothing left to write on
            raise
        if self.cache is not None:
            self.cache.editjobs.upsert(written)
        metrics.STATUS_WRITES.inc()
        self.shown(written)
        if self.desk is not None:
            self.desk.update(written)  # whole, as the apiserver answered our write
        return written

    def shown(self, editjob: JSON) -> None:
        """What a person follows without a status write: the progress event."""
        if self.progress is not None:
            self.progress.update(editjob)
