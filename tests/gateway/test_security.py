"""Bearer token, rate limit, CORS and body limits, on the app with in-memory NATS and S3."""

from __future__ import annotations

import hashlib

from tests.gateway.conftest import AUTH, EDIT, OA_ORIGIN, TOKEN, assert_problem


def test_api_refuses_a_request_without_a_token(api) -> None:
    gw = api()
    resp = gw.client.post("/v1/edits", json=EDIT)
    body = assert_problem(resp, 401, "unauthorized")
    assert "Authorization: Bearer" in body["detail"]
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert gw.bus.publishes == 0


def test_api_refuses_a_wrong_token(api) -> None:
    gw = api()
    for value in ("Bearer wrong", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer "):
        resp = gw.client.post("/v1/edits", json=EDIT, headers={"Authorization": value})
        assert_problem(resp, 401, "unauthorized")
    for path in ("/v1/edits/abc", "/v1/edits/abc/result"):
        assert_problem(
            gw.client.get(path, headers={"Authorization": "Bearer no"}), 401, "unauthorized"
        )
    assert_problem(gw.client.post("/edit", json=EDIT), 401, "unauthorized")
    assert gw.bus.publishes == 0


def test_the_right_token_is_accepted(api) -> None:
    gw = api()
    resp = gw.client.post("/v1/edits", json=EDIT, headers={"Authorization": f"bearer {TOKEN}"})
    assert resp.status_code == 202, resp.text


def test_token_from_a_mounted_secret_file(api, tmp_path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    gw = api(token=None, token_file=str(secret))
    assert gw.client.post("/v1/edits", json=EDIT).status_code == 401
    ok = gw.client.post("/v1/edits", json=EDIT, headers={"Authorization": "Bearer from-a-file"})
    assert ok.status_code == 202


def test_without_a_configured_token_the_api_is_open(api) -> None:
    gw = api(token=None)
    assert gw.client.post("/v1/edits", json=EDIT).status_code == 202
    assert gw.client.get("/v1/info").json()["auth"] == "none"


def test_probes_metrics_page_and_catalogue_need_no_token(api) -> None:
    gw = api()
    for path in ("/healthz", "/readyz", "/metrics", "/", "/openapi.json", "/v1/templates"):
        assert gw.client.get(path).status_code == 200, path
    assert gw.client.get("/v1/info").json()["auth"] == "bearer"


def test_sixth_edit_submission_in_a_minute_gets_429(api) -> None:
    gw = api(rate_limit_per_minute=5)
    for _ in range(5):
        assert gw.post_edit(EDIT).status_code == 202
    resp = gw.post_edit(EDIT)
    body = assert_problem(resp, 429, "rate_limited")
    assert body["retriable"] is True and "203.0.113.7" in body["detail"]
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    assert gw.bus.publishes == 5
    # Polling the status is not an edit submission: it has its own, higher limit.
    assert gw.client.get("/v1/templates").status_code == 200
    metrics = gw.client.get("/metrics").text
    assert 'editflow_gateway_rate_limited_total{limit="submit"} 1.0' in metrics


def test_rate_limit_counts_unauthenticated_and_legacy_submissions_too(api) -> None:
    gw = api(rate_limit_per_minute=2)
    assert gw.client.post("/edit", json=EDIT).status_code == 401
    assert gw.client.post("/v1/edits", json=EDIT).status_code == 401
    assert_problem(gw.client.post("/v1/edits", json=EDIT, headers=AUTH), 429, "rate_limited")


def test_rate_limit_is_per_client_behind_a_trusted_proxy(api) -> None:
    gw = api(rate_limit_per_minute=1, trusted_proxies=["10.0.0.0/8"], client_ip="10.0.0.2")
    first = {"X-Forwarded-For": "198.51.100.1"}
    second = {"X-Forwarded-For": "198.51.100.2"}
    assert gw.post_edit(EDIT, **first).status_code == 202
    assert gw.post_edit(EDIT, **second).status_code == 202
    assert_problem(gw.post_edit(EDIT, **first), 429, "rate_limited")


def test_forwarded_for_from_an_untrusted_peer_does_not_dodge_the_limit(api) -> None:
    gw = api(rate_limit_per_minute=1, trusted_proxies=["10.0.0.0/8"])
    assert gw.post_edit(EDIT, **{"X-Forwarded-For": "198.51.100.1"}).status_code == 202
    resp = gw.post_edit(EDIT, **{"X-Forwarded-For": "198.51.100.2"})
    assert "203.0.113.7" in assert_problem(resp, 429, "rate_limited")["detail"]


def test_cors_preflight_from_the_oa_origin_is_allowed(api) -> None:
    gw = api()
    resp = gw.client.options(
        "/v1/edits",
        headers={
            "Origin": OA_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == OA_ORIGIN
    allowed = resp.headers["access-control-allow-headers"].lower()
    assert {"authorization", "content-type", "idempotency-key"} <= {
        h.strip() for h in allowed.split(",")
    }
    assert "POST" in resp.headers["access-control-allow-methods"]
    # The actual request from that origin carries the header too.
    actual = gw.post_edit(EDIT, Origin=OA_ORIGIN)
    assert actual.headers["access-control-allow-origin"] == OA_ORIGIN
    assert "Location" in actual.headers["access-control-expose-headers"]


def test_cors_preflight_from_another_origin_is_denied(api) -> None:
    gw = api()
    resp = gw.client.options(
        "/v1/edits",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert resp.status_code == 400
    assert "access-control-allow-origin" not in resp.headers
    actual = gw.post_edit(EDIT, Origin="https://evil.example")
    assert "access-control-allow-origin" not in actual.headers


def test_oversize_json_body_is_refused_before_it_is_read(api) -> None:
    gw = api(max_json_bytes=2048)
    big = {**EDIT, "prompt": "x" * 4000}
    body = assert_problem(gw.post_edit(big), 413, "content_too_large")
    assert "2048" in body["detail"]
    assert gw.bus.publishes == 0


def test_oversize_chunked_body_is_refused_while_streaming(api) -> None:
    gw = api(max_json_bytes=2048)

    def chunks():
        yield b'{"image_url": "https://oa.example.com/a.png", "prompt": "'
        for _ in range(10):
            yield b"x" * 1024
        yield b'"}'

    resp = gw.client.post(
        "/v1/edits", content=chunks(), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert_problem(resp, 413, "content_too_large")
    assert gw.bus.publishes == 0


def test_oversize_upload_is_refused(api) -> None:
    gw = api(max_upload_bytes=4096)
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 8192
    resp = gw.client.post("/v1/uploads", files={"file": ("a.png", png, "image/png")}, headers=AUTH)
    assert_problem(resp, 413, "content_too_large")
    assert gw.store.objects == {}


def test_upload_within_the_limit_is_stored_content_addressed(api) -> None:
    gw = api(max_upload_bytes=64 * 1024)
    png = b"\x89PNG\r\n\x1a\n" + b"\1" * 30_000
    resp = gw.client.post("/v1/uploads", files={"file": ("a.png", png, "image/png")}, headers=AUTH)
    assert resp.status_code == 201, resp.text
    digest = hashlib.sha256(png).hexdigest()
    assert resp.json() == {
        "image_key": f"uploads/default/{digest[:2]}/{digest}.png",  # the gateway's namespace
        "size": len(png),
        "content_type": "image/png",
        "sha256": digest,
    }
    assert gw.store.objects[resp.json()["image_key"]] == (png, "image/png")


def test_an_upload_that_is_not_an_image_is_refused(api) -> None:
    gw = api()
    resp = gw.client.post(
        "/v1/uploads", files={"file": ("a.png", b"just text", "image/png")}, headers=AUTH
    )
    assert_problem(resp, 415, "not_an_image")
    assert gw.store.objects == {}


def test_security_headers_and_page_csp(api) -> None:
    gw = api()
    page = gw.client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert 'src="/static/app.js"' in page.text and "http" not in page.text.split("<body>")[0]


def test_the_first_deployments_api_token_variable_still_switches_auth_on(monkeypatch) -> None:
    from editflow.core.settings import GatewaySettings

    monkeypatch.setenv("API_TOKEN", "legacy-secret")
    assert GatewaySettings().token.get_secret_value() == "legacy-secret"
    assert GatewaySettings(token="explicit").token.get_secret_value() == "explicit"
