"""The operator process: leader election, kopf, the caches, the work queue, the bridge.

``editflow operator run`` calls :func:`run`. With leader election on (the
chart's default with two replicas) the process first waits for the Lease
(:mod:`editflow.operator.leader`), answering its probes as a standby; only
the leader starts kopf, and every loop (the watch-fed caches, the reconcile
workers, the approval bridge, deliveries) starts inside kopf's startup
handler, so nothing runs on a standby. A leader that cannot renew its Lease
stops its work and exits, and restarts as a standby.

kopf is the operator's framework for what it is for here: the login, the
operator's life (startup and cleanup handlers, run only on the leader), and the
liveness endpoint with its probes. It watches nothing: every kind has one watch,
the informers' (:class:`~editflow.operator.caches.ClusterCache`, one paginated
list per kind, then a watch), and the reconciler owns the EditJob finalizer and
the deletion path (deleting an EditJob cancels it and reports ``cancelled``,
through the same branch of ``decide()`` as the cancel annotation). The liveness
probe fails when those watches have been silent for ``liveness_stale_seconds``,
when the caches never synced, or when NATS has been unreachable that long. The
operator never touches running Jobs on start or stop, so a restart or an upgrade
never kills an edit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from datetime import UTC, datetime
from typing import Any

import kopf
from prometheus_client import start_http_server

from editflow.core.backoff import Backoff
from editflow.core.logging import configure_logging
from editflow.core.s3 import s3_client
from editflow.core.settings import Settings
from editflow.events import connection, topology
from editflow.events.ledger import ApprovalLedger
from editflow.operator import metrics
from editflow.operator.attempts import ResultReader
from editflow.operator.bridge import run_bridge
from editflow.operator.caches import ClusterCache
from editflow.operator.credentials import AttemptCredentialMinter
from editflow.operator.delivery import EditJobDelivery, OutcomeSender
from editflow.operator.desk import DeskPublisher, cached_log_lines
from editflow.operator.dispatch import JobDispatcher
from editflow.operator.health import serve_standby_health
from editflow.operator.kube import AsyncKube, auth_headers, load_configuration
from editflow.operator.leader import LeaderElector, LeadershipLost, lease_config
from editflow.operator.lifecycle import ensure_expiry
from editflow.operator.outbox import Deliverer, Outbox
from editflow.operator.poolkeys import PoolKeys
from editflow.operator.progress import ProgressPublisher
from editflow.operator.reconciler import Reconciler
from editflow.operator.s3users import provision_weights_reader
from editflow.operator.statuswriter import StatusWriter
from editflow.operator.warmpool import WarmDispatcher

log = logging.getLogger("editflow.operator")

#: Exit code of a leader that lost its Lease (it restarts as a standby).
EXIT_LOST_LEADERSHIP = 75


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


def tune_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf watches no resource here, so only what it posts matters: its own log lines
    are not turned into Kubernetes Events (the reconciler posts the ones that tell a story)."""
    settings.posting.level = logging.WARNING


def build_registry(settings: Settings) -> tuple[kopf.OperatorRegistry, dict[str, Any]]:
    """All handlers on a private registry; ``state`` holds what they share."""
    registry = kopf.OperatorRegistry()
    op = settings.operator
    namespaces = op.namespaces or [settings.namespace]
    state: dict[str, Any] = {"settings": settings, "bridge_down_since": None}

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        # The same credentials as our own client (service account, else KUBECONFIG),
        # so kopf and the reconciler can never disagree about who the operator is.
        return connection_info(load_configuration())

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        tune_kopf(settings)
        await start_work(state, namespaces)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await stop_work(state)

    @kopf.on.probe(id="caches", registry=registry)
    async def caches_probe(**_: Any) -> dict[str, Any]:
        cache: ClusterCache = state["cache"]
        stale = cache.stale_for()
        metrics.WATCH_LAG.set(stale)
        if stale > op.liveness_stale_seconds:
            raise RuntimeError(f"the watches have been silent for {stale:.0f}s")
        if not cache.synced and time.monotonic() - state["started"] > op.liveness_stale_seconds:
            raise RuntimeError("the caches never finished their first list")
        return {"synced": cache.synced, "stale_seconds": round(stale, 1), **cache.sizes()}

    @kopf.on.probe(id="workqueue", registry=registry)
    async def workqueue_probe(**_: Any) -> dict[str, int]:
        reconciler: Reconciler = state["reconciler"]
        return {"depth": len(reconciler.queue), "processing": reconciler.queue.processing}

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

    return registry, state


