"""Tenant A against tenant B on NATS (issue 20 §2): each namespace's warm workers have their
own NATS user, and it reaches only that namespace's work, results, heartbeats and control.

The server is the chart's bundled NATS as rendered for a release that watches two tenant
namespaces, with the passwords of the chart's Secrets: what it refuses here is what a
production install refuses. A plays a compromised warm worker of namespace A: it holds A's
worker Secret (the one its Pods mount) and tries every way to B's edits.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from nats.js.api import ConsumerConfig
from nats.js.errors import NotFoundError

from editflow.events.worker_contract import (
    WORK_STREAM,
    WorkerHeartbeat,
    result_subject,
    work_consumer,
    work_subject,
    worker_control_subject,
    worker_status_subject,
)
from editflow.events.workqueue import ensure_work_consumer
from tests.chart.natskit import Role, bundled_server, connect_as, secret_value

A, B = "tenant-a", "tenant-b"
MODEL = "longcat-image-edit"


@dataclass
class Cluster:
    url: str
    objs: list[dict]

    def worker_secret(self, namespace: str) -> tuple[str, str]:
        """The user and password in the worker Secret the chart made in ``namespace``."""
        return tuple(  # type: ignore[return-value]
            secret_value(self.objs, "editflow-worker-nats", key, namespace)
            for key in ("user", "password")
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    for url, objs in bundled_server(
        tmp_path_factory.mktemp("tenants"), {"watchNamespaces": [A, B]}
    ):
        yield Cluster(url, objs)


@pytest.fixture
async def roles(cluster: Cluster) -> AsyncIterator[dict[str, Role]]:
    """The operator, A's worker and B's worker, each with the credential the chart gave it."""
    operator = await connect_as(
        cluster.url,
        "editflow-operator",
        secret_value(cluster.objs, "editflow-nats", "operator-password"),
    )
    worker_a = await connect_as(cluster.url, *cluster.worker_secret(A))
    worker_b = await connect_as(cluster.url, *cluster.worker_secret(B))
    try:
        yield {"operator": operator, A: worker_a, B: worker_b}
    finally:
        for role in (operator, worker_a, worker_b):
            await role.nc.close()


def test_each_namespace_has_its_own_worker_identity(cluster: Cluster) -> None:
    user_a, password_a = cluster.worker_secret(A)
    user_b, password_b = cluster.worker_secret(B)
    assert (user_a, user_b) == (f"editflow-worker-{A}", f"editflow-worker-{B}")
    assert password_a != password_b
    # No shared worker credential is rendered anywhere.
    nats_secret = next(
        o
        for o in cluster.objs
        if o["kind"] == "Secret" and o["metadata"]["name"] == "editflow-nats"
    )
    assert "worker-password" not in nats_secret["data"]


async def test_a_worker_cannot_take_answer_or_watch_another_namespaces_edits(
    roles: dict[str, Role],
) -> None:
    operator, worker_a, worker_b = roles["operator"], roles[A], roles[B]
    for namespace in (A, B):
        await ensure_work_consumer(operator.js, namespace, MODEL, ack_wait=30, max_deliveries=2)
        await operator.js.publish(
            work_subject(namespace, MODEL), json.dumps({"ns": namespace}).encode()
        )
    results_b = await operator.nc.subscribe(f"{result_subject(B, '*')}")
    status_b = await operator.nc.subscribe(worker_status_subject(B, MODEL))

    # A pulls and acknowledges its own namespace's work.
    own = await worker_a.js.pull_subscribe_bind(work_consumer(A, MODEL), stream=WORK_STREAM)
    (message,) = await own.fetch(1, timeout=5)
    assert json.loads(message.data) == {"ns": A}
    await message.ack()

    # B's work: pulling from B's consumer is refused, and B's edit stays queued for B.
    foreign = await worker_a.js.pull_subscribe_bind(work_consumer(B, MODEL), stream=WORK_STREAM)
    with pytest.raises(Exception):  # noqa: B017 - nats-py times out on the refused pull
        await foreign.fetch(1, timeout=2)
    assert await worker_a.refused(
        f"$JS.API.CONSUMER.MSG.NEXT.{WORK_STREAM}.{work_consumer(B, MODEL)}"
    )
    info = await operator.js.consumer_info(WORK_STREAM, work_consumer(B, MODEL))
    assert info.num_pending == 1 and info.num_ack_pending == 0

    # A result or a heartbeat for B never reaches the operator.
    forged_result = result_subject(B, "edit-b")
    await worker_a.nc.publish(forged_result, b'{"status": "success"}')
    assert await worker_a.refused(forged_result)
    beat = WorkerHeartbeat(pod="warm-b", namespace=B, model=MODEL, state="idle")
    await worker_a.nc.publish(worker_status_subject(B, MODEL), beat.model_dump_json().encode())
    assert await worker_a.refused(worker_status_subject(B, MODEL))
    await operator.nc.flush()
    with pytest.raises(TimeoutError):
        await results_b.next_msg(timeout=0.5)
    with pytest.raises(TimeoutError):
        await status_b.next_msg(timeout=0.5)

    # B's control subjects and B's replies (its inbox) cannot be read.
    worker_a.errors.clear()
    await worker_a.nc.subscribe(worker_control_subject(B, "warm-b"))
    assert await worker_a.refused("Subscription")
    worker_a.errors.clear()
    await worker_a.nc.subscribe(f"_INBOX_editflow-worker-{B}.>")
    assert await worker_a.refused("Subscription")

    # B's own worker still takes its edit: nothing of A's attempts touched it.
    theirs = await worker_b.js.pull_subscribe_bind(work_consumer(B, MODEL), stream=WORK_STREAM)
    (message,) = await theirs.fetch(1, timeout=5)
    assert json.loads(message.data) == {"ns": B}
    await message.ack()


async def test_only_the_operator_creates_streams_and_consumers(roles: dict[str, Role]) -> None:
    """A worker that could create a consumer could filter it on B's subjects and read B's work."""
    operator, worker_a = roles["operator"], roles[A]
    await ensure_work_consumer(operator.js, A, MODEL, ack_wait=30, max_deliveries=2)
    snoop = ConsumerConfig(durable_name="snoop", filter_subject=work_subject(B, MODEL))
    with pytest.raises(Exception):  # noqa: B017 - the refused API call times out
        await worker_a.js.add_consumer(WORK_STREAM, config=snoop)
    assert await worker_a.refused(f"CREATE.{WORK_STREAM}")  # either create API
    worker_a.errors.clear()
    await worker_a.nc.publish(f"$JS.API.STREAM.DELETE.{WORK_STREAM}", b"")
    assert await worker_a.refused("$JS.API.STREAM.DELETE")
    worker_a.errors.clear()
    await worker_a.nc.publish(
        f"$JS.API.CONSUMER.DELETE.{WORK_STREAM}.{work_consumer(A, MODEL)}", b""
    )
    assert await worker_a.refused("$JS.API.CONSUMER.DELETE")
    assert await operator.js.consumer_info(WORK_STREAM, work_consumer(A, MODEL))
    with pytest.raises(NotFoundError):
        await operator.js.consumer_info(WORK_STREAM, "snoop")
