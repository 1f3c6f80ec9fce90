"""The chart's ValidatingAdmissionPolicies on the real kube-apiserver (issue 20 §3): a tenant
who may create EditJobs in namespace A is refused, with the field named, when it points its
output at B's results, resolves with a key outside its edit, claims an approval's event id or
an ``ej-`` name, or writes an EditOutcome; the operator's ServiceAccount is not.

The tenant is a ServiceAccount with full rights on EditJobs and EditOutcomes in A (RBAC lets
it), so every refusal here is the policy's. The binding selects the release's watched
namespaces only, so the session's other tests are not affected.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
import yaml

from editflow.devstack import localmode
from editflow.devstack.kubeapi import KubeClient
from tests.chart.chartkit import documents, render_text

pytestmark = [pytest.mark.platform, pytest.mark.slow]

POLICY_KINDS = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


def editjob(name: str, namespace: str, **spec: object) -> str:
    body = {
        "apiVersion": "editflow.io/v1alpha1",
        "kind": "EditJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {"url": "https://cdn.example.com/a.png"},
            "prompt": "make it blue",
            **spec,
        },
    }
    return json.dumps(body)


@pytest.fixture(scope="module")
def boundary(stack, kubectl, tmp_path_factory) -> Iterator[dict]:
    tag = uuid.uuid4().hex[:6]
    release, release_ns = f"vap{tag}", f"vap-rel-{tag}"
    team_a, team_b = f"vap-a-{tag}", f"vap-b-{tag}"
    api = KubeClient(stack.kubeconfig)
    localmode.install_crd(api)
    for ns in (release_ns, team_a, team_b):
        kubectl("create", "namespace", ns)
    objs = documents(
        render_text(
            tmp_path_factory.mktemp("vap"),
            {"watchNamespaces": [team_a, team_b]},
            namespace=release_ns,
            release=release,
        ).stdout
    )
    policies = [o for o in objs if o["kind"] in POLICY_KINDS]
    assert len(policies) == 4
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(policies))
    operator_sa = f"{release}-editflow-operator"
    kubectl("-n", release_ns, "create", "serviceaccount", operator_sa)
    kubectl("-n", team_a, "create", "serviceaccount", "tenant")
    kubectl(
        "-n", team_a, "create", "role", "everything-editflow",
        "--verb=*", "--resource=editjobs.editflow.io,editoutcomes.editflow.io",
    )  # fmt: skip
    for subject in (f"{team_a}:tenant", f"{release_ns}:{operator_sa}"):
        kubectl(
            "-n", team_a, "create", "rolebinding", f"rb-{subject.split(':')[1]}",
            "--role=everything-editflow", f"--serviceaccount={subject}",
        )  # fmt: skip
    tokens = {
        "tenant": kubectl("-n", team_a, "create", "token", "tenant").stdout.strip(),
        "operator": kubectl("-n", release_ns, "create", "token", operator_sa).stdout.strip(),
    }
    ctx = {"a": team_a, "b": team_b, "tokens": tokens}

    # A new policy takes a moment to be enforced: wait until a known-bad object is refused.
    def enforced() -> bool:
        probe = editjob(f"probe-{uuid.uuid4().hex[:4]}", team_a, output={"prefix": "results/x/"})
        out = kubectl("apply", "--dry-run=server", "-f", "-", input=probe,
                      token=tokens["tenant"], check=False)  # fmt: skip
        return out.returncode != 0 and "spec.output.prefix" in out.stderr

    deadline = time.monotonic() + 60
    while not enforced():
        assert time.monotonic() < deadline, "the admission policy was never enforced"
        time.sleep(0.5)
    try:
        yield ctx
    finally:
        kubectl("delete", "-f", "-", input=yaml.safe_dump_all(policies), check=False)
        for ns in (release_ns, team_a, team_b):
            kubectl("delete", "namespace", ns, "--wait=false", check=False)
        api.close()


def apply(kubectl, boundary: dict, who: str, body: str):
    return kubectl("apply", "-f", "-", input=body, token=boundary["tokens"][who], check=False)


def test_an_output_prefix_in_another_namespace_is_refused_naming_the_field(
    kubectl, boundary
) -> None:
    a, b = boundary["a"], boundary["b"]
    out = apply(kubectl, boundary, "tenant",
                editjob("steal", a, output={"prefix": f"results/{b}/stolen"}))  # fmt: skip
    assert out.returncode != 0
    assert "spec.output.prefix" in out.stderr and f"results/{a}/" in out.stderr, out.stderr
    climbing = apply(kubectl, boundary, "tenant",
                     editjob("climb", a, output={"prefix": f"results/{a}/../{b}"}))  # fmt: skip
    assert climbing.returncode != 0
    ok = apply(kubectl, boundary, "tenant",
               editjob("own", a, output={"prefix": f"results/{a}/posters"}))  # fmt: skip
    assert ok.returncode == 0, ok.stderr


def test_an_approval_event_id_or_bridge_name_is_the_operators_alone(kubectl, boundary) -> None:
    a = boundary["a"]
    claim = editjob(
        "claim", a, oa={"formId": "F-1", "approvalInstanceId": "A-1", "eventId": "e-123"}
    )
    out = apply(kubectl, boundary, "tenant", claim)
    assert out.returncode != 0 and "spec.oa.eventId" in out.stderr, out.stderr
    named = apply(kubectl, boundary, "tenant", editjob("ej-e-123", a))
    assert named.returncode != 0 and "ej-" in out.stderr + named.stderr, named.stderr
    bridge = editjob(
        "ej-e-123", a, oa={"formId": "F-1", "approvalInstanceId": "A-1", "eventId": "e-123"}
    )
    by_operator = apply(kubectl, boundary, "operator", bridge)
    assert by_operator.returncode == 0, by_operator.stderr


def test_a_resolve_key_outside_the_edit_is_refused(kubectl, boundary) -> None:
    a, b = boundary["a"], boundary["b"]
    assert apply(kubectl, boundary, "tenant", editjob("review", a)).returncode == 0

    def annotate(key: str):
        return kubectl(
            "-n", a, "annotate", "--overwrite", "editjob", "review",
            f"editflow.io/resolve-result-key={key}",
            token=boundary["tokens"]["tenant"], check=False,
        )  # fmt: skip

    refused = annotate(f"uploads/{b}/secret.png")
    assert refused.returncode != 0
    assert "resolve-result-key" in refused.stderr and f"results/{a}/review/" in refused.stderr
    assert annotate(f"results/{a}/other-edit/attempt-1/result.png").returncode != 0
    fine = annotate(f"results/{a}/review/designer/fixed.png")
    assert fine.returncode == 0, fine.stderr


def test_only_the_operator_writes_edit_outcomes(kubectl, boundary) -> None:
    a = boundary["a"]

    def outcome(name: str) -> str:
        return json.dumps(
            {
                "apiVersion": "editflow.io/v1alpha1",
                "kind": "EditOutcome",
                "metadata": {"name": name, "namespace": a},
                "spec": {"editjob": "review", "approvalEventId": "e-forged"},
            }
        )

    forged = apply(kubectl, boundary, "tenant", outcome("forged"))
    assert forged.returncode != 0 and "EditOutcomes are the operator's" in forged.stderr
    assert apply(kubectl, boundary, "operator", outcome("real")).returncode == 0
