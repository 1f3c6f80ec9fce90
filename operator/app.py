"""The operator process: kopf handlers, the NATS bridge, the re-list loop, probes, metrics.

``editflow operator run`` calls :func:`run`. kopf supplies the watches and the
deletion finalizer; every decision goes through one :class:`Reconciler`, which
is woken by EditJob, Job and Pod events and, as a safety net, by a periodic
re-list of all EditJobs (level-triggered: a lost watch event only delays).

Liveness (``/healthz`` on the health port) fails when the re-list loop stops,
when the watch lags a re-list by more than ``liveness_stale_seconds`` (an
EditJob changed and no watch event brought the change) or when the bridge has
been disconnected from NATS for that long. The operator never touches running
Jobs on start or stop, so a restart or an upgrade never kills an edit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import kopf
from prometheus_client import start_http_server

from editflow.core.logging import configure_logging
from editflow.core.s3 import s3_client
from editflow.core.settings import Settings
from editflow.events import connection, topology
from editflow.events.consumer import run_consumer
from editflow.events.models import OA_EVENT_TYPES
from editflow.events.validation import Policy
from editflow.operator import metrics
from editflow.operator.bridge import Bridge
from editflow.operator.crd import GROUP, PLURAL, VERSION, editjob_path
from editflow.operator.kube import AsyncKube, auth_headers, load_configuration
from editflow.operator.names import LABEL_EDITJOB, MANAGED_BY
from editflow.operator.reconciler import Reconciler

log = logging.getLogger("editflow.operator")


class WatchFreshness:
    """Detects a silently dead watch: a re-list saw a version no watch event delivered."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], int] = {}
        self.lagging_since: dict[tuple[str, str], float] = {}

    def watched(self, key: tuple[str, str], version: str) -> None:
        self.seen[key] = max(self.seen.get(key, 0), int(version or 0))
        self.lagging_since.pop(key, None)

    def listed(self, key: tuple[str, str], version: str) -> None:
        if int(version or 0) > self.seen.get(key, 0):
            self.lagging_since.setdefault(key, time.monotonic())
        else:
            self.lagging_since.pop(key, None)

    def stale_for(self) -> float:
        if not self.lagging_since:
            return 0.0
        return time.monotonic() - min(self.lagging_since.values())


def connection_info(cfg: Any) -> kopf.ConnectionInfo:
    """kopf's view of a kubernetes-client Configuration (token or client certificate)."""
    token = auth_headers(cfg).get("authorization", "")
    scheme, _, value = token.partition(" ")
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        scheme=scheme or None,
        token=value or None,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        default_namespace=None,
    )


