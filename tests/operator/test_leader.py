"""Leader election on a real Lease (kube-apiserver v1.34 of the local platform).

One elector acquires; a second waits; a released Lease passes at once; a holder that is
SIGKILLed is replaced after its lease expires; a leader that cannot renew stops its work;
racing electors never lead at the same time; a waiting replica's health endpoint answers.
Timing is shortened for the tests (the defaults are checked separately) and every wait
polls: nothing here asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from editflow.core.settings import Settings
from editflow.operator.health import serve_standby_health
from editflow.operator.kube import AsyncKube
from editflow.operator.leader import (
    JITTER,
    LeaderElector,
    LeadershipLost,
    LeaseConfig,
    default_identity,
    lease_config,
)

NAMESPACE = "leader-election"
# Short but not tight: a loaded 2-core machine still renews well within 4 s.
FAST = {"lease_seconds": 6.0, "renew_deadline": 4.0, "retry_period": 0.5}


def configuration(stack, host: str | None = None) -> k8s_client.Configuration:
    cfg = k8s_client.Configuration()
    k8s_config.load_kube_config(config_file=str(stack.kubeconfig), client_configuration=cfg)
    if host:
        cfg.host = host
    return cfg


@pytest.fixture(scope="module")
def namespace(kubectl) -> str:
    if kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        kubectl("create", "namespace", NAMESPACE)
    return NAMESPACE


@pytest.fixture
async def kube(stack, namespace) -> AsyncIterator[AsyncKube]:
    client = AsyncKube(configuration(stack))
    yield client
    await client.close()


@pytest.fixture
def lease_name() -> str:
    return f"op-{uuid.uuid4().hex[:8]}"


def config(name: str, identity: str, **timing: float) -> LeaseConfig:
    return LeaseConfig(namespace=NAMESPACE, name=name, identity=identity, **{**FAST, **timing})


async def eventually(check: Callable[[], Awaitable[bool] | bool], *, timeout: float, what: str):
    """Poll (never sleep a fixed time and assert): raise naming ``what`` after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)


