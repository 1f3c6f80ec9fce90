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

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import RetentionPolicy, StreamConfig

from editflow.core.settings import EventsSettings, NatsSettings
from editflow.devstack import installer
from editflow.devstack.procs import ManagedProcess, free_port, port_is_open, wait_until
from editflow.events.kvlimits import LimitsBucket, hit, provision_bucket
from editflow.events.topology import Topology, provision
from editflow.events.worker_contract import (
    WORK_STREAM,
    WORK_SUBJECT_PREFIX,
    result_subject,
    work_consumer,
    work_subject,
)
from tests.chart.chartkit import NAMESPACE, documents, find, render_text

ROLES = ("operator", "gateway", "worker", "publisher")
TOPOLOGY = Topology(EventsSettings())
RATE_BUCKET = "editflow_gateway_rate_limits"


@dataclass
class Server:
    url: str
    users: dict[str, str]  # role -> user name
    passwords: dict[str, str]  # role -> password


@dataclass
class Role:
    """A connection as one role, with the errors the server sent it."""

    nc: NATS
    errors: list[str] = field(default_factory=list)

    @property
    def js(self) -> Any:
        return self.nc.jetstream(timeout=3)

    async def refused(self, what: str) -> bool:
        """Whether the server answered a permissions violation naming ``what``."""
        await self.nc.flush()
        for _ in range(50):
            # nats-py lower-cases the server's -ERR line.
            if any(
                "permissions violation" in e.lower() and what.lower() in e.lower()
                for e in self.errors
            ):
                return True
            await asyncio.sleep(0.1)
        return False


def _secret(objs: list[dict[str, Any]], key: str) -> str:
    return base64.b64decode(find(objs, "Secret", "editflow-nats", NAMESPACE)["data"][key]).decode()


def _start(tmp_path: Path, config: str, env: dict[str, str]) -> Iterator[str]:
    port, monitor = free_port(), free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(config.replace("port: 4222", f"listen: 127.0.0.1:{port}", 1).replace(
        "http_port: 8222", f"http: 127.0.0.1:{monitor}", 1
    ))  # fmt: skip
    proc = ManagedProcess(
        "nats-roles", [str(installer.binary("nats-server")), "-c", str(conf)],
        log_path=tmp_path / "nats.log", env=env,
    )  # fmt: skip
    proc.start()
    try:
        wait_until(
            lambda: proc.ensure_running() or port_is_open(port), timeout=15, what="nats-server"
        )
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture(params=["bundled", "own-nats"])
def server(request, tmp_path: Path) -> Iterator[Server]:
    """A nats-server the chart configured: the bundled one, or one including authorization.conf."""
    store = tmp_path / "jetstream"
    users = {role: f"editflow-{role}" for role in ROLES}
    if request.param == "bundled":
        objs = documents(render_text(tmp_path, {"nats": {"bundled": {"enabled": True}}}).stdout)
        config = find(objs, "ConfigMap", "editflow-nats-config", NAMESPACE)["data"]["nats.conf"]
        config = config.replace("store_dir: /data", f"store_dir: {store}")
        passwords = {role: _secret(objs, f"{role}-password") for role in ROLES}
        env = {f"{role.upper()}_PASSWORD": passwords[role] for role in ROLES}
        env["POD_NAME"] = "editflow-nats-0"
    else:
        objs = documents(render_text(tmp_path, {}).stdout)
        (tmp_path / "authorization.conf").write_text(_secret(objs, "authorization.conf"))
        config = (
            f"port: 4222\nhttp_port: 8222\njetstream {{\n  store_dir: {store}\n}}\n"
            "include ./authorization.conf\n"
        )
        passwords = {role: _secret(objs, f"{role}-password") for role in ROLES}
        env = {}
    assert len(set(passwords.values())) == len(ROLES)  # one password each
    yield from (Server(url, users, passwords) for url in _start(tmp_path, config, env))


@pytest.fixture
async def roles(server: Server) -> AsyncIterator[dict[str, Role]]:
    connected: dict[str, Role] = {}
    try:
        for role in ROLES:
            errors: list[str] = []

            async def on_error(exc: Exception, errors: list[str] = errors) -> None:
                errors.append(str(exc))

            nc = await nats.connect(
                server.url,
                user=server.users[role],
                password=server.passwords[role],
                error_cb=on_error,
                allow_reconnect=False,
                # As editflow connects (events/connection.py): replies under the user's own
                # prefix, the only inboxes the chart lets it subscribe to.
                inbox_prefix=NatsSettings(user=server.users[role]).effective_inbox_prefix,
            )
            connected[role] = Role(nc, errors)
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
    """The warm path: the operator publishes work, a worker pulls it and publishes the result."""
    operator, worker = roles["operator"], roles["worker"]
    await worker.js.add_stream(
        StreamConfig(
            name=WORK_STREAM,
            subjects=[f"{WORK_SUBJECT_PREFIX}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
        )
    )
    results = await operator.nc.subscribe(result_subject("edits", "edit-1"))
    await operator.js.publish(work_subject("edits", "tiny"), b'{"edit_id": "edit-1"}')
    pull = await worker.js.pull_subscribe(
        work_subject("edits", "tiny"), work_consumer("edits", "tiny"), stream=WORK_STREAM
    )
    (work,) = await pull.fetch(1, timeout=5)
    await worker.nc.publish(result_subject("edits", "edit-1"), b'{"status": "succeeded"}')
    await work.ack()
    assert (await results.next_msg(timeout=5)).data == b'{"status": "succeeded"}'
