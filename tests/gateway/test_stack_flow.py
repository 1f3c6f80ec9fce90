"""The gateway on the real platform: HTTP -> approval event -> operator -> GPU Job -> MinIO.

The gateway runs as ``editflow gateway run`` (uvicorn, loopback, free port)
in front of the session's NATS JetStream and MinIO; the operator fixture runs
``editflow operator run`` with the tiny LongCat model, so every edit here is
a real Job whose worker writes a real PNG to MinIO.
"""

from __future__ import annotations

import asyncio
import threading
import uuid

import httpx
import pytest

from editflow.core.settings import EventsSettings, NatsSettings
from editflow.devstack.procs import wait_until
from editflow.events.connection import connect
from editflow.events.dlq import dead_letter, delete_dead_letter
from editflow.events.topology import Topology
from tests.gateway.servers import isolated_events, running_gateway
from tests.harness import NAMESPACE

pytestmark = [pytest.mark.platform, pytest.mark.slow]

IMAGE_FORMATS = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


def downloaded_image(url: str) -> bytes:
    resp = httpx.get(url, timeout=30)
    assert resp.status_code == 200, resp.text[:300]
    assert resp.content.startswith(IMAGE_FORMATS)
    return resp.content


def wait_done(gw, edit_id: str, timeout: float = 300) -> dict:
    seen: dict = {}

    def done() -> bool:
        resp = httpx.get(f"{gw.url}/v1/edits/{edit_id}", headers=gw.auth, timeout=10)
        seen.update(resp.json())
        return seen.get("status") != "pending"

    try:
        wait_until(done, timeout=timeout, what=f"edit {edit_id} to finish", interval=0.5)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; last view: {seen}") from None
    return seen


def editjobs_with_prompt(operator, prompt: str) -> list[dict]:
    items = operator.api.get(f"/apis/editflow.io/v1alpha1/namespaces/{NAMESPACE}/editjobs")
    return [ej for ej in items["items"] if ej["spec"]["prompt"] == prompt]


