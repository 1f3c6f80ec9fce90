"""Leader election on a ``coordination.k8s.io/v1`` Lease, after client-go's leaderelection.

Two operator replicas run for availability, but only one may act: every loop (kopf
handlers, the approval bridge, re-lists, deliveries) runs inside ``lead()``, which the
:class:`LeaderElector` starts only once it holds the Lease. kopf's own peering is not a
leader election (it freezes replicas of equal priority), so this is the one switch.

The contract, as in client-go (``tools/leaderelection/leaderelection.go``):

* **Acquire.** A candidate reads the Lease; it takes it when there is none, when it is
  released (no holder), or when the holder's record has not changed for
  ``leaseDurationSeconds`` *as measured on our own monotonic clock* since we first saw that
  record. The other host's ``renewTime`` is never compared with our clock: its change is
  the heartbeat, not its value, so clock skew between nodes cannot cause two leaders.
  Every write is a PUT carrying the ``resourceVersion`` we read (optimistic concurrency):
  of two candidates racing for an expired Lease, the apiserver lets exactly one win.
* **Renew.** The leader renews every ``retry_period``. If no renewal succeeds for
  ``renew_deadline``, it cancels ``lead()`` and raises :class:`LeadershipLost`; the
  process then exits and restarts as a standby (controller-runtime's behaviour). Because
  ``renew_deadline < lease_seconds``, the old leader has stopped before any standby can
  consider the Lease expired (given clocks that run at the same *rate*).
* **Release.** On normal shutdown (the task running :meth:`LeaderElector.run` is
  cancelled) ``lead()`` is cancelled and awaited first, while renewals continue; then the
  Lease is released (holder cleared, ``leaseDurationSeconds: 1``) so a standby takes over
  at its next retry instead of waiting out the lease.

Timing, with the defaults (lease 10 s, renew deadline 7 s, retry 2 s, jitter up to 20 %):
after the leader's SIGKILL a standby notices the last renewal within one retry (2.4 s),
waits the lease (10 s) from that moment and wakes exactly at the expiry rather than at its
next tick, so it takes over at most about 12.4 s (plus one request) after the last
renewal: within the product's 15 s. client-go's defaults (15/10/2) would take up to 19 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from editflow.core.settings import Settings
from editflow.operator.kube import JSON, AsyncKube, KubeAPIError

log = logging.getLogger("editflow.operator.leader")

#: A retry sleeps ``retry_period`` times 1 to 1 + JITTER, so candidates drift apart.
JITTER = 0.2
#: Answers that retrying cannot fix: the operator lacks the RBAC, or the Lease is invalid.
FATAL_STATUSES = frozenset({401, 403, 422})
#: What one failed apiserver round trip looks like; anything else is a bug and propagates.
TRANSIENT = (KubeAPIError, httpx.HTTPError, OSError, TimeoutError)

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class LeadershipLost(RuntimeError):
    """The Lease could not be renewed within the renew deadline; ``lead()`` was cancelled.

    The process should exit: restarted, it comes back as a standby.
    """


class LeaderElectionError(RuntimeError):
    """The Lease cannot be used at all (missing RBAC, an invalid Lease); retrying won't help."""


def default_identity() -> str:
    """``POD_NAME`` (the chart sets it from the downward API), else host name and pid."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}_{os.getpid()}"


@dataclass(frozen=True)
class LeaseConfig:
    """Which Lease to hold, who we are, and the timing (seconds; see the module docstring)."""

    namespace: str
    name: str = "editflow-operator"
    identity: str = field(default_factory=default_identity)
    lease_seconds: float = 10
    renew_deadline: float = 7
    retry_period: float = 2

    def __post_init__(self) -> None:
        # The same checks as client-go's NewLeaderElector, naming the field at fault.
        for attr in ("namespace", "name"):
            value = getattr(self, attr)
            if not _DNS_SUBDOMAIN.match(value) or len(value) > 253:
                raise ValueError(f"LeaseConfig.{attr}={value!r} is not a DNS subdomain name")
        if not self.identity.strip():
            raise ValueError("LeaseConfig.identity must not be empty (set POD_NAME)")
        if self.retry_period <= 0:
            raise ValueError(f"LeaseConfig.retry_period={self.retry_period} must be > 0")
        if self.lease_seconds < 1:
            raise ValueError(f"LeaseConfig.lease_seconds={self.lease_seconds} must be >= 1")
        if self.renew_deadline <= self.retry_period * (1 + JITTER):
            raise ValueError(
                f"LeaseConfig.renew_deadline={self.renew_deadline} must exceed "
                f"retry_period x {1 + JITTER} ({self.retry_period * (1 + JITTER):g}): "
                "the leader needs more than one try before it gives up"
            )
        if self.lease_seconds <= self.renew_deadline:
            raise ValueError(
                f"LeaseConfig.lease_seconds={self.lease_seconds} must exceed "
                f"renew_deadline={self.renew_deadline}: a leader must stop before a standby "
                "may consider its lease expired"
            )

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"

    @property
    def collection(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"


def lease_config(settings: Settings) -> LeaseConfig:
    """The operator's Lease: in its own namespace, timing from ``EDITFLOW_OPERATOR__LEASE_*``."""
    op = settings.operator
    return LeaseConfig(
        namespace=settings.namespace,
        name=op.lease_name,
        lease_seconds=op.lease_seconds,
        renew_deadline=op.lease_renew_deadline_seconds,
        retry_period=op.lease_retry_seconds,
    )


