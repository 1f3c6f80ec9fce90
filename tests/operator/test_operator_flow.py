"""End to end on the real platform: kubectl apply / approval event -> GPU Job -> result."""

from __future__ import annotations

import uuid

import pytest
import yaml

from tests.harness import NAMESPACE

pytestmark = [pytest.mark.platform, pytest.mark.slow]


def editjob_yaml(name: str, url: str, **spec: object) -> str:
    manifest = {
        "apiVersion": "editflow.io/v1alpha1",
        "kind": "EditJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"source": {"url": url}, "prompt": "make the red square blue", **spec},
    }
    return yaml.safe_dump(manifest, allow_unicode=True)


def test_kubectl_applied_editjob_runs_to_success(operator, kubectl, image_host, stack) -> None:
    name = f"apply-{uuid.uuid4().hex[:6]}"
    kubectl(
        "apply",
        "-f",
        "-",
        input=editjob_yaml(name, image_host.url("red.png"), parameters={"steps": 2, "seed": 1}),
    )
    ej = operator.wait_completed(name)
    status = ej["status"]
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 1 and status["resultKey"].endswith(".png")
    assert status["costSeconds"] > 0 and status["completionEventId"]
    header, row = kubectl("-n", NAMESPACE, "get", "editjobs", name).stdout.splitlines()
    assert header.split() == [
        "NAME", "PHASE", "MODEL", "ATTEMPTS", "COST", "GATE", "RESULT", "AGE",
    ]  # fmt: skip
    assert row.split()[:4] == [name, "Succeeded", "longcat-image-edit", "1"]
    # The quality gate's verdict on the result is a column of its own.
    assert row.split()[5] == status["quality"]["verdict"]
    assert status["quality"]["verdict"] in ("ok", "no_visible_change", "global_change")