async def start_work(state: dict[str, Any], namespaces: list[str]) -> None:
    """Everything the leader runs: caches, reconcile workers, the bridge, metrics."""
    settings: Settings = state["settings"]
    op = settings.operator
    state["started"] = time.monotonic()
    kube = AsyncKube()
    nc = await connection.connect(settings.nats, name="editflow-operator")
    topo = topology.Topology(settings.events)
    await topology.provision(nc.jetstream(), topo)
    ledger = await ApprovalLedger.open(nc.jetstream(), topo)
    warm = op.worker_mode == "warm"
    cache = ClusterCache(kube, namespaces, watch_timeout=op.watch_timeout_seconds, warm_pools=warm)
    outbox = Outbox(op, kube, store=cache.outcomes, now=_utcnow)
    deliverer = Deliverer(op, kube, outbox, nats=nc, topology=topo, ledger=ledger)
    progress = ProgressPublisher(nc.jetstream(), topo)
    s3 = s3_client(settings.s3)
    results = ResultReader(settings, s3)
    dispatcher: JobDispatcher | WarmDispatcher
    if warm:
        if not op.warm_nats_url:
            op.warm_nats_url = settings.nats.url
        # Each attempt's STS credentials travel sealed in its work message (issue 20 §1);
        # without attempt_credentials (an S3 without STS) warm workers use the shared key.
        dispatcher = WarmDispatcher(
            kube,
            cache,
            op,
            nats=nc,
            minter=AttemptCredentialMinter(settings.s3, op) if op.attempt_credentials else None,
            pool_keys=PoolKeys(kube, op) if op.attempt_credentials else None,
            token_secret=settings.s3.secret_key.get_secret_value(),
            results=results,
        )
    else:
        dispatcher = JobDispatcher(
            kube,
            cache,
            op,
            minter=AttemptCredentialMinter(settings.s3, op) if op.attempt_credentials else None,
            results=results,
        )
    await asyncio.to_thread(ensure_expiry, settings, s3)
    await _provision_weights_reader(settings)
    desk = DeskPublisher(
        nc.jetstream(),
        logs=cached_log_lines(cache),
        storage=settings.events.storage,
        replicas=settings.events.replicas,
    )
    writer = StatusWriter(kube, cache, progress=progress, desk=desk)
    delivery = EditJobDelivery(
        op,
        OutcomeSender(op, nats=nc, topology=topo, now=_utcnow),
        write=writer.write,
        ledger=ledger,
    )
    reconciler = Reconciler(
        settings,
        kube,
        cache=cache,
        dispatcher=dispatcher,
        outbox=outbox,
        s3=s3,
        writer=writer,
        delivery=delivery,
        progress=progress,
        desk=desk,
    )
    state.update(kube=kube, nats=nc, topology=topo, cache=cache, reconciler=reconciler)
    state["tasks"] = [
        asyncio.create_task(_supervised("caches", cache.run), name="caches"),
        asyncio.create_task(_supervised("reconciler", reconciler.run), name="reconciler"),
        asyncio.create_task(_supervised("deliverer", deliverer.run), name="deliverer"),
        asyncio.create_task(
            run_bridge(settings, kube, nc, topo, ledger=ledger, desk=desk, writer=writer),
            name="bridge",
        ),
    ]
    if isinstance(dispatcher, WarmDispatcher):
        dispatcher.wake = reconciler.queue.add
        state["tasks"].append(
            asyncio.create_task(_supervised("warm-dispatch", dispatcher.run), name="warm")
        )
    if op.metrics_port and not state.get("metrics_started"):
        start_http_server(op.metrics_port)
        state["metrics_started"] = True
    log.info("operator started", extra={"namespaces": namespaces})


async def _provision_weights_reader(settings: Settings) -> None:
    """The chart's read-only weights user (issue 20 §1). A failure is logged, not fatal: edits
    whose weights are already on a PVC or in a node cache still run, and workers that must
    download say AccessDenied naming the weights prefix."""
    try:
        if await asyncio.to_thread(provision_weights_reader, settings):
            log.info(
                "weights reader ready",
                extra={"prefix": settings.worker.weights_s3_prefix},
            )
    except Exception as exc:
        log.error(
            "weights reader not created: workers cannot download weights from S3 (MinIO's "
            "admin API is needed; on another S3 set models.s3ReaderSecret)",
            extra={"error": str(exc)[:500]},
        )


async def stop_work(state: dict[str, Any]) -> None:
    for task in state.get("tasks", []):
        task.cancel()
    for task in state.get("tasks", []):
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    if state.get("nats") is not None:
        with contextlib.suppress(Exception):
            await state["nats"].close()
    if state.get("kube") is not None:
        await state["kube"].close()


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def _supervised(what: str, loop: Any) -> None:
    """Restart a crashed loop with backoff: one bug must not silently stop the operator."""
    backoff = Backoff(1.0, 30.0)
    while True:
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s stopped; restarting in %.0fs", what, backoff.delay)
            await asyncio.sleep(backoff.grow())


async def operate(settings: Settings) -> None:
    """Run kopf (and through it all the work); with leader election only while leading."""
    namespaces = settings.operator.namespaces or [settings.namespace]
    op = settings.operator
    registry, _ = build_registry(settings)
    liveness = f"http://0.0.0.0:{op.health_port}/healthz" if op.health_port else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    async def kopf_operator() -> None:
        await kopf.operator(
            registry=registry,
            standalone=True,
            namespaces=namespaces,
            liveness_endpoint=liveness,
            stop_flag=stop,
        )

    if not op.leader_election:
        await kopf_operator()
        return

    kube = AsyncKube()
    elector = LeaderElector(kube, lease_config(settings))
    standby = await serve_standby_health(op.health_port, elector) if op.health_port else None

    async def lead() -> None:
        if standby is not None:
            await standby.close()  # kopf's liveness endpoint takes the port over
        await kopf_operator()

    election = asyncio.create_task(elector.run(lead))
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({election, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not election.done():
            # SIGTERM: a leader's kopf stops on the flag, then the Lease is released;
            # a standby has nothing to finish.
            if elector.is_leader:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(election), timeout=30)
            election.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await election
        else:
            election.result()
    finally:
        stopper.cancel()
        if standby is not None:
            with contextlib.suppress(Exception):
                await standby.close()
        await kube.close()


def run(settings: Settings | None = None) -> None:
    """Run the operator until SIGTERM/SIGINT."""
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(operate(settings))
    except LeadershipLost as exc:
        log.error("exiting to restart as a standby: %s", exc)
        sys.exit(EXIT_LOST_LEADERSHIP)
