"""Refuse before spending a GPU, at the gateway: a real ``editflow gateway run`` process.

Unsafe image URLs (metadata, loopback, private), hosts that do not exist (a
real NXDOMAIN from the system resolver for ``.invalid``), unsafe callbacks and
refused callback subjects are answered 422 at once, naming the field, and
nothing is published: the approvals stream stays as it was, so no EditJob and
no worker can follow. The legacy ``POST /edit`` body carries ``model``,
``steps``, ``guidance``, ``seed`` and ``usage``, validated; other fields are
ignored and named in one log line per request.

The gateway runs on stream names no operator consumes (``isolated_events``),
with no image allow-list (loopback is refused as on a cluster).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import httpx
import nats
import pytest

from editflow.devstack.procs import wait_until
from editflow.devstack.stack import LocalStack
from tests.gateway.conftest import assert_problem
from tests.gateway.servers import GatewayServer, isolated_events, running_gateway

pytestmark = [pytest.mark.platform, pytest.mark.slow]

TAG = uuid.uuid4().hex[:8]
APPROVALS = f"GW{TAG.upper()}_APPROVALS"
#: A literal public address: accepted without DNS (the test machine has none).
PUBLIC = "https://93.184.215.14/files/poster.png"


@pytest.fixture(scope="module")
def gateway(nats_minio: LocalStack, tmp_path_factory) -> Iterator[GatewayServer]:
    env = {
        **isolated_events(TAG),
        "EDITFLOW_WORKER__ALLOW_CIDRS": "[]",  # as on a cluster: loopback is not an image host
        "EDITFLOW_GATEWAY__WAIT_TIMEOUT_SECONDS": "1",
        # The real NXDOMAIN below comes from the system resolver, which now and then retries
        # for 5 s: a generous limit keeps that a verdict instead of a (correct) 503.
        "EDITFLOW_OPERATOR__DNS_TIMEOUT_SECONDS": "20",
    }
    with running_gateway(nats_minio, tmp_path_factory.mktemp("refusals"), **env) as server:
        yield server


def published(stack: LocalStack) -> int:
    """Approval events on the gateway's stream so far."""

    async def count() -> int:
        nc = await nats.connect(stack.nats_url)
        try:
            return (await nc.jetstream().stream_info(APPROVALS)).state.messages
        finally:
            await nc.close()

    return asyncio.run(count())


