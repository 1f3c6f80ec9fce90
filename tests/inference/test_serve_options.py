"""Warm mode's names: subjects, consumers and message ids per namespace and model.

Its NATS connection is :func:`editflow.events.connection.connect` (tests/events).
"""

from __future__ import annotations

import pytest

from editflow.events.worker_contract import (
    WorkerRequest,
    result_subject,
    work_consumer,
    work_msg_id,
    work_subject,
)


def test_subjects_and_dedupe_ids() -> None:
    request = WorkerRequest.model_validate(
        {"edit_id": "e-1", "attempt": 2, "source": {"s3_key": "k"}, "prompt": "p"}
    )
    assert work_subject("team-a", "longcat-image-edit") == "editflow.work.team-a.longcat-image-edit"
    assert work_consumer("team-a", "longcat-image-edit") == "worker_team-a_longcat-image-edit"
    assert result_subject("team-a", "e-1") == "editflow.worker.results.team-a.e-1"
    assert work_msg_id("team-a", request) == "team-a/e-1/attempt-2"


def test_two_namespaces_never_share_a_subject_consumer_or_message_id() -> None:
    """EditJob names are unique per namespace only: ``e-1`` in two namespaces is two attempts."""
    request = WorkerRequest.model_validate(
        {"edit_id": "e-1", "attempt": 1, "source": {"s3_key": "k"}, "prompt": "p"}
    )
    for name in (work_subject, work_consumer):
        assert name("team-a", "m") != name("team-b", "m")
    assert work_msg_id("team-a", request) != work_msg_id("team-b", request)
    # The joiner of consumer names never occurs in a namespace or a model: no two pairs meet.
    assert work_consumer("a-b", "c") != work_consumer("a", "b-c")


@pytest.mark.parametrize("namespace", ["", "Team", "a.b", "a*", "a>", "a b", "a_b", "x" * 64])
def test_a_namespace_that_cannot_name_a_subject_is_refused_with_its_name(namespace: str) -> None:
    with pytest.raises(ValueError, match="namespace") as refused:
        work_subject(namespace, "longcat-image-edit")
    assert "DNS label" in str(refused.value)