def micro_time() -> str:
    """Now as a Kubernetes MicroTime (RFC 3339, microseconds, UTC): for people reading it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Hold one Lease and run ``lead()`` only while holding it (see the module docstring)."""

    def __init__(self, kube: AsyncKube, config: LeaseConfig) -> None:
        self.kube = kube
        self.config = config
        # What we last read or wrote, and when we first saw it (monotonic): client-go's
        # observedRecord / observedTime. Expiry is judged only from these.
        self._lease: JSON | None = None
        self._observed_spec: JSON | None = None
        self._observed_at = 0.0
        self._leading = False
        self._reported_holder: str | None = None

    @property
    def is_leader(self) -> bool:
        """Whether this process holds the Lease now (for probes, metrics and logs)."""
        return self._leading

    @property
    def leader_identity(self) -> str | None:
        """The holder we last observed (ourselves while leading); ``None`` when released."""
        if self._observed_spec is None:
            return None
        return self._observed_spec.get("holderIdentity") or None

    @property
    def _where(self) -> str:
        return f"{self.config.namespace}/{self.config.name}"

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Wait for the Lease, then run ``lead()`` while renewing it.

        Returns when ``lead()`` returns (the Lease is released), re-raises what ``lead()``
        raises (after releasing), raises :class:`LeadershipLost` when renewing fails, and
        releases the Lease when cancelled.
        """
        waiting_since = time.monotonic()
        await self._acquire()
        log.info(
            "became leader",
            extra={
                "identity": self.config.identity,
                "lease": self._where,
                "waited_seconds": round(time.monotonic() - waiting_since, 1),
                "transitions": (self._observed_spec or {}).get("leaseTransitions", 0),
            },
        )
        lead_task = asyncio.ensure_future(lead())
        renew_task = asyncio.ensure_future(self._keep_renewing())
        try:
            await asyncio.wait({lead_task, renew_task}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await self._shut_down(lead_task, renew_task)
            raise
        if lead_task.done():
            await self._shut_down(lead_task, renew_task)
            lead_task.result()  # the work's own error, if any, after the Lease is released
            return
        # Renewing failed: stop the work before a standby may start (lease - renew deadline).
        self._leading = False
        lead_task.cancel()
        grace = self.config.lease_seconds - self.config.renew_deadline
        await asyncio.wait({lead_task}, timeout=grace)
        reason = renew_task.exception()
        log.error(
            "lost leadership",
            extra={"identity": self.config.identity, "lease": self._where, "reason": str(reason)},
        )
        if not lead_task.done():
            log.error("the leader's work did not stop within %.0fs of losing the lease", grace)
        raise LeadershipLost(
            f"{self.config.identity} could not renew Lease {self._where} within "
            f"{self.config.renew_deadline:g}s: {reason}"
        ) from reason

    # -- acquiring ---------------------------------------------------------------------

    async def _acquire(self) -> None:
        """Try until the Lease is ours; sleep until the observed expiry or the next retry."""
        while True:
            try:
                if await self._try_acquire_or_renew():
                    self._leading = True
                    return
            except KubeAPIError as exc:
                if exc.status in FATAL_STATUSES:
                    raise LeaderElectionError(
                        f"cannot use Lease {self._where} as {self.config.identity}: {exc}. "
                        "The operator needs get, create and update on "
                        "coordination.k8s.io leases in its namespace (the chart grants them)."
                    ) from exc
                log.warning("could not read or write Lease %s: %s", self._where, exc)
            except TRANSIENT as exc:
                log.warning("could not read or write Lease %s: %s", self._where, exc)
            self._report_holder()
            await asyncio.sleep(self._until_next_try())

    def _until_next_try(self) -> float:
        retry = self.config.retry_period * (1 + random.uniform(0, JITTER))  # noqa: S311 - jitter
        if self._observed_spec and self._observed_spec.get("holderIdentity"):
            duration = self._observed_spec.get("leaseDurationSeconds") or self.config.lease_seconds
            expires_in = self._observed_at + duration - time.monotonic()
            # Wake at the expiry itself (a little after), not at the next tick past it.
            return max(0.05, min(retry, expires_in + 0.05))
        return retry

    def _report_holder(self) -> None:
        holder = self.leader_identity
        if holder != self._reported_holder:
            self._reported_holder = holder
            if holder and holder != self.config.identity:
                log.info(
                    "waiting as standby",
                    extra={
                        "identity": self.config.identity,
                        "lease": self._where,
                        "leader": holder,
                    },
                )

    def _observe(self, lease: JSON) -> None:
        spec = lease.get("spec") or {}
        if spec != self._observed_spec:
            self._observed_spec = spec
            self._observed_at = time.monotonic()
        self._lease = lease

    async def _try_acquire_or_renew(self) -> bool:
        """One round: read the Lease, and write it as ours if we may. True when we hold it."""
        now = micro_time()
        ours = {
            "holderIdentity": self.config.identity,
            "leaseDurationSeconds": math.ceil(self.config.lease_seconds),
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": 0,
        }
        lease = await self.kube.get(self.config.path)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.config.name, "namespace": self.config.namespace},
                "spec": ours,
            }
            try:
                self._observe(await self.kube.create(self.config.collection, body))
            except KubeAPIError as exc:
                if exc.status == 409:  # another candidate created it first
                    return False
                raise
            return True
        self._observe(lease)
        spec = self._observed_spec or {}
        holder = spec.get("holderIdentity")
        if holder and holder != self.config.identity:
            duration = spec.get("leaseDurationSeconds") or self.config.lease_seconds
            if time.monotonic() < self._observed_at + duration:
                return False  # held, and renewed within its duration as far as we can tell
        if holder == self.config.identity and self._leading:
            ours["acquireTime"] = spec.get("acquireTime") or now
            ours["leaseTransitions"] = spec.get("leaseTransitions") or 0
        else:
            ours["leaseTransitions"] = (spec.get("leaseTransitions") or 0) + 1
        return await self._write(ours)

    async def _write(self, spec: JSON) -> bool:
        """PUT the Lease we last saw with our record; False when someone wrote in between.

        Its ``resourceVersion`` makes the write conditional, and its labels, annotations
        and owner references go back unchanged (as client-go's LeaseLock updates the
        object it read), so nothing another tool put on the Lease is lost.
        """
        lease = self._lease or {}
        metadata = {k: v for k, v in (lease.get("metadata") or {}).items() if k != "managedFields"}
        metadata.update(name=self.config.name, namespace=self.config.namespace)
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata}
        body["spec"] = spec
        try:
            # AsyncKube has no PUT verb of its own; a Lease is the one object we replace.
            self._observe(await self.kube._call("PUT", self.config.path, body=body))
        except KubeAPIError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    # -- renewing and releasing -----------------------------------------------------------

    async def _keep_renewing(self) -> None:
        """Renew every retry period; return (with an exception) once the deadline passed."""
        last_renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.config.retry_period)
            while True:
                remaining = last_renewed + self.config.renew_deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no renewal for {self.config.renew_deadline:g}s")
                started = time.monotonic()
                try:
                    renewed = await asyncio.wait_for(self._renew(), timeout=remaining)
                except TRANSIENT as exc:
                    log.warning("renewing Lease %s failed: %s", self._where, exc)
                    renewed = False
                if renewed:
                    # The renewal counts from when it was sent: the conservative end.
                    last_renewed = started
                    break
                holder = self.leader_identity
                if holder != self.config.identity:
                    raise RuntimeError(f"the Lease is now held by {holder or 'nobody'}")
                await asyncio.sleep(min(self.config.retry_period, max(0.0, remaining)))

    async def _renew(self) -> bool:
        """A renewal is one PUT on the version we hold; a full read only after a conflict."""
        spec = dict(self._observed_spec or {})
        if spec.get("holderIdentity") == self.config.identity and self._lease is not None:
            spec["renewTime"] = micro_time()
            if await self._write(spec):
                return True
        return await self._try_acquire_or_renew()

    async def _shut_down(self, lead_task: asyncio.Future[Any], renew_task: asyncio.Task) -> None:
        """Stop the work (renewing meanwhile), then stop renewing and release the Lease."""
        lead_task.cancel()
        await asyncio.wait({lead_task})
        renew_task.cancel()
        with contextlib.suppress(BaseException):
            await renew_task
        was_leading, self._leading = self._leading, False
        if was_leading:
            try:
                await asyncio.wait_for(self._release(), timeout=self.config.renew_deadline)
            except TRANSIENT as exc:
                log.warning("could not release Lease %s: %s", self._where, exc)

    async def _release(self) -> None:
        """Clear the holder (if it is still us) so a standby may take over at once."""
        spec = self._observed_spec or {}
        if spec.get("holderIdentity") != self.config.identity:
            return
        now = micro_time()
        released = {
            "leaseDurationSeconds": 1,
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": spec.get("leaseTransitions") or 0,
        }
        if await self._write(released):
            log.info(
                "released the lease", extra={"identity": self.config.identity, "lease": self._where}
            )
        else:
            log.info("the lease was taken over before release", extra={"lease": self._where})