class Work:
    """A ``lead()`` that records when it runs and whether it was cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = False

    async def __call__(self) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, LeadershipLost):
        await task


async def lease_spec(kube: AsyncKube, cfg: LeaseConfig) -> dict:
    lease = await kube.get(cfg.path)
    assert lease is not None, f"Lease {cfg.namespace}/{cfg.name} is missing"
    return lease["spec"]


# -- configuration (no apiserver) -----------------------------------------------------


def test_default_timing_lets_a_standby_take_over_within_15_seconds() -> None:
    """After the last renewal a standby sees it within one jittered retry and takes over
    when the lease runs out (it wakes at the expiry, not at the next tick)."""
    cfg = LeaseConfig(namespace="editflow", identity="a")
    worst = cfg.retry_period * (1 + JITTER) + cfg.lease_seconds
    assert worst <= 15 - cfg.retry_period  # and a retry's margin for the request itself
    assert cfg.renew_deadline < cfg.lease_seconds


@pytest.mark.parametrize(
    ("timing", "field"),
    [
        ({"lease_seconds": 7, "renew_deadline": 7}, "lease_seconds"),
        ({"renew_deadline": 2.2, "retry_period": 2}, "renew_deadline"),
        ({"retry_period": 0}, "retry_period"),
        ({"lease_seconds": 0.5, "renew_deadline": 0.4, "retry_period": 0.1}, "lease_seconds"),
    ],
)
def test_timing_that_could_make_two_leaders_is_refused(timing, field) -> None:
    with pytest.raises(ValueError, match=f"LeaseConfig.{field}="):
        LeaseConfig(namespace="editflow", identity="a", **timing)


def test_lease_names_must_be_kubernetes_names() -> None:
    with pytest.raises(ValueError, match=r"LeaseConfig\.name='Editflow_Operator'"):
        LeaseConfig(namespace="editflow", name="Editflow_Operator", identity="a")
    with pytest.raises(ValueError, match=r"LeaseConfig\.identity"):
        LeaseConfig(namespace="editflow", identity=" ")


def test_identity_is_the_pod_name_when_the_chart_sets_it(monkeypatch) -> None:
    monkeypatch.setenv("POD_NAME", "editflow-operator-7d9f-abcde")
    assert default_identity() == "editflow-operator-7d9f-abcde"
    monkeypatch.delenv("POD_NAME")
    assert default_identity().endswith(f"_{os.getpid()}")


def test_lease_config_follows_the_operator_settings(monkeypatch) -> None:
    monkeypatch.setenv("EDITFLOW_NAMESPACE", "ops")
    monkeypatch.setenv("EDITFLOW_OPERATOR__LEASE_NAME", "ef-editflow-operator")
    monkeypatch.setenv("EDITFLOW_OPERATOR__LEASE_SECONDS", "12")
    cfg = lease_config(Settings())
    assert (cfg.namespace, cfg.name, cfg.lease_seconds) == ("ops", "ef-editflow-operator", 12)
    assert (cfg.renew_deadline, cfg.retry_period) == (7, 2)


# -- on the apiserver -----------------------------------------------------------------


@pytest.mark.platform
@pytest.mark.slow
async def test_first_elector_acquires_renews_and_releases_on_shutdown(
    kube, lease_name, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="editflow.operator.leader")
    cfg = config(lease_name, "replica-a")
    elector = LeaderElector(kube, cfg)
    work = Work()
    task = asyncio.create_task(elector.run(work))
    await asyncio.wait_for(work.started.wait(), 30)
    assert elector.is_leader and elector.leader_identity == "replica-a"
    first = await lease_spec(kube, cfg)
    assert first["holderIdentity"] == "replica-a"
    assert first["leaseDurationSeconds"] == 6
    assert first["leaseTransitions"] == 0
    assert first["acquireTime"] == first["renewTime"]

    # Another tool's label on the Lease survives the leader's writes.
    await kube.patch(cfg.path, {"metadata": {"labels": {"team": "platform"}}})
    labelled = (await lease_spec(kube, cfg))["renewTime"]

    async def renewed() -> bool:
        return (await lease_spec(kube, cfg))["renewTime"] not in (first["renewTime"], labelled)

    await eventually(renewed, timeout=30, what="the leader to renew its Lease")
    assert (await lease_spec(kube, cfg))["acquireTime"] == first["acquireTime"]
    assert (await kube.get(cfg.path))["metadata"]["labels"] == {"team": "platform"}

    await stop(task)
    assert work.cancelled and not elector.is_leader
    released = await lease_spec(kube, cfg)
    assert "holderIdentity" not in released or not released["holderIdentity"]
    assert released["leaseDurationSeconds"] == 1
    lines = {r.getMessage(): r for r in caplog.records if r.name == "editflow.operator.leader"}
    assert lines["became leader"].identity == "replica-a"
    assert lines["released the lease"].identity == "replica-a"


@pytest.mark.platform
@pytest.mark.slow
async def test_a_standby_waits_and_takes_over_at_once_when_the_leader_releases(
    kube, lease_name
) -> None:
    # A lease far longer than the wait below: the standby can only get in by the release.
    cfg_a = config(lease_name, "replica-a", lease_seconds=120)
    cfg_b = config(lease_name, "replica-b", lease_seconds=120)
    a, b = LeaderElector(kube, cfg_a), LeaderElector(kube, cfg_b)
    work_a, work_b = Work(), Work()
    task_a = asyncio.create_task(a.run(work_a))
    await asyncio.wait_for(work_a.started.wait(), 30)
    task_b = asyncio.create_task(b.run(work_b))
    try:
        await eventually(
            lambda: b.leader_identity == "replica-a", timeout=30, what="b to see a lead"
        )
        assert not b.is_leader and not work_b.started.is_set()
        await stop(task_a)
        await asyncio.wait_for(work_b.started.wait(), 30)
        assert b.is_leader and not a.is_leader
        spec = await lease_spec(kube, cfg_b)
        assert spec["holderIdentity"] == "replica-b"
        assert spec["leaseTransitions"] == 1
    finally:
        await stop(task_a)
        await stop(task_b)


HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from kubernetes import client, config
    from editflow.operator.kube import AsyncKube
    from editflow.operator.leader import LeaderElector, LeaseConfig

    kubeconfig, namespace, name = sys.argv[1:4]
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)

    async def lead():
        print("leading", flush=True)
        await asyncio.Event().wait()

    async def main():
        lease = LeaseConfig(namespace=namespace, name=name, identity="killed-replica",
                            lease_seconds=6, renew_deadline=4, retry_period=0.5)
        await LeaderElector(AsyncKube(cfg), lease).run(lead)

    asyncio.run(main())
    """
)


@pytest.mark.platform
@pytest.mark.slow
async def test_a_standby_takes_over_once_a_killed_holder_s_lease_expires(
    stack, kube, lease_name, tmp_path: Path
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(stack.kubeconfig), NAMESPACE, lease_name],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "holder.log").open("w"),
        text=True,
        cwd=tmp_path,
        start_new_session=True,
    )
    standby = LeaderElector(kube, config(lease_name, "standby"))
    work = Work()
    task: asyncio.Task | None = None
    try:
        line = await asyncio.wait_for(asyncio.to_thread(holder.stdout.readline), 60)
        assert line.strip() == "leading", (tmp_path / "holder.log").read_text()
        task = asyncio.create_task(standby.run(work))
        await eventually(
            lambda: standby.leader_identity == "killed-replica",
            timeout=30,
            what="the standby to see the holder",
        )
        before = await lease_spec(kube, standby.config)
        assert holder.poll() is None and not standby.is_leader
        os.killpg(holder.pid, signal.SIGKILL)  # no release: the lease has to run out
        holder.wait(timeout=30)
        await asyncio.wait_for(work.started.wait(), 60)
        after = await lease_spec(kube, standby.config)
        assert after["holderIdentity"] == "standby"
        assert after["leaseTransitions"] == before["leaseTransitions"] + 1
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait(timeout=30)
        if task is not None:
            await stop(task)


