"""Each role's NATS user, as the chart configures it, against a real nats-server.

Two servers are started from the chart's own output: the bundled NATS's configuration (its
ConfigMap, passwords from the chart's Secret through the environment variables it names) and
a server that includes the `authorization.conf` the chart writes for an operator's own NATS.
On each, every role does its real work with editflow's code (the operator provisions its
streams and ledger, the gateway its rate-limit bucket, the OA publisher publishes an approval,
a warm worker takes work and answers), and what a role must not do is refused by the server:
a worker cannot publish approvals or read them, the publisher cannot forge completions, the
gateway cannot write the operator's ledger.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest

from editflow.core.settings import EventsSettings
from editflow.events.kvlimits import LimitsBucket, hit, provision_bucket
from editflow.events.topology import Topology, provision
from editflow.events.worker_contract import WORK_STREAM, result_subject, work_consumer, work_subject
from editflow.events.workqueue import ensure_work_consumer
from tests.chart.chartkit import NAMESPACE, documents, render_text
from tests.chart.natskit import Role, bundled_server, connect_as, secret_value, start_nats

ROLES = ("operator", "gateway", "worker", "publisher")
TOPOLOGY = Topology(EventsSettings())
RATE_BUCKET = "editflow_gateway_rate_limits"
MODEL = "longcat-image-edit"


@dataclass
class Server:
    url: str
    users: dict[str, str]  # role -> user name (the worker: the release namespace's)
    passwords: dict[str, str]  # role -> password


def _password_key(role: str) -> str:
    return f"worker-{NAMESPACE}-password" if role == "worker" else f"{role}-password"


@pytest.fixture(params=["bundled", "own-nats"])
def server(request, tmp_path: Path) -> Iterator[Server]:
    """A nats-server the chart configured: the bundled one, or one including authorization.conf."""
    users = {role: f"editflow-{role}" for role in ROLES}
    users["worker"] = f"editflow-worker-{NAMESPACE}"  # one worker user per namespace
    if request.param == "bundled":
        for url, objs in bundled_server(tmp_path, {}):
            passwords = {r: secret_value(objs, "editflow-nats", _password_key(r)) for r in ROLES}
            assert len(set(passwords.values())) == len(ROLES)  # one password each
            yield Server(url, users, passwords)
        return
    objs = documents(render_text(tmp_path, {}).stdout)
    config = (
        f"port: 4222\nhttp_port: 8222\njetstream {{\n  store_dir: {tmp_path / 'js'}\n}}\n"
        "include ./authorization.conf\n"
    )
    files = {"authorization.conf": secret_value(objs, "editflow-nats", "authorization.conf")}
    passwords = {r: secret_value(objs, "editflow-nats", _password_key(r)) for r in ROLES}
    assert len(set(passwords.values())) == len(ROLES)
    for url in start_nats(tmp_path, config, {}, files):
        yield Server(url, users, passwords)


@pytest.fixture
async def roles(server: Server) -> AsyncIterator[dict[str, Role]]:
    connected: dict[str, Role] = {}
    try:
        for role in ROLES:
            connected[role] = await connect_as(
                server.url, server.users[role], server.passwords[role]
            )
        yield connected
    finally:
        for role in connected.values():
            await role.nc.close()


async def approvals_stored(operator: Role) -> int:
    return (await operator.js.stream_info(TOPOLOGY.approvals_stream)).state.messages


async def test_a_wrong_password_is_refused(server: Server) -> None:
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(
            server.url, user=server.users["worker"], password="guess", allow_reconnect=False,
            max_reconnect_attempts=0,
        )  # fmt: skip


async def test_each_role_does_its_work_and_nothing_else(roles: dict[str, Role]) -> None:
    operator, gateway, worker, publisher = (roles[r] for r in ROLES)

    # The operator provisions every stream, its consumers and the approval ledger.
    await provision(operator.js, TOPOLOGY)
    ledger = await operator.js.key_value(TOPOLOGY.ledger_bucket)
    await ledger.put("e-1", b'{"state": "created"}')
    assert (await ledger.get("e-1")).value == b'{"state": "created"}'

    # The OA publisher publishes an approval; the operator pulls it with its durable consumer.
    ack = await publisher.js.publish(TOPOLOGY.approval_subject, b"{}")
    assert ack.stream == TOPOLOGY.approvals_stream
    sub = await operator.js.pull_subscribe_bind(TOPOLOGY.consumer, stream=TOPOLOGY.approvals_stream)
    (message,) = await sub.fetch(1, timeout=5)
    await message.ack()

    # The gateway creates its shared rate-limit bucket and counts in it.
    kv, _ = await provision_bucket(gateway.js, LimitsBucket(name=RATE_BUCKET))
    assert await hit(kv, "client.a", limit=5, window=60, timeout=5) == 0.0

    # Refused: a worker publishing or reading approvals.
    before = await approvals_stored(operator)
    await worker.nc.publish(TOPOLOGY.approval_subject, b"{}")
    assert await worker.refused(TOPOLOGY.approval_subject)
    await worker.nc.publish(TOPOLOGY.withdraw_subject, b"{}")
    assert await worker.refused(TOPOLOGY.withdraw_subject)
    await worker.nc.publish(f"$JS.API.CONSUMER.CREATE.{TOPOLOGY.approvals_stream}", b"{}")
    assert await worker.refused(f"$JS.API.CONSUMER.CREATE.{TOPOLOGY.approvals_stream}")
    assert await approvals_stored(operator) == before

    # Refused: the publisher forging a completion, deleting a stream, writing the ledger.
    forged = TOPOLOGY.completion_subject("e-1")
    await publisher.nc.publish(forged, b"{}")
    assert await publisher.refused(forged)
    await publisher.nc.publish(f"$JS.API.STREAM.DELETE.{TOPOLOGY.approvals_stream}", b"")
    assert await publisher.refused("$JS.API.STREAM.DELETE")
    assert (await operator.js.stream_info(TOPOLOGY.completions_stream)).state.messages == 0

    # Refused: the gateway writing the operator's ledger; the worker subscribing to approvals.
    await gateway.nc.publish(f"$KV.{TOPOLOGY.ledger_bucket}.e-1", b"{}")
    assert await gateway.refused(f"$KV.{TOPOLOGY.ledger_bucket}")
    await worker.nc.subscribe(TOPOLOGY.approval_subject)
    assert await worker.refused("Subscription")
    assert (await ledger.get("e-1")).value == b'{"state": "created"}'


async def test_no_role_reads_another_roles_replies(server: Server, roles: dict[str, Role]) -> None:
    """Issue 20 §2: every role had `_INBOX.>`, so a worker received every pull delivery, KV
    read and JetStream API reply in the account. Now each subscribes to its own prefix only."""
    worker, publisher = roles["worker"], roles["publisher"]
    for theirs in ("_INBOX.>", f"_INBOX_{server.users['operator']}.>", "_INBOX_x.>"):
        worker.errors.clear()
        await worker.nc.subscribe(theirs)
        assert await worker.refused("Subscription"), theirs
    publisher.errors.clear()
    await publisher.nc.subscribe(f"_INBOX_{server.users['gateway']}.>")
    assert await publisher.refused("Subscription")
    # Its own inbox works: a JetStream API call gets its answer.
    assert (await publisher.js.account_info()) is not None


async def test_a_warm_worker_takes_work_and_answers(roles: dict[str, Role]) -> None:
    """The warm path: the operator makes the work stream and the pool's consumer (a worker
    may not), publishes work; the worker pulls it and publishes the result."""
    operator, worker = roles["operator"], roles["worker"]
    await ensure_work_consumer(operator.js, NAMESPACE, MODEL, ack_wait=30, max_deliveries=2)
    results = await operator.nc.subscribe(result_subject(NAMESPACE, "edit-1"))
    await operator.js.publish(work_subject(NAMESPACE, MODEL), b'{"edit_id": "edit-1"}')
    pull = await worker.js.pull_subscribe_bind(work_consumer(NAMESPACE, MODEL), stream=WORK_STREAM)
    (work,) = await pull.fetch(1, timeout=5)
    await worker.nc.publish(result_subject(NAMESPACE, "edit-1"), b'{"status": "succeeded"}')
    await work.ack()
    assert (await results.next_msg(timeout=5)).data == b'{"status": "succeeded"}'
    info = await operator.js.consumer_info(WORK_STREAM, work_consumer(NAMESPACE, MODEL))
    assert info.num_pending == 0 and info.num_ack_pending == 0  # the ack was accepted
