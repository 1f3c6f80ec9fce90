"""The EditJob CRD travels with the release (real kube-apiserver v1.34, pinned helm).

A cluster that got the CRD from the old chart's crds/ (here: as the local platform creates
it, without Helm) is taken over by `helm install --take-ownership`; a `helm upgrade` to a
chart whose CRD has a new field makes the apiserver accept and enforce that field, and
EditJobs survive the upgrade; `helm uninstall` keeps the CRD and its EditJobs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from editflow.devstack import localmode
from editflow.devstack.kubeapi import KubeClient
from editflow.devstack.procs import wait_until
from tests.chart.chartkit import CHART, helm, values_file
from tests.chart.test_install import NO_NATS, ensure_namespaces

pytestmark = [pytest.mark.platform, pytest.mark.slow]

RELEASE, NAMESPACE, CRD = "crdup", "ef-crd", "editjobs.editflow.io"
# No Pods: only the CRD's life is under test here.
VALUES = {"operator": {"replicas": 0}, "gateway": {"enabled": False}, "nats": {"url": NO_NATS}}


def editjob(name: str, **spec: Any) -> str:
    body = {"source": {"url": "https://example.com/a.png"}, "prompt": "把背景换成海边", **spec}
    return yaml.safe_dump(
        {
            "apiVersion": "editflow.io/v1alpha1",
            "kind": "EditJob",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": body,
        },
        allow_unicode=True,
    )


def chart_with_copies(tmp_path: Path) -> Path:
    """A copy of the chart, one version on, whose CRD adds `spec.copies` (1 to 4) and a
    printer column: the kind of change a real upgrade brings."""
    chart = tmp_path / "editflow"
    shutil.copytree(CHART, chart)
    source = chart / "files" / "crds" / "editjob.yaml"
    crd = yaml.safe_load(source.read_text())
    version = crd["spec"]["versions"][0]
    version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["copies"] = {
        "type": "integer",
        "minimum": 1,
        "maximum": 4,
        "description": "a field a later chart adds (hypothetical)",
    }
    version["additionalPrinterColumns"].append(
        {"name": "Copies", "type": "integer", "jsonPath": ".spec.copies"}
    )
    source.write_text(yaml.safe_dump(crd, sort_keys=False, allow_unicode=True))
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["version"] = "0.1.1"
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return chart


def crd_object(kubectl) -> dict[str, Any]:
    return json.loads(kubectl("get", "crd", CRD, "-o", "json").stdout)


def spec_properties(crd: dict[str, Any]) -> dict[str, Any]:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"]["properties"]


def test_helm_upgrade_changes_the_crd_schema_and_uninstall_keeps_it(
    stack, kubectl, tmp_path
) -> None:
    ensure_namespaces(kubectl, NAMESPACE)
    api = KubeClient(stack.kubeconfig)
    localmode.install_crd(api)  # a CRD Helm does not own, as the old chart's crds/ left it
    values = values_file(tmp_path, VALUES)

    def helm_k(*args: str, check: bool = True):
        return helm(*args, "-n", NAMESPACE, kubeconfig=stack.kubeconfig, check=check)

    try:
        helm_k("install", RELEASE, str(CHART), "-f", str(values), "--take-ownership")
        owned = crd_object(kubectl)["metadata"]
        assert owned["annotations"]["meta.helm.sh/release-name"] == RELEASE
        assert owned["annotations"]["helm.sh/resource-policy"] == "keep"
        assert "copies" not in spec_properties(crd_object(kubectl))
        kubectl("apply", "-f", "-", input=editjob("kept-across-upgrade"))
        early = kubectl(
            "create", "--dry-run=server", "-f", "-", input=editjob("early", copies=2), check=False
        )
        assert early.returncode != 0 and "copies" in early.stderr, early.stderr

        helm_k("upgrade", RELEASE, str(chart_with_copies(tmp_path)), "-f", str(values))
        upgraded = crd_object(kubectl)
        assert spec_properties(upgraded)["copies"]["maximum"] == 4
        columns = upgraded["spec"]["versions"][0]["additionalPrinterColumns"]
        assert "Copies" in [c["name"] for c in columns]
        answers: list[Any] = []

        def accepted() -> bool:
            # The apiserver serves a changed schema a moment after the CRD is updated.
            answers.append(
                kubectl(
                    "create",
                    "--dry-run=server",
                    "-o",
                    "json",
                    "-f",
                    "-",
                    input=editjob("two-copies", copies=2),
                    check=False,
                )
            )
            return answers[-1].returncode == 0

        try:
            wait_until(accepted, timeout=30, what="an EditJob with spec.copies to be accepted")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}: {answers[-1].stderr}") from None
        assert json.loads(answers[-1].stdout)["spec"]["copies"] == 2  # kept, not pruned
        too_many = kubectl(
            "create", "--dry-run=server", "-f", "-", input=editjob("nine", copies=9), check=False
        )
        assert too_many.returncode != 0 and "spec.copies" in too_many.stderr, too_many.stderr
        kubectl("-n", NAMESPACE, "get", "editjob", "kept-across-upgrade")

        helm_k("uninstall", RELEASE, "--wait")
        kept = crd_object(kubectl)
        assert "copies" in spec_properties(kept)
        assert helm_k("status", RELEASE, check=False).returncode != 0
        kubectl("-n", NAMESPACE, "get", "editjob", "kept-across-upgrade")
    finally:
        helm_k("uninstall", RELEASE, check=False)
        kubectl(
            "-n", NAMESPACE, "delete", "editjob", "kept-across-upgrade", "--wait=false", check=False
        )
        # Back to the schema (and the Helm-free ownership) the other tests start from.
        localmode.install_crd(api)
        api.close()
