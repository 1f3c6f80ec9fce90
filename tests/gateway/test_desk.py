"""The designer's desk API against a real nats-server: queue, claims, actions and every refusal.

The gateway runs in-process (``TestClient``) with its real NATS :class:`Bus` and an in-memory
S3; the test plays the operator: it writes tickets into the read model
(``EDITFLOW_DESK_<ns>``) and reads the review actions the desk published from the approvals
stream. One nats-server for the module, fresh stream names per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import PIL.Image
import pytest
from fastapi.testclient import TestClient

from editflow.core.settings import GatewaySettings, NatsSettings, Settings, WorkerSettings
from editflow.devstack.stack import LocalStack
from editflow.events.desk import bucket_name, claims_bucket_name
from editflow.events.topology import Topology
from editflow.gateway.app import create_app
from editflow.gateway.claims import Claims, HeldByOther, NotClaimed
from editflow.gateway.reviewers import Reviewer
from tests.events.conftest import events_settings
from tests.gateway.conftest import AUTH, TOKEN, assert_problem
from tests.gateway.fakes import MemoryStore

LEI = {"token": "lei-token-0123456789", "name": "李雷", "id": "u-lei", "namespaces": ["design"]}
MEI = {"token": "mei-token-0123456789", "name": "韩梅梅", "id": "u-mei", "namespaces": ["design"]}
ZED = {"token": "zed-token-0123456789", "name": "Zed", "id": "u-zed", "namespaces": ["other"]}


def auth(who: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {who['token']}"}


@pytest.fixture(scope="module")
def nats_url() -> Iterator[str]:
    with LocalStack(kube=False, minio=False) as stack:
        assert stack.nats is not None
        yield stack.nats.url


def run(url: str, work: Callable[[Any], Any]) -> Any:
    """``work(js)`` on a connection of the test's own (the app's loop is another thread's)."""

    async def go() -> Any:
        nc = await nats.connect(url)
        try:
            return await work(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(go())


def ticket(name: str, lane: str, *, ago: float, ns: str = "design", **extra: Any) -> dict:
    since = datetime.now(UTC) - timedelta(seconds=ago)
    return {
        "namespace": ns,
        "name": name,
        "uid": f"uid-{name}",
        "lane": lane,
        "since": since.isoformat(),
        "phase": "NeedsReview" if lane == "needs_review" else "Succeeded",
        "reason": "quality_gate" if lane == "needs_review" else None,
        "department": "marketing",
        "usage": "wechat-article",
        "model": "longcat-image-edit",
        "instruction": "把背景换成海边日落",
        "applicant": {"id": "u-1", "name": "李雷"},
        "approvers": [{"id": "m-1", "name": "韩梅梅"}],
        "input_key": f"uploads/{ns}/ab/in.png",
        "results": [
            {"index": 1, "result_key": f"results/{ns}/{name}/attempt-1/1.png"},
            {"index": 2, "result_key": "results/other/x/attempt-1/1.png"},
        ],
        "attempts": [{"attempt": 1, "worker": "w-1", "error_code": "quality_gate", "log": ["x"]}],
        "gate": {"verdict": "fail", "figures": {"changed_fraction": 0.8}},
        **extra,
    }


def put_tickets(url: str, *tickets: dict) -> None:
    async def work(js: Any) -> None:
        for t in tickets:
            kv = await js.create_key_value(bucket=bucket_name(t["namespace"]), history=1)
            await kv.put(t["name"], json.dumps(t).encode())

    run(url, work)


def delete_ticket(url: str, ns: str, name: str) -> None:
    async def work(js: Any) -> None:
        await (await js.key_value(bucket_name(ns))).delete(name)

    run(url, work)


def fresh_buckets(url: str, *namespaces: str) -> None:
    """The module shares one nats-server: each test starts with empty desk buckets."""

    async def work(js: Any) -> None:
        for ns in namespaces:
            for name in (bucket_name(ns), claims_bucket_name(ns)):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_key_value(name)

    run(url, work)


@pytest.fixture
def desk(nats_url: str, tmp_path: Path) -> Iterator[Any]:
    fresh_buckets(nats_url, "design", "other")
    reviewers = tmp_path / "reviewers.json"
    reviewers.write_text(json.dumps([LEI, MEI, ZED]), encoding="utf-8")
    settings = Settings(
        nats=NatsSettings(url=nats_url),
        events=events_settings(),
        worker=WorkerSettings(max_pixels=64 * 64),
        gateway=GatewaySettings(
            token=TOKEN,
            provision_streams=True,
            rate_limit_shared=False,
            rate_limit_per_minute=1000,
            read_rate_limit_per_minute=10_000,
            max_upload_bytes=64 * 1024,
            desk_reviewers_file=str(reviewers),
            desk_waiting_seconds=3600,
        ),
    )
    store = MemoryStore()
    with TestClient(create_app(settings, store=store), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 20
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the gateway did not connect to NATS"
            time.sleep(0.05)
        client.store = store  # type: ignore[attr-defined]
        client.settings = settings  # type: ignore[attr-defined]
        yield client


def actions_published(client: Any) -> list[tuple[str, dict]]:
    """(Nats-Msg-Id, data) of every review action in the approvals stream."""
    topology = Topology(client.settings.events)

    async def work(js: Any) -> list[tuple[str, dict]]:
        sub = await js.pull_subscribe(
            topology.review_action_subject, stream=topology.approvals_stream
        )
        try:
            msgs = await sub.fetch(100, timeout=0.5)
        except nats.errors.TimeoutError:
            return []
        return [(m.headers["Nats-Msg-Id"], json.loads(m.data)["data"]) for m in msgs]

    return run(client.settings.nats.url, work)


def png(size: int = 8) -> bytes:
    out = io.BytesIO()
    PIL.Image.new("RGB", (size, size), "red").save(out, format="PNG")
    return out.getvalue()


def test_the_queue_has_three_lanes_oldest_first_with_filters_and_badges(desk: Any) -> None:
    url = desk.settings.nats.url
    put_tickets(
        url,
        ticket("ej-new", "needs_review", ago=60),
        ticket("ej-old", "needs_review", ago=7200),
        ticket("ej-flag", "flagged", ago=30, department="sales"),
        ticket("ej-sample", "sample", ago=10, usage="poster"),
        ticket("ej-theirs", "needs_review", ago=10, ns="other"),
    )
    body = desk.get("/v1/desk/tickets", headers=auth(LEI)).json()
    lanes = body["lanes"]
    assert {k: v["count"] for k, v in lanes.items()} == {
        "needs_review": 2,
        "flagged": 1,
        "sample": 1,
    }
    review = lanes["needs_review"]["tickets"]
    assert [t["name"] for t in review] == ["ej-old", "ej-new"]
    assert [t["overdue"] for t in review] == [True, False]
    assert body["filters"]["department"] == ["marketing", "sales"]
    sales = desk.get("/v1/desk/tickets?department=sales", headers=auth(LEI)).json()["lanes"]
    assert [sales[k]["count"] for k in ("needs_review", "flagged", "sample")] == [0, 1, 0]
    poster = desk.get("/v1/desk/tickets?usage=poster", headers=auth(LEI)).json()["lanes"]
    assert poster["sample"]["count"] == 1 and poster["needs_review"]["count"] == 0
    metrics = desk.get("/metrics").text
    assert 'editflow_desk_queue_depth{lane="needs_review",namespace="design"} 2.0' in metrics


def test_the_tenant_boundary_and_the_reviewer_identity_hold(desk: Any) -> None:
    put_tickets(desk.settings.nats.url, ticket("ej-1", "needs_review", ago=5))
    # Zed reviews "other" only: design's tickets are neither listed nor readable.
    zed = desk.get("/v1/desk/tickets", headers=auth(ZED)).json()["lanes"]
    assert all(lane["count"] == 0 for lane in zed.values())
    assert_problem(desk.get("/v1/desk/tickets/design/ej-1", headers=auth(ZED)), 403, "forbidden")
    assert_problem(
        desk.get("/v1/desk/tickets?namespace=design", headers=auth(ZED)), 403, "forbidden"
    )
    # Nor may Zed act there, not even by replaying an action id someone used.
    verdict = {"action_id": "act-zed-00001", "action": "verdict", "verdict": "poor"}
    acted = desk.post("/v1/desk/tickets/design/ej-1/actions", json=verdict, headers=auth(ZED))
    assert_problem(acted, 403, "forbidden")
    assert_problem(
        desk.post("/v1/desk/tickets/design/ej-1/claim", headers=auth(ZED)), 403, "forbidden"
    )
    # The OA token is no reviewer identity, and nor is a wrong token.
    assert_problem(desk.get("/v1/desk/tickets", headers=AUTH), 401, "unauthorized")
    assert_problem(desk.get("/v1/desk/me"), 401, "unauthorized")
    me = desk.get("/v1/desk/me", headers=auth(LEI)).json()
    assert me["reviewer"] == {"id": "u-lei", "name": "李雷"} and me["namespaces"] == ["design"]


def test_one_edit_presigns_only_keys_of_its_namespace(desk: Any) -> None:
    put_tickets(desk.settings.nats.url, ticket("ej-1", "needs_review", ago=5))
    body = desk.get("/v1/desk/tickets/design/ej-1", headers=auth(LEI)).json()
    assert body["input_url"].startswith("http://s3.test/editflow/uploads/design/")
    assert body["results"][0]["url"].startswith("http://s3.test/editflow/results/design/ej-1/")
    assert body["results"][1]["url"] is None  # another tenant's key is never signed
    assert body["actions"] == ["claim", "rerun", "send_back", "upload"]
    assert body["gate"]["figures"] == {"changed_fraction": 0.8} and body["holder"] is None
    assert_problem(
        desk.get("/v1/desk/tickets/design/ej-gone", headers=auth(LEI)), 410, "edit_finished"
    )


def test_a_claim_held_by_someone_else_is_refused_at_once_naming_them(desk: Any) -> None:
    put_tickets(desk.settings.nats.url, ticket("ej-1", "needs_review", ago=5))
    path = "/v1/desk/tickets/design/ej-1"
    held = desk.post(f"{path}/claim", headers=auth(LEI)).json()["holder"]
    assert held["reviewer"]["name"] == "李雷"
    assert desk.post(f"{path}/claim", headers=auth(LEI)).status_code == 200  # renewing
    refused = assert_problem(desk.post(f"{path}/claim", headers=auth(MEI)), 409, "claim_held")
    assert "李雷" in refused["detail"]
    assert_problem(desk.post(f"{path}/release", headers=auth(MEI)), 409, "claim_held")
    listed = desk.get("/v1/desk/tickets", headers=auth(MEI)).json()["lanes"]["needs_review"]
    assert listed["tickets"][0]["holder"]["reviewer"]["id"] == "u-lei"
    assert desk.post(f"{path}/release", headers=auth(LEI)).status_code == 200
    assert desk.post(f"{path}/claim", headers=auth(MEI)).status_code == 200
    assert 'editflow_desk_time_to_first_claim_seconds_count{lane="needs_review"} 1.0' in (
        desk.get("/metrics").text
    )


def test_claims_expire_and_races_are_settled_by_the_revision(nats_url: str) -> None:
    now = [datetime(2026, 12, 7, 6, 0, tzinfo=UTC)]
    lei = Reviewer("u-lei", "李雷", frozenset({"design"}))
    mei = Reviewer("u-mei", "韩梅梅", frozenset({"design"}))
    ns = f"claims-{time.time_ns()}"

    async def work(js: Any) -> None:
        claims = Claims(lambda: js, seconds=60, clock=lambda: now[0])
        (_, first) = await claims.claim(ns, "ej-1", lei)
        assert first
        with pytest.raises(HeldByOther, match="李雷"):
            await claims.claim(ns, "ej-1", mei)
        with pytest.raises(HeldByOther):
            await claims.require(ns, "ej-1", mei)
        now[0] += timedelta(seconds=61)  # Lei's claim expired: Mei takes it over
        assert await claims.holder(ns, "ej-1") is None
        with pytest.raises(NotClaimed):
            await claims.require(ns, "ej-1", lei)
        (taken, first) = await claims.claim(ns, "ej-1", mei)
        assert taken.reviewer.id == "u-mei" and not first
        # Two replicas racing for a fresh ticket: exactly one wins, the other hears who.
        results = await asyncio.gather(
            claims.claim(ns, "ej-2", lei),
            Claims(lambda: js, seconds=60, clock=lambda: now[0]).claim(ns, "ej-2", mei),
            return_exceptions=True,
        )
        assert sum(isinstance(r, HeldByOther) for r in results) == 1, results

    run(nats_url, work)


def test_actions_need_the_claim_the_lane_and_their_own_field(desk: Any) -> None:
    url = desk.settings.nats.url
    put_tickets(url, ticket("ej-1", "needs_review", ago=5), ticket("ej-s", "sample", ago=5))
    path = "/v1/desk/tickets/design/ej-1"
    rerun = {"action_id": "act-rerun-0001", "action": "rerun", "instruction": "把背景换成雪山"}
    assert_problem(desk.post(f"{path}/actions", json=rerun, headers=auth(LEI)), 409, "not_claimed")
    desk.post(f"{path}/claim", headers=auth(LEI))
    assert_problem(desk.post(f"{path}/actions", json=rerun, headers=auth(MEI)), 409, "claim_held")
    verdict = {"action_id": "act-verd-0001", "action": "verdict", "verdict": "poor"}
    wrong = assert_problem(
        desk.post(f"{path}/actions", json=verdict, headers=auth(LEI)), 409, "wrong_lane"
    )
    assert "needs_review" in wrong["detail"]
    bare = {"action_id": "act-rerun-0002", "action": "rerun"}
    missing = assert_problem(
        desk.post(f"{path}/actions", json=bare, headers=auth(LEI)), 422, "invalid_input"
    )
    assert "instruction" in json.dumps(missing["errors"])
    assert actions_published(desk) == []  # nothing half-done

    done = desk.post(f"{path}/actions", json=rerun, headers=auth(LEI)).json()
    assert done["already_done"] is False
    again = desk.post(f"{path}/actions", json=rerun, headers=auth(LEI)).json()  # a stale page
    assert again["already_done"] is True
    [(msg_id, data)] = actions_published(desk)
    assert msg_id == "act-rerun-0001"
    assert data["action"] == "rerun" and data["instruction"] == "把背景换成雪山"
    assert data["reviewer"] == {"id": "u-lei", "name": "李雷"} and data["editjob"] == "ej-1"

    desk.post("/v1/desk/tickets/design/ej-s/claim", headers=auth(MEI))
    good = {**verdict, "verdict": "poor", "better_instruction": "把天空换成晚霞"}
    ok = desk.post("/v1/desk/tickets/design/ej-s/actions", json=good, headers=auth(MEI))
    assert ok.status_code == 200, ok.text
    assert 'editflow_desk_sample_verdicts_total{lane="sample",verdict="poor"} 1.0' in (
        desk.get("/metrics").text
    )


def test_an_edit_that_finished_is_answered_410_and_nothing_is_published(desk: Any) -> None:
    url = desk.settings.nats.url
    put_tickets(url, ticket("ej-1", "needs_review", ago=5))
    path = "/v1/desk/tickets/design/ej-1"
    desk.post(f"{path}/claim", headers=auth(LEI))
    delete_ticket(url, "design", "ej-1")
    send_back = {"action_id": "act-back-0001", "action": "send_back", "message": "换一张清晰的图"}
    body = assert_problem(
        desk.post(f"{path}/actions", json=send_back, headers=auth(LEI)), 410, "edit_finished"
    )
    assert "finished" in body["detail"]
    assert_problem(desk.post(f"{path}/claim", headers=auth(LEI)), 410, "edit_finished")
    assert actions_published(desk) == []


def test_an_upload_must_be_an_image_within_the_limits_then_it_is_stored_and_published(
    desk: Any,
) -> None:
    put_tickets(desk.settings.nats.url, ticket("ej-1", "needs_review", ago=5))
    path = "/v1/desk/tickets/design/ej-1"
    desk.post(f"{path}/claim", headers=auth(LEI))

    def upload(data: bytes, action_id: str = "act-up-00001") -> Any:
        return desk.post(
            f"{path}/upload",
            data={"action_id": action_id},
            files={"file": ("fixed.png", data, "image/png")},
            headers=auth(LEI),
        )

    fake = assert_problem(upload(b"GIF89a but not really an image"), 422, "not_an_image")
    assert fake["errors"][0]["field"] == "file"
    assert_problem(upload(png(65)), 413, "content_too_large")  # 65x65 > max_pixels 64x64
    assert_problem(upload(b"\0" * (70 * 1024)), 413, "content_too_large")  # > max_upload_bytes
    assert desk.store.objects == {} and actions_published(desk) == []

    stored = upload(png()).json()
    key = "results/design/ej-1/review-act-up-00001/fixed.png"
    assert stored == {**stored, "result_key": key, "already_done": False}
    assert desk.store.objects[key][1] == "image/png"
    assert upload(png()).json()["already_done"] is True
    [(msg_id, data)] = actions_published(desk)
    assert msg_id == "act-up-00001" and data["action"] == "upload" and data["result_key"] == key


def test_the_desk_page_is_served_under_the_page_policy(desk: Any) -> None:
    page = desk.get("/desk")
    assert page.status_code == 200 and "/static/desk.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    script = desk.get("/static/desk.js").text
    assert all(f"lane_{lane}" in script for lane in ("needs_review", "flagged", "sample"))


def test_an_upload_lands_under_the_edit_s_own_output_prefix(desk: Any) -> None:
    custom = ticket("ej-2", "needs_review", ago=5)
    custom["results"] = [{"index": 1, "result_key": "results/design/campaign/ej-2/a-1/1.png"}]
    put_tickets(desk.settings.nats.url, custom)
    path = "/v1/desk/tickets/design/ej-2"
    desk.post(f"{path}/claim", headers=auth(LEI))
    stored = desk.post(
        f"{path}/upload",
        data={"action_id": "act-up-00002"},
        files={"file": ("版本 2.png", png(), "image/png")},
        headers=auth(LEI),
    ).json()
    assert stored["result_key"] == "results/design/campaign/ej-2/review-act-up-00002/___2.png"
