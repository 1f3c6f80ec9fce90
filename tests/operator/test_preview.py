"""Approver previews (issue 15 §3): their own share of the GPU cap, an approximate completion.

Pure: a preview approval maps to the Turbo model at 8 steps, one result, a reduced size in
the worker request; the settings refuse a preview share that leaves full edits nothing.
On the real platform (stub workers that hold their slot): with a cap of 3 and one preview
slot, a preview runs at once past a backlog of full edits, never more than one at a time,
the full edits never more than two, and its completion says ``stage: preview``,
``approximate: true``.
"""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from editflow.core.settings import OperatorSettings
from editflow.devstack.stack import LocalStack
from editflow.events.models import preview_event_id
from editflow.operator.crd import editjob_path
from editflow.operator.jobspec import labels_for, worker_request
from editflow.operator.mapping import editjob_from_approval
from editflow.operator.names import LABEL_LANE
from tests.harness import stored_completions
from tests.operator.test_bridge import approval
from tests.operator.test_scale import ScaleNamespace, events_settings, scale_ns, spec  # noqa: F401


def test_a_preview_approval_runs_turbo_at_8_steps_one_result_reduced_size() -> None:
    editjob = editjob_from_approval(
        approval(stage="preview", variants=3, generation={"steps": 50, "seed": 4}),
        namespace="ns",
        bucket="editflow",
        default_model="longcat-image-edit",
    )
    spec_ = editjob["spec"]
    assert spec_["preview"] is True and spec_["model"] == "longcat-image-edit-turbo"
    assert spec_["parameters"] == {"steps": 8, "seed": 4} and "variants" not in spec_
    editjob["metadata"]["uid"] = "u"
    request = worker_request(editjob, 1, OperatorSettings())
    assert request.preview and request.parameters.steps == 8
    assert labels_for(editjob, 1)[LABEL_LANE] == "preview"
    assert preview_event_id("s", "F", "A") != approval().id


def test_a_preview_share_must_leave_the_full_edits_some_of_the_cap() -> None:
    with pytest.raises(ValidationError, match="preview_slots"):
        OperatorSettings(max_running_per_namespace=2, preview_slots=2)


def preview_spec(name: str) -> dict:
    body = spec(name)
    body["spec"].update(preview=True, model="longcat-image-edit-turbo", parameters={"steps": 8})
    return body


@pytest.mark.platform
@pytest.mark.slow
def test_previews_run_in_their_own_share_and_complete_as_approximate(
    stack: LocalStack,
    scale_ns,  # noqa: F811
) -> None:
    ns: ScaleNamespace = scale_ns(
        max_running_per_namespace="3", preview_slots="1", resync_seconds="1"
    )
    ns.api.patch(
        f"/api/v1/namespaces/{ns.namespace}/configmaps/editflow-worker",
        {"data": {"STUB_WORKER_SECONDS": "3"}},
    )
    ns.start_operator()
    full = [f"full-{i}" for i in range(6)]
    ns.create_editjobs(full)
    time.sleep(1.5)  # the full edits are queued first
    previews = [f"preview-{i}" for i in range(2)]
    for name in previews:
        ns.api.post(editjob_path(ns.namespace), preview_spec(name))
    peak = {"full": 0, "preview": 0}
    first_running: dict[str, float] = {}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        phases = ns.phases()
        running = [n for n, p in phases.items() if p == "Running"]
        for name in running:
            first_running.setdefault(name, time.monotonic())
        peak["full"] = max(peak["full"], sum(n.startswith("full") for n in running))
        peak["preview"] = max(peak["preview"], sum(n.startswith("preview") for n in running))
        if all(p == "Succeeded" for p in phases.values()) and len(phases) == 8:
            break
        time.sleep(0.3)
    assert all(p == "Succeeded" for p in ns.phases().values()), ns.phases()
    assert peak == {"full": 2, "preview": 1}, peak
    # The first preview did not wait behind the backlog of full edits.
    last_full = max(first_running[n] for n in full)
    assert min(first_running[n] for n in previews) < last_full
    completions = [
        e["data"]
        for e in stored_completions(stack.nats_url, events_settings(ns.env))
        if (e["data"].get("editjob") or {}).get("name", "").startswith("preview")
    ]
    assert len(completions) == 2
    assert all(c["stage"] == "preview" and c["approximate"] is True for c in completions)
    assert all("approximate preview" in c["message"] for c in completions)