class CuttableProxy:
    """A TCP relay to the apiserver that the test can cut, as a network partition would."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cut_off = False
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def cut(self) -> None:
        self.cut_off = True
        for writer in self.writers:
            writer.close()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.mark.platform
@pytest.mark.slow
async def test_a_leader_that_cannot_renew_stops_its_work_and_raises(stack, lease_name) -> None:
    target = httpx.URL(configuration(stack).host)
    proxy = CuttableProxy(target.port)
    port = await proxy.start()
    partitioned = AsyncKube(configuration(stack, host=f"https://127.0.0.1:{port}"))
    elector = LeaderElector(partitioned, config(lease_name, "partitioned"))
    work = Work()
    task = asyncio.create_task(elector.run(work))
    try:
        await asyncio.wait_for(work.started.wait(), 30)
        proxy.cut()
        with pytest.raises(LeadershipLost, match="could not renew Lease"):
            await asyncio.wait_for(task, 60)
        assert work.cancelled and not elector.is_leader
    finally:
        await stop(task)
        await proxy.close()
        await partitioned.close()


@pytest.mark.platform
@pytest.mark.slow
async def test_a_leader_whose_lease_is_taken_stops_at_once(kube, lease_name) -> None:
    cfg = config(lease_name, "replica-a", renew_deadline=5, lease_seconds=120)
    elector = LeaderElector(kube, cfg)
    work = Work()
    task = asyncio.create_task(elector.run(work))
    try:
        await asyncio.wait_for(work.started.wait(), 30)
        lease = await kube.get(cfg.path)
        lease["spec"]["holderIdentity"] = "intruder"
        await kube._call("PUT", cfg.path, body=lease)
        with pytest.raises(LeadershipLost, match="held by intruder"):
            await asyncio.wait_for(task, 60)
        assert work.cancelled
        assert (await lease_spec(kube, cfg))["holderIdentity"] == "intruder"  # not released
    finally:
        await stop(task)


@pytest.mark.platform
@pytest.mark.slow
async def test_racing_electors_never_lead_at_the_same_time(stack, kube, lease_name) -> None:
    """Four electors, each with its own client, race for one Lease: first to create it,
    then, each time the leader finishes and releases, to PUT it. lead() counts overlaps."""
    rounds, active, max_active, leads = 12, 0, 0, []
    clients = [AsyncKube(configuration(stack)) for _ in range(4)]
    electors = [
        LeaderElector(c, config(lease_name, f"racer-{i}", retry_period=0.2, renew_deadline=3))
        for i, c in enumerate(clients)
    ]

    async def racer(elector: LeaderElector) -> None:
        async def lead() -> None:
            nonlocal active, max_active
            active += 1
            max_active = max(max_active, active)
            leads.append(elector.config.identity)
            try:
                await asyncio.sleep(0.3)  # hold it across the others' retries
            finally:
                active -= 1

        while len(leads) < rounds:
            await elector.run(lead)

    try:
        await asyncio.wait_for(asyncio.gather(*(racer(e) for e in electors)), 240)
    finally:
        for c in clients:
            await c.close()
    assert max_active == 1, leads
    spec = await lease_spec(kube, electors[0].config)
    # Every acquisition after the creation was one conditional write: none got lost.
    assert spec["leaseTransitions"] == len(leads) - 1, leads
    assert len(set(leads)) > 1, leads


# -- the standby's health endpoint ------------------------------------------------------


@pytest.mark.platform
@pytest.mark.slow
async def test_a_waiting_replica_answers_its_probes_as_standby(kube, lease_name) -> None:
    leader = LeaderElector(kube, config(lease_name, "replica-a"))
    standby = LeaderElector(kube, config(lease_name, "replica-b"))
    work = Work()
    tasks = [asyncio.create_task(leader.run(work))]
    await asyncio.wait_for(work.started.wait(), 30)
    tasks.append(asyncio.create_task(standby.run(Work())))
    server = await serve_standby_health(0, standby, host="127.0.0.1")
    url = f"http://127.0.0.1:{server.port}"
    try:
        await eventually(
            lambda: standby.leader_identity == "replica-a", timeout=30, what="b to see a"
        )
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"{url}/healthz")
            assert answer.status_code == 200
            assert answer.json() == {"role": "standby", "leader": "replica-a"}
            assert (await http.get(f"{url}/metrics")).status_code == 404
        await server.close()
        # The port is free again for kopf's own liveness endpoint.
        again = await serve_standby_health(server.port, leader, host="127.0.0.1")
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"{url}/healthz")
        assert answer.json() == {"role": "leader", "leader": "replica-a"}
        await again.close()
    finally:
        await server.close()
        for task in tasks:
            await stop(task)
