"""Malformed and wrong requests get problem+json (RFC 9457) documents that name the field."""

from __future__ import annotations

import pytest

from tests.gateway.conftest import AUTH, EDIT, assert_problem


def test_malformed_json_is_a_400_problem(api) -> None:
    gw = api()
    resp = gw.client.post(
        "/v1/edits",
        content=b'{"image_url": "https://a/b.png", "prompt": ',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    body = assert_problem(resp, 400, "malformed_json")
    assert "not valid JSON" in body["detail"] and body["instance"] == "/v1/edits"
    legacy = gw.client.post(
        "/edit", content=b"{oops", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert_problem(legacy, 400, "malformed_json")
    assert gw.bus.publishes == 0


def test_wrong_types_name_every_wrong_field(api) -> None:
    gw = api()
    resp = gw.post_edit(
        {"image_url": 5, "prompt": ["x"], "usage": "Not A Slug!", "parameters": {"steps": "many"}}
    )
    body = assert_problem(resp, 422, "invalid_input")
    fields = {e["field"] for e in body["errors"]}
    assert fields == {"image_url", "prompt", "usage", "parameters.steps"}
    assert "image_url" in body["detail"]


def test_unknown_fields_are_refused_by_name(api) -> None:
    body = assert_problem(api().post_edit({**EDIT, "promt": "typo"}), 422, "invalid_input")
    assert body["errors"] == [{"field": "promt", "message": "Extra inputs are not permitted"}]


def test_a_body_that_is_not_an_object_is_refused(api) -> None:
    gw = api()
    assert_problem(gw.client.post("/v1/edits", json=[1, 2], headers=AUTH), 422, "invalid_input")
    assert_problem(gw.client.post("/v1/edits", headers=AUTH), 422, "invalid_input")


def test_a_body_that_is_not_json_is_refused_as_unsupported(api) -> None:
    resp = api().client.post(
        "/v1/edits", content=b"image_url=x", headers={**AUTH, "Content-Type": "text/plain"}
    )
    assert_problem(resp, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x"}, "image_url"),
        ({**EDIT, "image_key": "uploads/ab/cd.png"}, "image_url"),
        ({"image_key": "results/secret.png", "prompt": "x"}, "image_key"),
        ({"image_key": "uploads/other-team/ab/cd.png", "prompt": "x"}, "image_key"),
        ({"image_url": "file:///etc/passwd", "prompt": "x"}, "image_url"),
        ({"image_url": "https://a/b.png", "prompt": "   "}, "prompt"),
        ({"image_url": "https://a/b.png"}, "prompt"),
        ({"image_url": "https://a/b.png", "prompt": "x" * 2001}, "prompt"),
        ({**EDIT, "template": {"id": "nope"}}, "template.id"),
        (
            {"image_url": "https://a/b.png", "template": {"id": "change-colour"}},
            "template.params.object",
        ),
        ({**EDIT, "callback_url": "http://oa.example.com/hook"}, "callback_url"),
        ({**EDIT, "callback_subject": "oa.*"}, "callback_subject"),
        ({**EDIT, "parameters": {"steps": 0}}, "parameters.steps"),
        ({**EDIT, "priority": "urgent"}, "priority"),
    ],
)
def test_invalid_edits_name_the_field(api, body: dict, field: str) -> None:
    gw = api()
    problem = assert_problem(gw.post_edit(body), 422, "invalid_input")
    assert field in {e["field"] for e in problem["errors"]}, problem
    assert gw.bus.publishes == 0 and gw.store.records == {}


def test_legacy_call_ignores_unknown_fields_but_checks_its_own(api) -> None:
    gw = api()
    problem = assert_problem(
        gw.client.post("/edit", json={"image_url": "https://a/b.png"}, headers=AUTH),
        422,
        "invalid_input",
    )
    assert problem["errors"] == [{"field": "prompt", "message": "Field required"}]


def test_unknown_route_and_method_are_problems_too(api) -> None:
    gw = api()
    assert_problem(gw.client.get("/v1/nothing", headers=AUTH), 404, "not_found")
    assert_problem(gw.client.delete("/v1/edits", headers=AUTH), 405, "method_not_allowed")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        # Each of these would pass the event schema but be dead-lettered by the operator
        # (so the edit would stay pending for ever): the gateway refuses them up front.
        ({**EDIT, "model": "stable-diffusion-9"}, "model"),
        ({"image_url": "HTTPS://oa.example.com/a.png", "prompt": "x"}, "image_url"),
        ({"image_url": "s3://other-bucket/uploads/a.png", "prompt": "x"}, "image_url"),
        ({"image_url": "s3://editflow/results/someone-elses.png", "prompt": "x"}, "image_url"),
    ],
)
def test_requests_the_operator_would_dead_letter_are_refused(api, body: dict, field: str) -> None:
    gw = api()
    problem = assert_problem(gw.post_edit(body), 422, "invalid_input")
    assert [e["field"] for e in problem["errors"]] == [field], problem
    assert gw.bus.publishes == 0


def test_known_models_and_uploaded_s3_urls_are_accepted(api) -> None:
    gw = api()
    for body in (
        {**EDIT, "model": "longcat-image-edit-turbo"},
        {"image_url": "s3://editflow/uploads/default/ab/abc.png", "prompt": "x"},
    ):
        assert gw.post_edit(body).status_code == 202
    assert "longcat-image-edit" in str(
        gw.client.get("/openapi.json").json()["components"]["schemas"]["EditRequest"]
    )
