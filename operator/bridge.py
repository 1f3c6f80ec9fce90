"""The bridge: approval events from JetStream become EditJobs; withdraw events cancel them;
select events record the variant an applicant picked (:mod:`editflow.operator.selection`).

Runs inside the operator (:func:`run_bridge`) on the durable consumer of
:mod:`editflow.events.consumer`, ``operator.bridge_concurrency`` events at a
time. Each approval is decided against the approval ledger
(:mod:`editflow.events.ledger`) first::

    ledger says      the bridge ...
    (nothing)        creates the EditJob (409 AlreadyExists is fine: a crash between
                     create and record), records ``created``, then acks
    created          creates nothing, acks: a redelivery or replay, even when the
    finished         EditJob was deleted since, never starts a second edit
    withdrawn        creates nothing, acks: the OA side revoked it before it came

A withdraw event records ``withdrawn`` (also when no EditJob exists yet) and
sets the cancel annotation on the approval's EditJobs. When a withdrawal wins
the race between the ledger lookup and ``record_created``, the EditJob just
created is cancelled at once. Events for one approval id are handled one at a
time in this process; across processes the ledger's compare-and-set decides.

An event is acked only once its EditJob exists (or the ledger says it never
should). An invalid event, or one the apiserver's schema refuses, is
dead-lettered with the reason and never reaches the cluster. Any other
failure (apiserver or ledger unreachable, timeouts) is retried with backoff.

:func:`rerun_approval` runs an approval again on purpose
(``editflow edits rerun``): a new EditJob ``<name>-r<n>``, counted in the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from editflow.core.backoff import Backoff
from editflow.core.errors import InvalidInputError, UpstreamError
from editflow.core.keyedlocks import KeyedLocks
from editflow.core.settings import Settings
from editflow.events.archive import find_approval
from editflow.events.consumer import Delivery, run_consumer
from editflow.events.ledger import ApprovalLedger, LedgerEntry
from editflow.events.models import (
    OA_EVENT_TYPES,
    REVIEW_ACTION_V1,
    ApprovalEvent,
    ReviewActionEvent,
    SelectEvent,
    WithdrawEvent,
    approval_event_id,
)
from editflow.events.topology import Topology
from editflow.events.validation import Policy
from editflow.operator import metrics
from editflow.operator.crd import GROUP, editjob_path
from editflow.operator.desk import DeskPublisher
from editflow.operator.kube import AsyncKube, KubeAPIError
from editflow.operator.mapping import editjob_from_approval
from editflow.operator.names import (
    ANNOTATION_CANCEL,
    ANNOTATION_EVENT_ID,
    LABEL_APPROVAL,
    LABEL_FORM,
    editjob_name,
    label_value,
)
from editflow.operator.refusals import ApprovalScreen  # issue 14 §3-4: URL/callback screen
from editflow.operator.review_actions import handle_review_action
from editflow.operator.selection import record_selection
from editflow.operator.statuswriter import StatusWriter

log = logging.getLogger("editflow.operator.bridge")

#: On a re-run's EditJob: which re-run of its approval it is (1, 2, ...).
ANNOTATION_RERUN = f"{GROUP}/rerun"


class Bridge:
    """The handler :func:`editflow.events.consumer.run_consumer` calls for each OA event."""

    def __init__(
        self,
        settings: Settings,
        kube: AsyncKube,
        *,
        ledger: ApprovalLedger,
        screen: ApprovalScreen | None = None,
        js: JetStreamContext | None = None,
        topology: Topology | None = None,
        desk: DeskPublisher | None = None,
        writer: StatusWriter | None = None,
    ) -> None:
        self.settings = settings
        self.kube = kube
        #: The operator's one writer of EditJob status (a person's action is recorded with it).
        self.writer = writer or StatusWriter(kube)
        self.ledger = ledger
        #: Where a recorded selection is published (select events need it).
        self.js = js
        self.topology = topology or Topology(settings.events)
        # issue 14 §3-4: unsafe image/callback URLs and subjects are refused before an EditJob.
        self.screen = screen or ApprovalScreen(settings)
        self.namespace = settings.namespace
        #: The desk's read model, told at once of what a review action changed.
        self.desk = desk
        self._locks = KeyedLocks()

    async def __call__(
        self,
        event: ApprovalEvent | WithdrawEvent | SelectEvent | ReviewActionEvent,
        delivery: Delivery,
    ) -> None:
        if isinstance(event, ApprovalEvent):
            await self.approve(
                event, stream_seq=delivery.stream_seq, last_attempt=delivery.last_attempt
            )
        elif isinstance(event, SelectEvent):
            await self.select(event)
        elif isinstance(event, ReviewActionEvent):
            await self.review(event)
        else:
            await self.withdraw(event)

    # -- selections (a variant picked) -----------------------------------------------------
    async def select(self, event: SelectEvent) -> None:
        if self.js is None:
            raise UpstreamError("this bridge cannot publish selections (no JetStream)")
        where = {"event_id": event.id, "approval_event_id": event.data.approval_event_id}
        async with self._locks.hold(event.data.approval_event_id):
            selection = await record_selection(
                event,
                kube=self.kube,
                js=self.js,
                topology=self.topology,
                ledger=self.ledger,
                namespace=self.namespace,
                writer=self.writer,
            )
        editjob = selection.data.editjob.name if selection.data.editjob else "?"
        message = "select: variant %d of editjob %s recorded"
        self._decided("select", "recorded", message, event.data.variant, editjob, where=where)

    # -- the desk's review actions (docs/desk.md) ------------------------------------------
    async def review(self, event: ReviewActionEvent) -> None:
        if self.js is None:
            raise UpstreamError("this bridge cannot audit review actions (no JetStream)")
        data = event.data
        where = {"event_id": event.id, "editjob": f"{data.namespace}/{data.editjob}"}
        async with self._locks.hold(f"editjob:{data.namespace}/{data.editjob}"):
            result = await handle_review_action(
                event,
                kube=self.kube,
                js=self.js,
                topology=self.topology,
                namespaces=self.settings.operator.namespaces or [self.namespace],
                result_prefix=self.settings.operator.result_prefix,
                desk=self.desk,
                writer=self.writer,
            )
        self._decided("review", result, "review action %s: %s", data.action, result, where=where)

    # -- approvals -------------------------------------------------------------------------
    async def approve(
        self, event: ApprovalEvent, *, stream_seq: int | None = None, last_attempt: bool = False
    ) -> None:
        manifest = editjob_from_approval(
            event,
            namespace=self.namespace,
            bucket=self.settings.s3.bucket,
            default_model=self.settings.operator.default_model,
            upload_prefix=self.settings.operator.upload_prefix,
        )
        name = manifest["metadata"]["name"]
        where = {"event_id": event.id, "editjob": f"{self.namespace}/{name}"}
        async with self._locks.hold(event.id):
            known = await self.ledger.get(event.id)
            if known is not None and known.state == "withdrawn" and not known.editjob:
                # The withdrawal overtook its approval: the edit must not run, but the OA
                # form still hears an answer. The EditJob is created already cancelled, so
                # the operator ends it Cancelled and publishes `cancelled` (nothing runs).
                reason = known.reason or _withdrawn_reason(event.id)
                manifest["metadata"].setdefault("annotations", {})[ANNOTATION_CANCEL] = reason
                result = await create_editjob(self.kube, manifest)
                self._decided("approval", "withdrawn",
                    "approval arrived after its withdrawal: editjob %s %s as cancelled", name,
                    result, where=where)  # fmt: skip
                return
            if known is not None:
                decision = "withdrawn" if known.state == "withdrawn" else "duplicate"
                self._decided("approval", decision,
                    "duplicate approval: already handled (%s)", known.state, where=where,
                    state=known.state, ledger_editjob=known.editjob)  # fmt: skip
                return
            # -- issue 14 §3-4 (security): permanent refusal -> dead letter; DNS hiccup -> retry
            await self.screen.screen(event, last_attempt=last_attempt)
            # -- end issue 14
            result = await create_editjob(self.kube, manifest)
            entry = await self.ledger.record_created(
                event.id, namespace=self.namespace, editjob=name, stream_seq=stream_seq
            )
            if entry is not None and entry.state == "withdrawn":
                # The withdrawal was recorded between our lookup and our record: honour it.
                await self._cancel(name, entry.reason or _withdrawn_reason(event.id))
                self._decided("approval", "withdrawn",
                    "approval -> editjob %s (%s), cancelled: withdrawn meanwhile", name, result,
                    where=where)  # fmt: skip
                return
        self._decided("approval", result, "approval -> editjob %s (%s)", name, result, where=where)

    # -- withdrawals -----------------------------------------------------------------------
    async def withdraw(self, event: WithdrawEvent) -> None:
        data = event.data
        reason = (data.reason or _withdrawn_reason(event.id))[:500]
        # Remembered first, before anything that needs the apiserver: an approval that
        # overtakes a withdrawal held up by a retry still finds the withdrawal.
        # Without an approval event id: every edit of the approval, i.e. the approval
        # with the SDK's default id (which may not have arrived yet) and those that exist.
        first = data.approval_event_id or approval_event_id(
            event.source, data.form_id, data.approval_id
        )
        approvals = {first}
        names = await self._remember_withdrawn(first, reason)
        if not data.approval_event_id:
            selector = (
                f"{LABEL_FORM}={label_value(data.form_id)},"
                f"{LABEL_APPROVAL}={label_value(data.approval_id)}"
            )
            try:
                items = await self.kube.list(editjob_path(self.namespace), labelSelector=selector)
            except (KubeAPIError, OSError) as exc:
                raise UpstreamError(f"listing the approval's EditJobs failed: {exc}") from exc
            names.update(i["metadata"]["name"] for i in items)
            for item in items:
                other = (item["metadata"].get("annotations") or {}).get(ANNOTATION_EVENT_ID)
                if other and other not in approvals:
                    approvals.add(other)
                    names.update(await self._remember_withdrawn(other, reason))
        cancelled = 0
        for name in sorted(names):
            cancelled += await self._cancel(name, reason)
        self._decided("withdraw", "cancelled" if cancelled else "remembered",
            "withdraw: %d editjob(s) cancelled, %d approval(s) remembered as withdrawn",
            cancelled, len(approvals),
            where={"event_id": event.id, "approval_event_ids": sorted(approvals)})  # fmt: skip

    async def _remember_withdrawn(self, approval: str, reason: str) -> set[str]:
        """Record the withdrawal; the EditJobs it may have (the original, the latest re-run)."""
        names = {editjob_name(approval)}
        async with self._locks.hold(approval):
            entry = await self.ledger.record_withdrawn(approval, reason=reason)
        if entry is not None and entry.editjob and entry.namespace == self.namespace:
            names.add(entry.editjob)
        return names

    async def _cancel(self, name: str, reason: str) -> bool:
        patch = {"metadata": {"annotations": {ANNOTATION_CANCEL: reason[:500]}}}
        try:
            await self.kube.patch(editjob_path(self.namespace, name), patch)
        except KubeAPIError as exc:
            if exc.status == 404:
                return False
            raise UpstreamError(f"cancelling EditJob {name} failed: {exc}") from exc
        except OSError as exc:
            raise UpstreamError(f"apiserver unreachable: {exc}") from exc
        return True

    @staticmethod
    def _decided(
        kind: str, result: str, message: str, *args: Any, where: dict[str, Any], **extra: Any
    ) -> None:
        """One metric and one structured log line per decision."""
        metrics.BRIDGE_EVENTS.labels(kind, result).inc()
        log.info(message, *args, extra={**where, "decision": result, **extra})


async def create_editjob(kube: AsyncKube, manifest: dict[str, Any]) -> str:
    """Create the EditJob; ``"created"``, or ``"exists"`` when it already did (a redelivery)."""
    name = manifest["metadata"]["name"]
    namespace = manifest["metadata"]["namespace"]
    try:
        await kube.create(editjob_path(namespace), manifest)
    except KubeAPIError as exc:
        if exc.status == 409:
            return "exists"
        if exc.status in (400, 422):
            metrics.BRIDGE_EVENTS.labels("approval", "refused").inc()
            raise InvalidInputError(f"the EditJob was refused: {exc.message}") from exc
        raise UpstreamError(f"creating EditJob {name} failed: {exc}") from exc
    except OSError as exc:
        raise UpstreamError(f"apiserver unreachable: {exc}") from exc
    return "created"


def _withdrawn_reason(event_id: str) -> str:
    return f"withdrawn in the OA system (event {event_id})"


async def run_bridge(
    settings: Settings,
    kube: AsyncKube,
    nc: NATS,
    topology: Topology,
    *,
    ledger: ApprovalLedger,
    stop: asyncio.Event | None = None,
    desk: DeskPublisher | None = None,
    writer: StatusWriter | None = None,
) -> None:
    """The approval loop until ``stop`` is set (or cancelled), restarted with backoff on errors."""
    bridge = Bridge(
        settings,
        kube,
        ledger=ledger,
        js=nc.jetstream(),
        topology=topology,
        desk=desk,
        writer=writer,
    )
    # The desk's actions come from the gateway, not OA: NATS permissions, not the OA
    # signing key, say who may publish them (docs/desk.md).
    policy = Policy.from_settings(settings.events, accept={*OA_EVENT_TYPES, REVIEW_ACTION_V1})
    stop = stop or asyncio.Event()
    concurrency = settings.operator.bridge_concurrency
    backoff = Backoff(1.0, 30.0)
    while not stop.is_set():
        try:
            # run_consumer sets the event it is given when it ends; a private one per
            # round keeps a crash of one round from stopping the loop for good.
            round_stop = asyncio.Event()
            watcher = asyncio.create_task(_relay(stop, round_stop))
            try:
                await run_consumer(
                    nc.jetstream(), bridge, topology=topology, policy=policy,
                    stop=round_stop, concurrency=concurrency,
                )  # fmt: skip
            finally:
                watcher.cancel()
            backoff.reset()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the approval bridge stopped; restarting in %.0fs", backoff.delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff.grow())


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


# -- deliberate re-runs ----------------------------------------------------------------------


class UnknownApproval(InvalidInputError):
    """The ledger has no record of the approval: never handled, or older than the ledger."""

    code = "unknown_approval"


@dataclass(frozen=True)
class Rerun:
    """What :func:`rerun_approval` did."""

    event_id: str
    namespace: str
    editjob: str
    number: int
    stream_seq: int
    previous: LedgerEntry


def rerun_name(editjob: str, number: int) -> str:
    """``<editjob>-r<n>``: distinct from the original and from every other re-run."""
    return f"{editjob}-r{number}"


async def rerun_approval(
    settings: Settings,
    kube: AsyncKube,
    js: JetStreamContext,
    topology: Topology,
    ledger: ApprovalLedger,
    event_id: str,
) -> Rerun:
    """Create one new EditJob for an approval the bridge already handled.

    The event is read back from the approvals stream (by the ledger's stream
    sequence, else by scanning for its id), the re-run number reserved in the
    ledger, and then ``<editjob>-r<n>`` created with the original's spec.
    """
    previous = await ledger.get(event_id)
    if previous is None:
        raise UnknownApproval(
            f"approval {event_id!r} is not in the ledger {ledger.bucket}: it was never handled "
            f"by the bridge, or is older than {topology.settings.max_age_seconds / 86400:g} days; "
            "check the id (the approval's CloudEvent id)",
            field="event_id",
        )
    event, seq = await find_approval(js, topology, event_id, stream_seq=previous.stream_seq)
    namespace = previous.namespace or settings.namespace
    manifest = editjob_from_approval(
        event,
        namespace=namespace,
        bucket=settings.s3.bucket,
        default_model=settings.operator.default_model,
        upload_prefix=settings.operator.upload_prefix,
    )
    base = manifest["metadata"]["name"]
    entry = await ledger.reserve_rerun(
        event_id, namespace=namespace, editjob=lambda n: rerun_name(base, n)
    )
    assert entry.editjob is not None
    manifest["metadata"]["name"] = entry.editjob
    manifest["metadata"]["annotations"][ANNOTATION_RERUN] = str(entry.reruns)
    result = await create_editjob(kube, manifest)
    if result == "exists":
        raise UpstreamError(
            f"EditJob {namespace}/{entry.editjob} already exists although the ledger just "
            "reserved that name; someone created it by hand? Run the re-run again for the next one"
        )
    log.info(
        "rerun %d of approval -> editjob %s",
        entry.reruns,
        entry.editjob,
        extra={"event_id": event_id, "editjob": f"{namespace}/{entry.editjob}",
               "decision": "rerun", "stream_seq": seq},
    )  # fmt: skip
    return Rerun(event_id, namespace, entry.editjob, entry.reruns, seq, previous)
