"""The wire contract without a server: models, ids, schemas, content modes, signatures."""

from __future__ import annotations

import json

import pytest

from editflow.core.errors import ErrorInfo, InvalidInputError
from editflow.events import schemas
from editflow.events.binding import decode, encode
from editflow.events.models import (
    EVENT_TYPES,
    CompletionEvent,
    EditJobRef,
    approval_event_id,
    completion_event_id,
)
from editflow.events.outcomes import completion_event
from editflow.events.problems import EventRejected, Reason
from editflow.events.signing import sign, verify
from editflow.events.validation import Policy, parse_event


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_an_event_survives_both_content_modes_unchanged(make_approval, mode):
    event = make_approval()
    wire = encode(event, mode=mode)
    assert wire.headers["Nats-Msg-Id"] == event.id
    parsed = parse_event(wire.body, wire.headers)
    assert parsed == event


def test_binary_mode_puts_attributes_in_ce_headers_and_data_in_the_body(make_approval):
    event = make_approval()
    wire = encode(event, mode="binary")
    assert wire.headers["ce-type"] == "io.editflow.approval.v1"
    assert wire.headers["ce-specversion"] == "1.0"
    assert wire.headers["content-type"] == "application/json"
    assert json.loads(wire.body)["instruction"] == "把背景换成海边日落"
    assert decode(wire.body, wire.headers).mode == "binary"


def test_type_names_carry_their_version():
    assert set(EVENT_TYPES) == {
        "io.editflow.approval.v1",
        "io.editflow.withdraw.v1",
        "io.editflow.select.v1",
        "io.editflow.completion.v1",
        "io.editflow.selection.v1",
        "io.editflow.progress.v1",
        "io.editflow.review.v1",
        "io.editflow.review.action.v1",
    }


def test_approval_ids_are_stable_per_form_and_approval_instance():
    first = approval_event_id("https://oa", "F-1", "AP-1")
    assert first == approval_event_id("https://oa", "F-1", "AP-1")
    assert first != approval_event_id("https://oa", "F-1", "AP-2")


def test_completion_id_is_derived_from_the_editjob_and_its_outcome():
    ids = {
        status: completion_event_id(namespace="ns", name="edit-1", uid="u-1", status=status)
        for status in ("success", "failed", "needs_review", "cancelled")
    }
    assert len(set(ids.values())) == 4
    again = completion_event_id(namespace="ns", name="edit-1", uid="u-1", status="success")
    assert again == ids["success"]
    recreated = completion_event_id(namespace="ns", name="edit-1", uid="u-2", status="success")
    assert recreated != ids["success"]


def test_completion_event_carries_the_approval_ids_and_an_error_from_the_taxonomy():
    ref = EditJobRef(namespace="ns", name="edit-1", uid="u-1")
    event = completion_event(
        editjob=ref, approval_event_id="ev-1", form_id="F-1", approval_id="AP-1",
        status="failed", attempts=1,
        error=ErrorInfo(code="image_rejected", message="not an image", retriable=False),
    )  # fmt: skip
    assert event.id == completion_event_id(
        namespace="ns", name="edit-1", uid="u-1", status="failed"
    )
    parsed = parse_event(encode(event).body)
    assert isinstance(parsed, CompletionEvent)
    assert parsed.data.error is not None and parsed.data.error.code == "image_rejected"


def test_a_success_without_a_result_is_not_a_valid_completion():
    with pytest.raises(ValueError, match="result_url or result_key"):
        completion_event(
            editjob=EditJobRef(namespace="ns", name="e", uid="u"), approval_event_id="ev",
            form_id="F", approval_id="A", status="success",
        )  # fmt: skip


def test_schemas_in_docs_match_the_models():
    stale = schemas.stale()
    assert not stale, (
        f"docs/schemas is out of date ({', '.join(stale)}); run `editflow events schemas --write`"
    )


def test_schema_requires_the_cloudevents_attributes_and_forbids_unknown_data_fields():
    doc = schemas.schema("io.editflow.approval.v1")
    assert {"id", "source", "specversion", "type", "data"} <= set(doc["required"])
    assert doc["$defs"]["ApprovalData"]["additionalProperties"] is False


def test_signature_verifies_and_detects_any_change(make_approval):
    event = make_approval()
    attrs, data = event.attributes(), event.data_json()
    signature = sign("k", attrs, data)
    assert signature.startswith("v1=")
    assert verify("k", attrs, data, signature)
    assert not verify("other", attrs, data, signature)
    assert not verify("k", attrs, {**data, "instruction": "x"}, signature)
    assert not verify("k", {**attrs, "id": "other"}, data, signature)


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_signed_events_verify_in_both_content_modes(make_approval, mode):
    wire = encode(make_approval(), mode=mode, signing_key="k")
    parse_event(wire.body, wire.headers, policy=Policy(signing_key="k"))


def test_rejection_is_a_permanent_invalid_input_error_with_every_problem(approval_document):
    doc = approval_document(image_url="ftp://x/y.png", instruction="")
    doc["specversion"] = "0.3"
    del doc["source"]
    with pytest.raises(EventRejected) as caught:
        parse_event(json.dumps(doc).encode())
    error = caught.value
    assert isinstance(error, InvalidInputError) and not error.retriable
    assert error.reason is Reason.UNSUPPORTED_SPECVERSION
    paths = {p.path for p in error.problems}
    assert {"specversion", "source", "data.image_url", "data.instruction"} <= paths
    assert error.info().code == "invalid_event.unsupported_specversion"
    assert "ftp" in error.message and "expected one of http, https, s3" in error.message


def test_a_json_datacontenttype_with_a_utf8_charset_is_accepted(approval_document):
    doc = approval_document()
    doc["datacontenttype"] = "application/json; charset=utf-8"
    assert parse_event(json.dumps(doc).encode()).data.form_id == "F-1"
