"""The desk contract's shared models (docs/desk.md): bucket names and the review action."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from editflow.core.settings import EventsSettings
from editflow.events.desk import (
    REVIEW_ACTION_V1,
    ReviewActionData,
    Ticket,
    bucket_name,
    claims_bucket_name,
)
from editflow.events.models import EVENT_TYPES
from editflow.events.problems import EventRejected
from editflow.events.validation import Policy, parse_event

REVIEWER = {"id": "r-1", "name": "Zhang"}


def test_bucket_names_replace_what_kv_does_not_allow():
    assert bucket_name("design") == "EDITFLOW_DESK_design"
    assert bucket_name("a.b") == "EDITFLOW_DESK_a_b"
    assert claims_bucket_name("design-2") == "EDITFLOW_DESK_CLAIMS_design-2"
    with pytest.raises(ValueError, match="namespace"):
        bucket_name("")


def test_the_action_type_is_registered_and_its_subject_derived():
    assert REVIEW_ACTION_V1 in EVENT_TYPES
    policy = Policy.from_settings(EventsSettings())
    assert policy.subjects[REVIEW_ACTION_V1] == "oa.approvals.image-edit.review"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"action": "upload"}, "needs data.result_key"),
        ({"action": "rerun"}, "needs data.instruction"),
        ({"action": "send_back"}, "needs data.message"),
        ({"action": "verdict"}, "needs data.verdict"),
        ({"action": "upload", "result_key": "k", "message": "m"}, "takes no message"),
        ({"action": "verdict", "verdict": "meh"}, "verdict"),
    ],
)
def test_each_action_carries_its_own_fields(data, problem):
    with pytest.raises(ValidationError, match=problem):
        ReviewActionData(namespace="design", editjob="ej-1", reviewer=REVIEWER, **data)


def test_an_action_on_another_subject_is_refused():
    body = json.dumps(
        {
            "specversion": "1.0",
            "id": "a-1",
            "source": "/gateway/desk",
            "type": REVIEW_ACTION_V1,
            "data": {
                "action": "verdict",
                "namespace": "design",
                "editjob": "ej-1",
                "reviewer": {"id": "r-1"},
                "verdict": "good",
            },
        }
    ).encode()
    policy = Policy.from_settings(EventsSettings())
    event = parse_event(body, subject="oa.approvals.image-edit.review", policy=policy)
    assert event.data.verdict == "good"
    with pytest.raises(EventRejected, match="accepted only on"):
        parse_event(body, subject="oa.approvals.image-edit.select", policy=policy)


def test_the_ticket_ignores_fields_it_does_not_know():
    ticket = Ticket.model_validate(
        {
            "namespace": "d",
            "name": "ej",
            "uid": "u",
            "lane": "sample",
            "phase": "Succeeded",
            "instruction": "x",
            "from_the_future": 1,
        }
    )
    assert ticket.lane == "sample"