def test_first_deployment_client_flow(gateway_server, operator, image_host) -> None:
    """POST /edit with a Bearer token, wait, status success, result_url downloadable."""
    resp = httpx.post(
        f"{gateway_server.url}/edit",
        json={"image_url": image_host.url("red.png"), "prompt": "make the red square blue"},
        headers=gateway_server.auth,
        timeout=330,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "success", body
    assert body["error"] is None and body["cost_time"] > 0
    downloaded_image(body["result_url"])
    # It went the event path: one EditJob named after the approval event id.
    ej = operator.editjob(f"ej-{body['id']}")
    assert ej["status"]["phase"] == "Succeeded"
    assert ej["spec"]["oa"]["eventId"] == body["id"]


def test_async_edit_then_poll_until_done(gateway_server, image_host) -> None:
    gw = gateway_server
    with gw.client(headers=gw.auth) as http:
        resp = http.post(
            "/v1/edits",
            json={
                "image_url": image_host.url("red.png"),
                "template": {
                    "id": "change-colour",
                    "params": {"object": "square", "colour": "green"},
                    "lang": "en",
                },
                "usage": "display-board",
                "parameters": {"steps": 2, "seed": 7},
            },
        )
        assert resp.status_code == 202, resp.text
        created = resp.json()
        assert created["status"] == "pending"
        assert created["prompt"] == "Change the colour of the square to green"
        done = wait_done(gw, created["id"])
        assert done["status"] == "success", done
        assert done["result_key"].endswith(".png") and done["attempts"] == 1
        downloaded_image(done["result_url"])
        result = http.get(f"/v1/edits/{created['id']}/result").json()
        assert result["result_key"] == done["result_key"]
        downloaded_image(result["result_url"])
        redirect = http.get(f"/v1/edits/{created['id']}/result", params={"redirect": "true"})
        assert redirect.status_code == 307
        downloaded_image(redirect.headers["location"])


def test_failed_edit_is_reported_with_its_reason(gateway_server, image_host) -> None:
    gw = gateway_server
    resp = httpx.post(
        f"{gw.url}/edit",
        json={"image_url": image_host.url("notes.txt"), "prompt": "make it blue"},
        headers=gw.auth,
        timeout=330,
    )
    body = resp.json()
    assert body["status"] == "failed" and body["result_url"] is None, body
    assert body["error"]
    view = httpx.get(f"{gw.url}/v1/edits/{body['id']}", headers=gw.auth).json()
    assert view["status"] == "failed" and view["error"]["retriable"] is False


def test_retried_post_with_the_same_idempotency_key_runs_one_edit(
    gateway_server, operator, image_host, stack, tmp_path
) -> None:
    gw = gateway_server
    prompt = f"make the red square blue ({uuid.uuid4().hex[:8]})"
    body = {"image_url": image_host.url("red.png"), "prompt": prompt}
    key = {"Idempotency-Key": f"oa-retry-{uuid.uuid4()}"}
    ids: list[str] = []

    def post() -> None:
        resp = httpx.post(f"{gw.url}/v1/edits", json=body, headers={**gw.auth, **key}, timeout=30)
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["id"])

    threads = [threading.Thread(target=post) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    post()
    # A restarted gateway (a new process, nothing in memory) still knows the key.
    with running_gateway(stack, tmp_path) as restarted:
        resp = httpx.post(
            f"{restarted.url}/v1/edits", json=body, headers={**restarted.auth, **key}, timeout=30
        )
        assert resp.headers["idempotent-replayed"] == "true"
        ids.append(resp.json()["id"])
    assert len(ids) == 5 and len(set(ids)) == 1
    done = wait_done(gw, ids[0])
    assert done["status"] == "success", done
    editjobs = editjobs_with_prompt(operator, prompt)
    assert [ej["metadata"]["name"] for ej in editjobs] == [f"ej-{ids[0]}"]
    assert editjobs[0]["status"]["attempts"] == 1


def test_real_server_guards_auth_rate_limit_and_cors(stack, tmp_path) -> None:
    """On uvicorn itself: 401s, the 6th submission in a minute is 429 even with a forged
    X-Forwarded-For (no trusted proxy), and CORS preflights for the OA origin only."""
    env = {
        "EDITFLOW_GATEWAY__RATE_LIMIT_PER_MINUTE": "5",
        "EDITFLOW_GATEWAY__CORS_ORIGINS": '["https://oa.example.com"]',
        "EDITFLOW_GATEWAY__MAX_UPLOAD_BYTES": "20000",
        # Ready without the operator's streams, so this test also runs on its own.
        "EDITFLOW_GATEWAY__PROVISION_STREAMS": "true",
    }
    with running_gateway(stack, tmp_path, **env) as gw, gw.client() as http:
        assert http.post("/v1/edits", json={}).status_code == 401
        wrong = http.post("/v1/edits", json={}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.headers["content-type"] == "application/problem+json"
        big = http.post(
            "/v1/edits",
            content=b'{"prompt": "' + b"x" * 70_000 + b'"}',
            headers={**gw.auth, "Content-Type": "application/json"},
        )
        assert big.status_code == 413 and big.json()["code"] == "content_too_large"
        statuses = [
            http.post(
                "/v1/edits",
                json={"prompt": "no image: refused before anything is published"},
                headers={**gw.auth, "X-Forwarded-For": f"198.51.100.{i}"},
            ).status_code
            for i in range(3)
        ]
        # 401, 401, 413, 422, 422: five submissions; the sixth is refused.
        assert statuses == [422, 422, 429]
        limited = http.post("/edit", json={}, headers=gw.auth)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        preflight = {"Access-Control-Request-Method": "POST"}
        allowed = http.options(
            "/v1/edits", headers={"Origin": "https://oa.example.com", **preflight}
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://oa.example.com"
        denied = http.options("/v1/edits", headers={"Origin": "https://evil.example", **preflight})
        assert denied.status_code == 400
        assert "access-control-allow-origin" not in denied.headers
        upload = http.post(
            "/v1/uploads",
            files={"file": ("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 30_000, "image/png")},
            headers=gw.auth,
        )
        assert upload.status_code == 413


async def test_an_edit_whose_event_was_dead_lettered_is_reported_rejected(stack, tmp_path) -> None:
    """The DLQ on real JetStream: the gateway finds the dead letter of its event by id, and
    reports the edit pending again once the dead letter is replayed (removed)."""
    env = isolated_events()
    events = EventsSettings(
        **{k.removeprefix("EDITFLOW_EVENTS__").lower(): v for k, v in env.items() if "EVENTS" in k}
    )
    topology = Topology(events)
    with running_gateway(stack, tmp_path, **env) as gw:
        async with httpx.AsyncClient(base_url=gw.url, headers=gw.auth) as http:
            edit_id = (
                await http.post(
                    # A literal public address: the gateway resolves names (no DNS here).
                    "/v1/edits",
                    json={"image_url": "https://93.184.215.14/a.png", "prompt": "x"},
                )
            ).json()["id"]
            assert (await http.get(f"/v1/edits/{edit_id}")).json()["status"] == "pending"
            nc = await connect(NatsSettings(url=stack.nats_url))
            try:
                js = nc.jetstream()
                ack = await dead_letter(
                    js,
                    topology,
                    body=b"{}",
                    headers={"Nats-Msg-Id": edit_id},
                    subject=events.approval_subject,
                    reason="invalid_event.bad_signature",
                    message="signature does not match the configured key",
                    stream=events.approvals_stream,
                    stream_seq=1,
                )

                async def view() -> dict:
                    return (await http.get(f"/v1/edits/{edit_id}")).json()

                rejected = await _eventually(view, lambda v: v["status"] == "rejected")
                assert rejected["error"]["code"] == "invalid_event.bad_signature"
                assert "signature does not match" in rejected["error"]["message"]
                await delete_dead_letter(js, topology, ack.seq)
                await _eventually(view, lambda v: v["status"] == "pending")
            finally:
                await nc.close()


async def _eventually(fetch, ok, timeout: float = 20.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await fetch()
        if ok(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out; last: {value}")
        await asyncio.sleep(0.2)
