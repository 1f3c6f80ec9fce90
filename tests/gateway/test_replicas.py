"""Two gateway processes on one NATS limit like one gateway (rate limits in NATS KV).

Two real ``editflow gateway run`` processes share a KV bucket on a real
nats-server (with MinIO: what a gateway needs, no control plane). The client
address comes from ``X-Forwarded-For`` (loopback is a trusted proxy here),
so every test is its own client and the processes are started once. Edits
go to streams no operator consumes. The NATS-down test is last: it stops and
restarts the module's nats-server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from collections.abc import Iterator

import httpx
import pytest

from editflow.devstack.procs import wait_until
from editflow.devstack.stack import LocalStack
from tests.gateway.servers import GatewayServer, isolated_events, running_gateway

pytestmark = [pytest.mark.platform, pytest.mark.slow]

LIMIT = 6
#: A literal public address: the real gateway resolves names, and this machine has no DNS.
EDIT = {"image_url": "https://93.184.215.14/files/poster.png", "prompt": "把背景换成海边日落"}


@pytest.fixture(scope="module")
def replicas(nats_minio: LocalStack, tmp_path_factory) -> Iterator[tuple[GatewayServer, ...]]:
    env = {
        **isolated_events(),
        "EDITFLOW_EVENTS__STORAGE": "file",  # the bucket survives the NATS restart below
        "EDITFLOW_GATEWAY__RATE_LIMIT_PER_MINUTE": str(LIMIT),
        "EDITFLOW_GATEWAY__RATE_LIMIT_BUCKET": f"gwreplicas_{uuid.uuid4().hex[:8]}",
        "EDITFLOW_GATEWAY__TRUSTED_PROXIES": '["127.0.0.1/32"]',
    }
    workdir = tmp_path_factory.mktemp("replicas")
    with (
        running_gateway(nats_minio, workdir, **env) as a,
        running_gateway(nats_minio, workdir, **env) as b,
    ):
        yield a, b


def new_client() -> str:
    """A client address of its own (documentation range), so each test starts at zero."""
    return str(ipaddress.IPv6Address(f"2001:db8::{uuid.uuid4().hex[:4]}"))


def submit(gw: GatewayServer, client: str, body: dict | None = None) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1/edits",
        json=EDIT if body is None else body,
        headers={**gw.auth, "X-Forwarded-For": client},
        timeout=30,
    )


def test_the_limit_counts_requests_to_both_replicas(replicas) -> None:
    a, b = replicas
    client = new_client()
    statuses = [submit((a, b)[i % 2], client).status_code for i in range(LIMIT)]
    assert statuses == [202] * LIMIT
    for gw in (a, b):
        refused = submit(gw, client)
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 61
        assert gw.metric("editflow_gateway_rate_limit_shared") == 1.0
    # Another client is not affected.
    assert submit(b, new_client()).status_code == 202


async def test_concurrent_bursts_on_both_replicas_never_exceed_the_limit(replicas) -> None:
    """30 submissions at once, half to each replica: exactly LIMIT pass the limiter
    (the body is refused by validation, 422, after the limiter counted it)."""
    client = new_client()
    async with httpx.AsyncClient(timeout=60) as http:

        async def one(gw: GatewayServer) -> int:
            resp = await http.post(
                f"{gw.url}/v1/edits", json={}, headers={**gw.auth, "X-Forwarded-For": client}
            )
            return resp.status_code

        statuses = await asyncio.gather(*(one(replicas[i % 2]) for i in range(30)))
    assert statuses.count(422) == LIMIT, statuses
    assert statuses.count(429) == 30 - LIMIT


def test_each_rate_limited_client_is_logged_once_not_per_request(replicas) -> None:
    a, _ = replicas
    client = new_client()
    start = a.log_length()
    accepted = [submit(a, client).json()["id"] for _ in range(LIMIT)]
    assert [submit(a, client).status_code for _ in range(3)] == [429] * 3

    def lines() -> list[dict]:
        return [r for r in a.log_lines(start) if r.get("client_ip") == client]

    wait_until(lambda: len(lines()) >= LIMIT + 1, timeout=10, what="the decision lines")
    mine = lines()
    assert [r["edit_id"] for r in mine if r["msg"] == "edit accepted"] == accepted
    limited = [r for r in mine if r["msg"] == "client rate limited"]
    assert len(limited) == 1 and limited[0]["limit"] == "submit"
    assert limited[0]["per_minute"] == LIMIT
    loggers = {r["logger"] for r in a.log_lines(start)}
    assert not loggers & {"uvicorn.access", "httpx", "httpcore"}, loggers


def test_while_nats_is_down_each_replica_limits_alone_then_sharing_resumes(
    replicas, nats_minio: LocalStack
) -> None:
    """Documented fallback: without NATS each replica counts on its own (it remembers
    its own requests), so a client gets at most the limit from each; once NATS is back
    the replicas share one count again."""
    a, b = replicas
    nats = nats_minio.nats
    assert nats is not None
    client = new_client()
    assert [submit(gw, client).status_code for gw in (a, b, a, b)] == [202] * 4
    start = a.log_length()
    nats.stop()
    try:
        # Validation refuses the empty body (422) without needing NATS; the limiter decides first.
        # A has seen 2 of this client's requests itself: LIMIT - 2 more, then 429.
        alone = [submit(a, client, body={}).status_code for _ in range(LIMIT - 1)]
        assert alone == [422] * (LIMIT - 2) + [429]
        alone_b = [submit(b, client, body={}).status_code for _ in range(LIMIT - 1)]
        assert alone_b == [422] * (LIMIT - 2) + [429]
        for gw in (a, b):
            assert gw.metric("editflow_gateway_rate_limit_shared") == 0.0
        lines = a.log_lines(start)
        fallbacks = [r for r in lines if r["msg"].startswith("rate limits are counted")]
        assert len(fallbacks) == 1 and fallbacks[0]["level"] == "warning"
    finally:
        nats.start_process()

    def shared_again(gw: GatewayServer) -> bool:
        # Any API call decides through the limiter; a read is the cheapest.
        httpx.get(f"{gw.url}/v1/edits/none", headers={**gw.auth, "X-Forwarded-For": new_client()})
        return gw.metric("editflow_gateway_rate_limit_shared") == 1.0

    for gw in (a, b):
        wait_until(lambda gw=gw: shared_again(gw), timeout=60, what="rate limits shared again")
    assert any(r["msg"] == "rate limits are shared again" for r in a.log_lines(start))
    fresh = new_client()
    statuses = [submit((a, b)[i % 2], fresh, body={}).status_code for i in range(LIMIT + 2)]
    assert statuses == [422] * LIMIT + [429, 429]
