"""The desk's loop on the real platform (docs/desk.md): an edit that needs a person appears as
a ticket in NATS KV, a reviewer's re-run gives it one more attempt with a corrected instruction
(the original kept), an upload action completes it with the designer's image, the OA side
receives the success completion and the ticket goes away."""

from __future__ import annotations

import asyncio
import json
import uuid

import nats
import pytest
from nats.js.errors import BucketNotFoundError, KeyNotFoundError

from editflow.devstack.procs import wait_until
from editflow.events.desk import ReviewActionEvent, bucket_name
from editflow.events.publish import publish_event
from editflow.events.topology import Topology
from tests.harness import NAMESPACE
from tests.operator.test_operator_lifecycle import completions_for, editjob_yaml, settings_for

pytestmark = [pytest.mark.platform, pytest.mark.slow]


async def ticket_of(
    js, name: str, *, present: bool = True, review_attempts: int = 0, timeout: float = 20
) -> dict | None:
    """The ticket of ``name`` once it is there (with ``review_attempts``), or, with
    ``present=False``, once it is gone."""
    for _ in range(int(timeout * 5)):
        try:
            entry = await (await js.key_value(bucket_name(NAMESPACE))).get(name)
        except (KeyNotFoundError, BucketNotFoundError):
            entry = None
        if present and entry is not None and entry.value:
            ticket = json.loads(entry.value)
            if ticket["review_attempts"] == review_attempts:
                return ticket
        if not present and (entry is None or not entry.value):
            return None
        await asyncio.sleep(0.2)
    raise AssertionError(f"the ticket of {name} was {'never written' if present else 'kept'}")


async def test_a_needs_review_edit_is_a_ticket_and_an_upload_completes_it(
    operator, kubectl, stack
) -> None:
    name = f"desk-{uuid.uuid4().hex[:6]}"
    dead = "http://127.0.0.1:9/unreachable.png"  # connection refused: retriable, then review
    kubectl(
        "apply", "-f", "-",
        input=editjob_yaml(name, dead, retry={"maxAttempts": 1, "backoffSeconds": 0}),
    )  # fmt: skip
    status = operator.wait_phase(name, "Succeeded", "Failed", "NeedsReview")["status"]
    assert status["phase"] == "NeedsReview", status
    topology = Topology(settings_for(stack).events)
    nc = await nats.connect(stack.nats_url)
    try:
        js = nc.jetstream()
        ticket = await ticket_of(js, name)
        assert (
            ticket["lane"] == "needs_review" and ticket["instruction"] == "make the red square blue"
        )
        assert [a["attempt"] for a in ticket["attempts"]] == [1], ticket

        # A re-run with a corrected instruction: one more attempt beyond maxAttempts (it fails
        # again here, the URL is dead), back in the lane with the original kept.
        rerun = ReviewActionEvent(
            source="/gateway/desk",
            data={"action": "rerun", "namespace": NAMESPACE, "editjob": name,
                  "reviewer": {"id": "r-1"}, "instruction": "make the red square green"},
        )  # fmt: skip
        await publish_event(js, rerun, topology.review_action_subject)
        await asyncio.to_thread(
            wait_until,
            lambda: (operator.editjob(name).get("status") or {}).get("attempts") == 2,
            timeout=30,
            what="the re-run's attempt",
        )
        again = operator.wait_phase(name, "NeedsReview", "Failed", "Succeeded")["status"]
        assert again["phase"] == "NeedsReview" and again["reviewAttempts"] == 1, again
        ticket = await ticket_of(js, name, review_attempts=1)
        assert ticket["instruction"] == "make the red square green"
        assert ticket["original_instruction"] == "make the red square blue"

        action = ReviewActionEvent(
            source="/gateway/desk",
            data={"action": "upload", "namespace": NAMESPACE, "editjob": name,
                  "reviewer": {"id": "r-1", "name": "李雷"},
                  "result_key": f"results/{NAMESPACE}/{name}/review-x/fixed.png"},
        )  # fmt: skip
        await publish_event(js, action, topology.review_action_subject)
        done = operator.wait_phase(name, "Succeeded", "Failed", timeout=60)["status"]
        assert done["phase"] == "Succeeded", done
        assert done["resultKey"] == action.data.result_key
        assert done["reviewedBy"] == {"id": "r-1", "name": "李雷"}
        await ticket_of(js, name, present=False)
    finally:
        await nc.close()
    approval = f"editjob:{NAMESPACE}/{name}"
    for _ in range(100):  # the success completion follows the phase change (the outbox)
        if await completions_for(stack, approval) == 2:
            break
        await asyncio.sleep(0.2)
    assert await completions_for(stack, approval) == 2  # needs_review, then success
    nc = await nats.connect(stack.nats_url)
    try:
        last = await nc.jetstream().get_last_msg(
            topology.completions_stream, topology.completion_subject(approval)
        )
    finally:
        await nc.close()
    completion = json.loads(last.data)["data"]
    assert completion["status"] == "success"
    assert completion["result_key"] == action.data.result_key
