"""The desk's NATS permissions (docs/desk.md), against the bundled nats-server the chart
configures: the operator writes each namespace's tickets, the gateway reads them, keeps its
claims and publishes review actions; the gateway cannot write a ticket, and the OA publisher
cannot publish a review action (a reviewer's identity is the gateway's to vouch for)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nats.js.errors import KeyNotFoundError

from editflow.core.settings import EventsSettings
from editflow.events.desk import bucket_name, claims_bucket_name
from editflow.events.topology import Topology, provision
from editflow.operator.desk import DeskPublisher
from tests.chart.chartkit import NAMESPACE
from tests.chart.natskit import bundled_server, connect_as, secret_value

TOPOLOGY = Topology(EventsSettings())


def needs_review() -> dict:
    return {
        "metadata": {"name": "ej-1", "namespace": NAMESPACE, "uid": "u-1"},
        "spec": {"prompt": "sky blue", "source": {"s3Key": f"uploads/{NAMESPACE}/a.png"}},
        "status": {"phase": "NeedsReview", "attempts": 3, "errorCode": "worker_exit"},
    }


@pytest.fixture
def server(tmp_path: Path):
    for url, objs in bundled_server(tmp_path, {}):
        passwords = {
            role: secret_value(objs, "editflow-nats", f"{role}-password")
            for role in ("operator", "gateway", "publisher")
        }
        yield url, passwords


async def test_the_desk_roles(server) -> None:
    url, passwords = server
    operator, gateway, publisher = [
        await connect_as(url, f"editflow-{role}", passwords[role])
        for role in ("operator", "gateway", "publisher")
    ]
    try:
        await provision(operator.js, TOPOLOGY)
        # The operator creates the namespace's desk bucket and writes a ticket.
        desk = DeskPublisher(operator.js, storage="memory")
        desk.update(needs_review())
        await desk.drain()
        assert await desk.load([NAMESPACE]) == 1

        # The gateway lists and reads it ...
        tickets = await gateway.js.key_value(bucket_name(NAMESPACE))
        assert await tickets.keys() == ["ej-1"]
        assert json.loads((await tickets.get("ej-1")).value)["lane"] == "needs_review"
        # ... keeps its claims (create, then update with the revision read) ...
        claims = await gateway.js.create_key_value(bucket=claims_bucket_name(NAMESPACE), history=1)
        revision = await claims.create("ej-1", b'{"reviewer": {"id": "r-1"}}')
        await claims.update("ej-1", b'{"reviewer": {"id": "r-1"}, "n": 2}', last=revision)
        # ... and publishes a review action into the approvals stream.
        ack = await gateway.js.publish(TOPOLOGY.review_action_subject, b"{}")
        assert ack.stream == TOPOLOGY.approvals_stream

        # Refused: the gateway writing a ticket; the OA publisher publishing a review action.
        await gateway.nc.publish(f"$KV.{bucket_name(NAMESPACE)}.ej-1", b"{}")
        assert await gateway.refused(f"$KV.{bucket_name(NAMESPACE)}")
        await publisher.nc.publish(TOPOLOGY.review_action_subject, b"{}")
        assert await publisher.refused(TOPOLOGY.review_action_subject)
        assert json.loads((await tickets.get("ej-1")).value)["name"] == "ej-1"

        # The operator deletes the ticket once the edit leaves the lane.
        desk.update({**needs_review(), "status": {"phase": "Succeeded"}})
        await desk.drain()
        with pytest.raises(KeyNotFoundError):
            await tickets.get("ej-1")
    finally:
        for role in (operator, gateway, publisher):
            await role.nc.close()