def approvals(stack: LocalStack) -> list[dict]:
    async def read() -> list[dict]:
        nc = await nats.connect(stack.nats_url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(APPROVALS)
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                out.append(json.loads((await js.get_msg(APPROVALS, seq)).data))
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


def field_of(problem: dict) -> list[str | None]:
    return [e.get("field") for e in problem.get("errors", [])]


REFUSED_IMAGES = {
    "http://169.254.169.254/latest/meta-data/": "unsafe_source",
    "http://127.0.0.1:9000/editflow/results/a.png": "unsafe_source",
    "http://10.0.0.7/poster.png": "unsafe_source",
    "https://[::ffff:172.16.0.1]/poster.png": "unsafe_source",
    "https://no-such-host.invalid/poster.png": "host_not_found",
}


@pytest.mark.parametrize("endpoint", ["/edit", "/v1/edits"])
@pytest.mark.parametrize("url", list(REFUSED_IMAGES))
def test_unsafe_image_urls_are_refused_at_once_and_nothing_is_published(
    gateway: GatewayServer, nats_minio: LocalStack, endpoint: str, url: str
) -> None:
    before = published(nats_minio)
    resp = httpx.post(
        f"{gateway.url}{endpoint}",
        json={"image_url": url, "prompt": "make it blue"},
        headers=gateway.auth,
        timeout=30,
    )
    problem = assert_problem(resp, 422, REFUSED_IMAGES[url])
    assert field_of(problem) == ["image_url"]
    assert problem["detail"].startswith("image_url: ")
    assert published(nats_minio) == before


@pytest.mark.parametrize(
    ("extra", "field", "why"),
    [
        ({"callback_url": "https://127.0.0.1:8443/hook"}, "callback_url", "loopback"),
        ({"callback_url": "https://192.168.0.10/hook"}, "callback_url", "private"),
        ({"callback_url": "https://169.254.169.254/hook"}, "callback_url", "link-local"),
        ({"callback_subject": "_INBOX.x1"}, "callback_subject", "system subject"),
        ({"callback_subject": "$JS.API.STREAM.LIST"}, "callback_subject", "system subject"),
        ({"callback_subject": "oa.approvals.other"}, "callback_subject", "callback prefix"),
    ],
)
def test_unsafe_callbacks_are_refused_naming_the_field(
    gateway: GatewayServer, nats_minio: LocalStack, extra: dict, field: str, why: str
) -> None:
    before = published(nats_minio)
    resp = httpx.post(
        f"{gateway.url}/v1/edits",
        json={"image_url": PUBLIC, "prompt": "make it blue", **extra},
        headers=gateway.auth,
        timeout=30,
    )
    problem = assert_problem(resp, 422, resp.json().get("code", "?"))
    assert field_of(problem) == [field]
    assert why in problem["detail"], problem["detail"]
    assert published(nats_minio) == before


LEGACY_BAD = [
    (b'"steps": -5', "steps"),
    (b'"steps": 5.5', "steps"),
    (b'"guidance": NaN', "guidance"),
    (b'"guidance": 31', "guidance"),
    (b'"model": "../../etc"', "model"),
    (b'"seed": -1', "seed"),
    (b'"usage": "../x"', "usage"),
]


@pytest.mark.parametrize(("member", "field"), LEGACY_BAD)
def test_each_bad_legacy_field_is_a_422_naming_it(
    gateway: GatewayServer, nats_minio: LocalStack, member: bytes, field: str
) -> None:
    before = published(nats_minio)
    body = b'{"image_url": "%s", "prompt": "make it blue", %s}' % (PUBLIC.encode(), member)
    resp = httpx.post(
        f"{gateway.url}/edit",
        content=body,
        headers={**gateway.auth, "Content-Type": "application/json"},
        timeout=30,
    )
    problem = assert_problem(resp, 422, "invalid_input")
    assert field_of(problem) == [field], problem
    assert published(nats_minio) == before


def test_legacy_extension_fields_reach_the_event_and_unknown_ones_are_logged(
    gateway: GatewayServer, nats_minio: LocalStack
) -> None:
    start = gateway.log_length()
    key = f"legacy-{uuid.uuid4().hex[:8]}"
    resp = httpx.post(
        f"{gateway.url}/edit",
        json={
            "image_url": PUBLIC,
            "prompt": "make it blue",
            "model": "longcat-image-edit-turbo",
            "steps": 8,
            "guidance": 4.5,
            "seed": 7,
            "usage": "wechat-article",
            "callback": "https://oa.example.com/old-field",
            "api_version": 1,
        },
        headers={**gateway.auth, "Idempotency-Key": key},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    edit_id = resp.json()["id"]  # timed out waiting (no operator here): the edit continues
    (event,) = [e for e in approvals(nats_minio) if e["id"] == edit_id]
    data = event["data"]
    assert data["model"] == "longcat-image-edit-turbo" and data["usage"] == "wechat-article"
    assert data["generation"] == {"steps": 8, "guidance_scale": 4.5, "seed": 7}
    assert "callback" not in data  # an unknown legacy field is never a callback

    def ignored_lines() -> list[dict]:
        return [
            r for r in gateway.log_lines(start) if r.get("msg") == "legacy request fields ignored"
        ]

    wait_until(lambda: ignored_lines(), timeout=10, what="the ignored-fields log line")
    (line,) = ignored_lines()  # one line per request
    assert line["fields"] == ["api_version", "callback"]


def test_a_temporary_dns_failure_is_a_503_to_retry_not_a_verdict(api) -> None:
    """(In-process app: the stand-in DNS of tests/gateway/conftest.py fails this lookup.)"""
    gw = api()
    resp = gw.post_edit({"image_url": "https://img.dns-down.test/a.png", "prompt": "make it blue"})
    problem = assert_problem(resp, 503, "dns_unavailable")
    assert problem["retriable"] is True and resp.headers["Retry-After"] == "5"
    assert "image_url" in problem["detail"]
    assert gw.bus.events == {}
