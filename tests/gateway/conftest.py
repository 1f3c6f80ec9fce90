"""Gateway test fixtures: the app on in-memory stand-ins (units) and as a real server (stack).

``api(...)`` builds the FastAPI app with :mod:`.fakes` for the bus and S3 and
returns a ``TestClient`` (requests come from the peer ``client_ip``);
``gateway_server(...)`` (in :mod:`.servers`) runs ``editflow gateway run`` on
a free loopback port against the session's NATS and MinIO.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from editflow.core.settings import GatewaySettings, Settings
from editflow.core.urlguard import HostNotFound, IPAddress, LookupFailed
from editflow.devstack.stack import LocalStack
from editflow.gateway.app import create_app
from tests.gateway.fakes import MemoryBus, MemoryStore

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OA_ORIGIN = "https://oa.example.com"


#: What the in-process app's DNS answers (the test machine has none): every name is a public
#: address, except ``.invalid`` names, which do not exist (as RFC 6761 promises), and
#: ``.dns-down.test`` names, whose lookup fails temporarily. The real
#: gateway process in tests/gateway/test_refusals.py uses the system resolver instead.
STAND_IN_ADDRESS = ipaddress.ip_address("93.184.215.14")


async def stand_in_dns(host: str, port: int) -> list[IPAddress]:
    if host.rstrip(".").endswith(".invalid"):
        raise HostNotFound(f"the host {host} does not exist (stand-in DNS)")
    if host.rstrip(".").endswith(".dns-down.test"):
        raise LookupFailed(f"DNS lookup of {host} failed temporarily (stand-in DNS)")
    return [STAND_IN_ADDRESS]


@dataclass
class Api:
    client: TestClient
    bus: MemoryBus
    store: MemoryStore
    settings: Settings

    def post_edit(self, body: dict[str, Any], **headers: str) -> Any:
        return self.client.post("/v1/edits", json=body, headers={**AUTH, **headers})


@pytest.fixture
def api() -> Iterator[Callable[..., Api]]:
    """``api(client_ip="10.1.2.3", store=..., **gateway_settings)`` -> a started ``Api``."""
    opened: list[TestClient] = []

    def make(
        *,
        client_ip: str = "203.0.113.7",
        bus: MemoryBus | None = None,
        store: MemoryStore | None = None,
        **gateway: Any,
    ) -> Api:
        values: dict[str, Any] = {
            "token": TOKEN,
            "cors_origins": [OA_ORIGIN],
            "rate_limit_per_minute": 1000,
            "wait_timeout_seconds": 2,
            **gateway,
        }
        settings = Settings(gateway=GatewaySettings(**values))
        bus = bus or MemoryBus()
        store = store or MemoryStore()
        client = TestClient(
            create_app(settings, bus=bus, store=store, resolve=stand_in_dns),
            client=(client_ip, 50000),
            raise_server_exceptions=False,
        )
        client.__enter__()
        opened.append(client)
        return Api(client=client, bus=bus, store=store, settings=settings)

    yield make
    for client in opened:
        client.__exit__(None, None, None)


EDIT = {"image_url": "https://oa.example.com/files/poster.png", "prompt": "把背景换成海边日落"}


def assert_problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    """An RFC 9457 problem document with editflow's members."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status and body["code"] == code, body
    assert body["type"] == f"urn:editflow:problem:{code}"
    assert body["title"] and body["detail"] and isinstance(body["retriable"], bool)
    return body


@pytest.fixture(scope="session")
def nats_minio() -> Iterator[LocalStack]:
    """NATS and MinIO only: what a gateway process needs (no control plane)."""
    with LocalStack(kube=False) as running:
        yield running


@pytest.fixture(scope="session")
def gateway_server(operator, stack, tmp_path_factory):
    """The gateway as deployed: a uvicorn process in front of the operator's NATS and MinIO."""
    from tests.gateway.servers import running_gateway

    with running_gateway(stack, tmp_path_factory.mktemp("gateway")) as server:
        yield server
