"""Edits through the API on in-memory NATS and S3: ids, idempotency, status, results, waiting."""

from __future__ import annotations

import asyncio
import threading
import time

from editflow.events.models import APPROVAL_V1
from tests.gateway.conftest import AUTH, EDIT, TOKEN, assert_problem
from tests.gateway.fakes import MemoryBus, MemoryStore


def test_post_publishes_one_approval_event_and_answers_at_once(api) -> None:
    gw = api()
    resp = gw.post_edit({**EDIT, "usage": "wechat-article", "parameters": {"steps": 8, "seed": 3}})
    assert resp.status_code == 202
    edit = resp.json()
    assert edit["status"] == "pending" and resp.headers["location"] == f"/v1/edits/{edit['id']}"
    assert edit["links"]["result"] == f"/v1/edits/{edit['id']}/result"
    event = gw.bus.events[edit["id"]]
    assert event.type == APPROVAL_V1 and event.source == "/editflow/gateway"
    data = event.data
    assert data.image_url == EDIT["image_url"] and data.instruction == EDIT["prompt"]
    assert data.usage == "wechat-article" and data.generation.steps == 8
    assert data.form_id == "gateway" and data.approval_id == edit["id"]
    assert data.applicant.id.startswith("token:") and TOKEN not in data.applicant.id
    assert gw.store.records[edit["id"]]["prompt"] == EDIT["prompt"]


def test_template_is_rendered_into_the_instruction_and_recorded(api) -> None:
    gw = api()
    body = {
        "image_url": EDIT["image_url"],
        "template": {"id": "replace-background", "params": {"scene": "海边日落"}},
        "callback_url": "https://oa.example.com/hooks/edit",
        "form_id": "F-1",
        "approval_id": "AP-1",
        "applicant": "u42",
        "department": "市场部",
        "cost_center": "CC-1001",
    }
    edit = gw.post_edit(body).json()
    data = gw.bus.events[edit["id"]].data
    assert data.instruction == "把背景换成海边日落" == edit["prompt"]
    assert data.template.id == "replace-background" and data.template.params == {
        "scene": "海边日落"
    }
    assert data.callback.webhook_url == "https://oa.example.com/hooks/edit"
    assert (data.form_id, data.approval_id, data.applicant.id) == ("F-1", "AP-1", "u42")
    assert (data.department, data.cost_center) == ("市场部", "CC-1001")  # cost attribution
    assert edit["template_id"] == "replace-background"