def build_registry(settings: Settings) -> tuple[kopf.OperatorRegistry, dict[str, Any]]:
    """All handlers on a private registry; ``state`` holds what they share."""
    registry = kopf.OperatorRegistry()
    op = settings.operator
    namespaces = op.namespaces or [settings.namespace]
    state: dict[str, Any] = {"freshness": WatchFreshness(), "bridge_down_since": None}
    managed = dict(MANAGED_BY)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        # The same credentials as our own client (service account, else KUBECONFIG),
        # so kopf and the reconciler can never disagree about who the operator is.
        return connection_info(load_configuration())

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.watching.server_timeout = op.watch_timeout_seconds
        settings.watching.client_timeout = op.watch_timeout_seconds + 15
        settings.watching.connect_timeout = 10
        settings.watching.reconnect_backoff = 1.0
        settings.posting.level = logging.WARNING
        settings.persistence.finalizer = f"{GROUP}/cleanup"
        kube = AsyncKube()
        nc = await connection.connect(state["settings"].nats, name="editflow-operator")
        topo = topology.Topology(state["settings"].events)
        await topology.provision(nc.jetstream(), topo)
        state.update(kube=kube, nats=nc, topology=topo)
        state["reconciler"] = Reconciler(
            state["settings"], kube, nats=nc, topology=topo, s3=s3_client(state["settings"].s3)
        )
        state["tasks"] = [
            asyncio.create_task(_resync_loop(state, namespaces), name="resync"),
            asyncio.create_task(_bridge_loop(state), name="bridge"),
        ]
        if op.metrics_port:
            start_http_server(op.metrics_port)
        log.info("operator started", extra={"namespaces": namespaces})

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        for task in state.get("tasks", []):
            task.cancel()
        if state.get("nats") is not None:
            await state["nats"].close()
        if state.get("kube") is not None:
            await state["kube"].close()

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def editjob_event(event: dict[str, Any], body: Any, **_: Any) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        state["freshness"].watched(key, meta.get("resourceVersion", "0"))
        if event["type"] != "DELETED" and not meta.get("deletionTimestamp"):
            state["reconciler"].schedule(*key)

    @kopf.on.event("batch", "v1", "jobs", labels=managed, registry=registry)
    async def job_event(body: Any, **_: Any) -> None:
        owner = body["metadata"].get("labels", {}).get(LABEL_EDITJOB)
        if owner:
            state["reconciler"].schedule(body["metadata"]["namespace"], owner)

    @kopf.on.event("", "v1", "pods", labels=managed, registry=registry)
    async def pod_event(body: Any, **_: Any) -> None:
        owner = body["metadata"].get("labels", {}).get(LABEL_EDITJOB)
        if owner:
            state["reconciler"].schedule(body["metadata"]["namespace"], owner)

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    async def editjob_deleted(body: Any, **_: Any) -> None:
        await state["reconciler"].on_deleted(dict(body))

    @kopf.on.probe(id="resync", registry=registry)
    async def resync_probe(**_: Any) -> float:
        age = time.monotonic() - state["reconciler"].last_resync
        if age > op.liveness_stale_seconds:
            raise RuntimeError(f"the re-list loop has not run for {age:.0f}s")
        return round(age, 1)

    @kopf.on.probe(id="watch", registry=registry)
    async def watch_probe(**_: Any) -> float:
        stale = state["freshness"].stale_for()
        metrics.WATCH_LAG.set(stale)
        if stale > op.liveness_stale_seconds:
            raise RuntimeError(f"the EditJob watch lags a re-list by {stale:.0f}s")
        return round(stale, 1)

    @kopf.on.probe(id="nats", registry=registry)
    async def nats_probe(**_: Any) -> str:
        nc = state.get("nats")
        if nc is None or not nc.is_connected:
            since = state["bridge_down_since"] = state["bridge_down_since"] or time.monotonic()
            if time.monotonic() - since > op.liveness_stale_seconds:
                raise RuntimeError("NATS has been unreachable too long")
            return "reconnecting"
        state["bridge_down_since"] = None
        return "connected"

    state["settings"] = settings
    return registry, state


async def _resync_loop(state: dict[str, Any], namespaces: list[str]) -> None:
    reconciler: Reconciler = state["reconciler"]
    freshness: WatchFreshness = state["freshness"]
    while True:
        try:
            for namespace in namespaces:
                for item in await reconciler.kube.list(editjob_path(namespace)):
                    meta = item["metadata"]
                    freshness.listed((namespace, meta["name"]), meta.get("resourceVersion", "0"))
                    reconciler.schedule(namespace, meta["name"])
            reconciler.last_resync = time.monotonic()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("re-list failed")
        await asyncio.sleep(reconciler.op.resync_seconds)


async def _bridge_loop(state: dict[str, Any]) -> None:
    settings: Settings = state["settings"]
    bridge = Bridge(settings, state["kube"])
    policy = Policy.from_settings(settings.events, accept=OA_EVENT_TYPES)
    delay = 1.0
    while True:
        try:
            await run_consumer(
                state["nats"].jetstream(), bridge, topology=state["topology"], policy=policy
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the approval bridge stopped; restarting in %.0fs", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


def run(settings: Settings | None = None) -> None:
    """Run the operator until SIGTERM/SIGINT."""
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_format)
    registry, _ = build_registry(settings)
    namespaces = settings.operator.namespaces or [settings.namespace]
    liveness = (
        f"http://0.0.0.0:{settings.operator.health_port}/healthz"
        if settings.operator.health_port
        else None
    )
    kopf.run(
        registry=registry,
        standalone=True,
        namespaces=namespaces,
        liveness_endpoint=liveness,
    )