def test_retried_post_with_the_same_idempotency_key_returns_the_same_edit(api) -> None:
    gw = api()
    first = gw.post_edit(EDIT, **{"Idempotency-Key": "order-1"})
    again = gw.post_edit(EDIT, **{"Idempotency-Key": "order-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert len(gw.bus.events) == 1  # JetStream stores the republished event once
    other = gw.post_edit(EDIT, **{"Idempotency-Key": "order-2"})
    assert other.json()["id"] != first.json()["id"] and len(gw.bus.events) == 2


def test_idempotency_survives_a_gateway_restart(api) -> None:
    bus, store = MemoryBus(), MemoryStore()
    first = api(bus=bus, store=store).post_edit(EDIT, **{"Idempotency-Key": "k"}).json()
    restarted = api(bus=bus, store=store).post_edit(EDIT, **{"Idempotency-Key": "k"})
    assert restarted.json()["id"] == first["id"] and len(bus.events) == 1


def test_a_finished_edit_is_not_republished_on_retry(api) -> None:
    gw = api()
    edit = gw.post_edit(EDIT, **{"Idempotency-Key": "k"}).json()
    gw.bus.complete(edit["id"])
    before = gw.bus.publishes
    again = gw.post_edit(EDIT, **{"Idempotency-Key": "k"}).json()
    assert gw.bus.publishes == before and again["status"] == "success"


def test_reusing_a_key_for_a_different_request_is_refused(api) -> None:
    gw = api()
    gw.post_edit(EDIT, **{"Idempotency-Key": "k"})
    resp = gw.post_edit({**EDIT, "prompt": "something else"}, **{"Idempotency-Key": "k"})
    body = assert_problem(resp, 422, "idempotency_key_reused")
    assert body["edit_id"] and len(gw.bus.events) == 1


def test_a_replay_older_than_the_approval_ledger_is_refused_and_never_republished(api) -> None:
    """Past the ledger's retention nothing recognises the event id: a republish would run a
    second GPU edit, so the replay is refused saying why (issue 20 §7)."""
    store = MemoryStore()
    gw = api(store=store)
    edit = gw.post_edit(EDIT, **{"Idempotency-Key": "k"}).json()
    store.records[edit["id"]]["created_at"] = "2026-01-01T00:00:00+00:00"
    before = gw.bus.publishes
    resp = gw.post_edit(EDIT, **{"Idempotency-Key": "k"})
    body = assert_problem(resp, 409, "replay_expired")
    assert "2026-01-01" in body["detail"] and "new key" in body["detail"]
    assert gw.bus.publishes == before


def test_keys_are_scoped_to_the_client(api) -> None:
    store, bus = MemoryStore(), MemoryBus()
    a = api(token=None, client_ip="198.51.100.1", bus=bus, store=store)
    b = api(token=None, client_ip="198.51.100.2", bus=bus, store=store)
    ida = a.post_edit(EDIT, **{"Idempotency-Key": "same"}).json()["id"]
    idb = b.post_edit(EDIT, **{"Idempotency-Key": "same"}).json()["id"]
    assert ida != idb and len(bus.events) == 2


def test_oa_ids_without_a_key_are_idempotent_too(api) -> None:
    gw = api()
    body = {**EDIT, "form_id": "F-9", "approval_id": "AP-9"}
    assert gw.post_edit(body).json()["id"] == gw.post_edit(body).json()["id"]
    assert len(gw.bus.events) == 1
    # Without a key or OA ids every POST is a new edit.
    assert gw.post_edit(EDIT).json()["id"] != gw.post_edit(EDIT).json()["id"]


def test_status_is_pending_until_the_completion_then_its_outcome(api) -> None:
    gw = api()
    edit_id = gw.post_edit(EDIT).json()["id"]
    assert gw.client.get(f"/v1/edits/{edit_id}", headers=AUTH).json()["status"] == "pending"
    gw.bus.complete(edit_id)
    done = gw.client.get(f"/v1/edits/{edit_id}", headers=AUTH).json()
    assert done["status"] == "success" and done["cost_seconds"] == 12.5 and done["attempts"] == 1
    assert done["result_key"] == f"results/{edit_id}.png"
    # The completion's URL expired an hour ago: the view carries a freshly signed one.
    assert done["result_url"].startswith("http://s3.test/editflow/results/")
    assert done["source_url"] == EDIT["image_url"]


def test_failed_edit_reports_its_error(api) -> None:
    gw = api()
    edit_id = gw.post_edit(EDIT).json()["id"]
    gw.bus.complete(edit_id, "failed")
    done = gw.client.get(f"/v1/edits/{edit_id}", headers=AUTH).json()
    assert done["status"] == "failed" and done["error"]["code"] == "image_rejected"
    assert_problem(gw.client.get(f"/v1/edits/{edit_id}/result", headers=AUTH), 409, "no_result")


def test_unknown_edit_is_404(api) -> None:
    gw = api()
    assert_problem(gw.client.get("/v1/edits/nobody-issued-this", headers=AUTH), 404, "not_found")
    assert_problem(gw.client.get("/v1/edits/nope/result", headers=AUTH), 404, "not_found")


def test_an_edit_published_by_an_oa_system_over_nats_is_visible_too(api) -> None:
    gw = api()
    edit_id = gw.post_edit(EDIT).json()["id"]
    gw.bus.complete(edit_id)
    gw.store.records.clear()  # no gateway record: the completion alone is enough
    assert gw.client.get(f"/v1/edits/{edit_id}", headers=AUTH).json()["status"] == "success"


def test_result_endpoint_re_signs_an_expired_url(api) -> None:
    gw = api()
    edit_id = gw.post_edit(EDIT).json()["id"]
    assert_problem(gw.client.get(f"/v1/edits/{edit_id}/result", headers=AUTH), 409, "no_result_yet")
    gw.bus.complete(edit_id)
    result = gw.client.get(f"/v1/edits/{edit_id}/result", headers=AUTH).json()
    assert result["result_key"] == f"results/{edit_id}.png"
    assert result["result_url"].startswith(f"http://s3.test/editflow/results/{edit_id}.png")
    assert "?old" not in result["result_url"]
    again = gw.client.get(f"/v1/edits/{edit_id}/result", headers=AUTH).json()
    assert again["result_url"] != result["result_url"]  # signed anew on every call
    redirect = gw.client.get(
        f"/v1/edits/{edit_id}/result?redirect=true", headers=AUTH, follow_redirects=False
    )
    assert redirect.status_code == 307
    assert redirect.headers["location"].startswith("http://s3.test/editflow/results/")


def test_uploaded_image_is_referenced_by_key_and_shown_presigned(api) -> None:
    gw = api()
    png = b"\x89PNG\r\n\x1a\n" + b"\2" * 100
    key = gw.client.post(
        "/v1/uploads", files={"file": ("x.png", png, "image/png")}, headers=AUTH
    ).json()["image_key"]
    edit = gw.post_edit({"image_key": key, "prompt": "remove the watermark"}).json()
    assert gw.bus.events[edit["id"]].data.image_key == key
    assert edit["source_url"].startswith(f"http://s3.test/editflow/{key}")


def _complete_later(bus: MemoryBus, delay: float, status: str = "success") -> None:
    def run() -> None:
        deadline = time.monotonic() + 5
        while not bus.events and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        bus.complete(next(iter(bus.events)), status)

    threading.Thread(target=run, daemon=True).start()


def test_legacy_edit_waits_for_the_outcome(api) -> None:
    gw = api(wait_timeout_seconds=5)
    _complete_later(gw.bus, 0.2)
    resp = gw.client.post("/edit", json=EDIT, headers=AUTH)
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "success" and body["error"] is None and body["cost_time"] == 12.5
    assert body["result_url"].startswith("http://s3.test/editflow/results/")
    assert set(body) == {"result_url", "cost_time", "status", "error", "id"}


def test_legacy_edit_reports_a_failure_as_failed_with_the_reason(api) -> None:
    gw = api(wait_timeout_seconds=5)
    _complete_later(gw.bus, 0.1, "needs_review")
    body = gw.client.post("/edit", json=EDIT, headers=AUTH).json()
    assert body["status"] == "failed" and body["result_url"] is None
    assert "designer" in body["error"] and "not an image" in body["error"]


def test_legacy_edit_timeout_says_the_edit_continues_and_gives_its_id(api) -> None:
    gw = api(wait_timeout_seconds=0.3)
    body = gw.client.post("/edit", json=EDIT, headers=AUTH).json()
    assert body["status"] == "failed" and body["result_url"] is None
    edit_id = body["id"]
    assert edit_id in body["error"] and "continues" in body["error"]
    assert edit_id in gw.bus.events
    gw.bus.complete(edit_id)
    assert gw.client.get(f"/v1/edits/{edit_id}", headers=AUTH).json()["status"] == "success"


def test_bus_down_is_a_retriable_503_and_not_ready(api) -> None:
    gw = api()
    gw.bus.available = False
    body = assert_problem(gw.post_edit(EDIT), 503, "upstream_unavailable")
    assert body["retriable"] is True
    ready = gw.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["s3"] == "ok"
    assert gw.client.get("/healthz").status_code == 200


def test_s3_down_is_not_ready(api) -> None:
    gw = api()
    gw.store.available = False
    ready = gw.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
    assert "S3" in ready.json()["checks"]["s3"]


def test_metrics_count_submissions_replays_and_outcomes(api) -> None:
    gw = api(wait_timeout_seconds=0.1)
    gw.post_edit(EDIT, **{"Idempotency-Key": "m"})
    gw.post_edit(EDIT, **{"Idempotency-Key": "m"})
    gw.client.post("/edit", json=EDIT, headers=AUTH)
    text = gw.client.get("/metrics").text
    assert 'editflow_gateway_edits_submitted_total{endpoint="v1"} 1.0' in text
    assert 'editflow_gateway_edits_submitted_total{endpoint="edit"} 1.0' in text
    assert "editflow_gateway_idempotent_replays_total 1.0" in text
    assert 'editflow_gateway_sync_outcomes_total{status="timeout"} 1.0' in text
    assert 'route="/v1/edits/{edit_id}"' not in text  # no GET made
    assert (
        'editflow_gateway_requests_total{method="POST",route="/v1/edits",status="202"} 2.0' in text
    )


def test_openapi_document_describes_problems_security_and_limits(api) -> None:
    doc = api().client.get("/openapi.json").json()
    create = doc["paths"]["/v1/edits"]["post"]
    assert create["security"] == [{"bearer": []}]
    for code in ("400", "401", "413", "415", "422", "429", "503"):
        assert list(create["responses"][code]["content"]) == ["application/problem+json"], code
    assert "Idempotency-Key" in {p["name"] for p in create["parameters"]}
    assert "security" not in doc["paths"]["/v1/templates"]["get"]
    assert {"/edit", "/v1/edits/{edit_id}", "/v1/edits/{edit_id}/result", "/v1/uploads"} <= set(
        doc["paths"]
    )
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_concurrent_retries_publish_one_event(api) -> None:
    gw = api()

    async def burst() -> list[str]:
        loop = asyncio.get_running_loop()
        calls = [
            loop.run_in_executor(None, lambda: gw.post_edit(EDIT, **{"Idempotency-Key": "burst"}))
            for _ in range(5)
        ]
        return [r.json()["id"] for r in await asyncio.gather(*calls)]

    ids = asyncio.run(burst())
    assert len(set(ids)) == 1 and len(gw.bus.events) == 1


def test_a_dead_lettered_edit_is_rejected_not_pending_for_ever(api) -> None:
    gw = api()
    edit_id = gw.post_edit(EDIT).json()["id"]
    gw.bus.reject(edit_id)
    view = gw.client.get(f"/v1/edits/{edit_id}", headers=AUTH).json()
    assert view["status"] == "rejected"
    assert view["error"]["code"] == "invalid_event.bad_signature"
    assert "dead letter" in view["error"]["message"] and view["error"]["retriable"] is False
    result = gw.client.get(f"/v1/edits/{edit_id}/result", headers=AUTH)
    assert "signature does not match" in assert_problem(result, 409, "no_result")["detail"]


def test_legacy_edit_answers_a_rejection_without_waiting_out_the_timeout(api, monkeypatch) -> None:
    from editflow.gateway import routes

    monkeypatch.setattr(routes, "REJECTION_POLL_SECONDS", 0.05)
    gw = api(wait_timeout_seconds=60)

    def reject_soon() -> None:
        deadline = time.monotonic() + 5
        while not gw.bus.events and time.monotonic() < deadline:
            time.sleep(0.01)
        gw.bus.reject(next(iter(gw.bus.events)))

    threading.Thread(target=reject_soon, daemon=True).start()
    body = gw.client.post("/edit", json=EDIT, headers=AUTH).json()
    # The rejection's reason, not the timeout's "did not finish within 60 s".
    assert body["status"] == "failed" and "signature does not match" in body["error"]
    assert "did not finish" not in body["error"]


def test_variants_are_asked_for_shown_side_by_side_and_picked(api) -> None:
    from editflow.events.models import VariantRef

    gw = api()
    edit = gw.post_edit({**EDIT, "variants": 3}).json()
    assert gw.bus.events[edit["id"]].data.variants == 3
    early = gw.client.post(f"/v1/edits/{edit['id']}/select", json={"variant": 2}, headers=AUTH)
    assert_problem(early, 409, "not_selectable")
    variants = [
        VariantRef(index=i, seed=6 + i, result_key=f"results/{edit['id']}/result-{i}.png")
        for i in (1, 2, 3)
    ]
    gw.bus.complete(edit["id"], variants=variants)
    shown = gw.client.get(f"/v1/edits/{edit['id']}", headers=AUTH).json()
    assert [v["index"] for v in shown["variants"]] == [1, 2, 3]
    assert all(v["result_url"] for v in shown["variants"]), "every variant is signed"
    missing = gw.client.post(f"/v1/edits/{edit['id']}/select", json={"variant": 4}, headers=AUTH)
    assert_problem(missing, 409, "no_such_variant")
    bad = gw.client.post(f"/v1/edits/{edit['id']}/select", json={"variant": 9}, headers=AUTH)
    assert bad.status_code == 422 and "variant" in bad.text
    picked = gw.client.post(f"/v1/edits/{edit['id']}/select", json={"variant": 2}, headers=AUTH)
    assert picked.status_code == 202 and picked.json()["selected_variant"] == 2
    assert gw.bus.selections[edit["id"]] == 2


def test_more_than_four_variants_is_a_422_naming_the_field(api) -> None:
    resp = api().post_edit({**EDIT, "variants": 5})
    assert resp.status_code == 422 and "variants" in resp.text


def test_a_preview_is_an_edit_of_its_own_and_reported_as_approximate(api) -> None:
    gw = api()
    ids = {"form_id": "F-9", "approval_id": "AP-9"}
    preview = gw.post_edit({**EDIT, **ids, "preview": True}).json()
    final = gw.post_edit({**EDIT, **ids}).json()
    assert preview["id"] != final["id"], "the final edit is not the preview's replay"
    assert gw.bus.events[preview["id"]].data.stage == "preview"
    assert gw.bus.events[final["id"]].data.stage == "final"
    gw.bus.complete(preview["id"], stage="preview", approximate=True)
    shown = gw.client.get(f"/v1/edits/{preview['id']}", headers=AUTH).json()
    assert shown["stage"] == "preview" and shown["approximate"] is True


def test_a_pending_edit_shows_its_place_in_the_queue_then_running_then_the_verdict(api) -> None:
    from editflow.events.models import ProgressData, ProgressEvent, QualityGate

    gw = api()
    edit = gw.post_edit(EDIT).json()
    ids = {"approval_event_id": edit["id"], "form_id": "gateway", "approval_id": edit["id"]}
    gw.bus.progresses[edit["id"]] = ProgressEvent(
        source="/test", data=ProgressData(**ids, phase="queued", queue_position=3)
    )
    queued = gw.client.get(f"/v1/edits/{edit['id']}", headers=AUTH).json()
    assert (queued["status"], queued["phase"], queued["queue_position"]) == ("pending", "queued", 3)
    gw.bus.progresses[edit["id"]] = ProgressEvent(
        source="/test", data=ProgressData(**ids, phase="running", attempt=1, worker="w-1")
    )
    running = gw.client.get(f"/v1/edits/{edit['id']}", headers=AUTH).json()
    assert (running["phase"], running["worker"], running["queue_position"]) == (
        "running",
        "w-1",
        None,
    )
    gate = QualityGate(verdict="ok", kind="local", changed_fraction=0.2, ssim=0.8, spread=0.1)
    gw.bus.complete(edit["id"], quality=gate)
    done = gw.client.get(f"/v1/edits/{edit['id']}", headers=AUTH).json()
    assert done["status"] == "success" and done["quality"] == "ok" and done["phase"] is None
