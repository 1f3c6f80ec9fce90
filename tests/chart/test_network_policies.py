"""The chart's NetworkPolicies on the real kube-apiserver (server-side dry run).

The local platform has no CNI, so nothing enforces them here; what the apiserver can check
is that each policy is valid `networking.k8s.io/v1` (its validation refuses, e.g., an
`except` outside its `cidr`, which a hand-written test would miss). Every EDGE_VALUES case
is also dry-run with all its objects in test_install.py.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tests.chart.chartkit import EDGE_VALUES, documents, render_text
from tests.chart.test_install import ensure_namespaces

pytestmark = [pytest.mark.platform, pytest.mark.slow]

CASES = ["defaults", "network-peers", "bundled"]


def policies(tmp_path, values: dict[str, Any]) -> list[dict[str, Any]]:
    objs = documents(render_text(tmp_path, values).stdout)
    return [o for o in objs if o["kind"] == "NetworkPolicy"]


def dry_run(kubectl, objs: list[dict[str, Any]]):
    return kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(objs), check=False
    )


@pytest.mark.parametrize("case", CASES)
def test_network_policies_pass_server_side_dry_run(case, stack, kubectl, tmp_path) -> None:
    values = EDGE_VALUES[case]
    ensure_namespaces(kubectl, "editflow", *values.get("watchNamespaces", []))
    objs = policies(tmp_path, values)
    # A worker policy per namespace, and the operator's.
    assert len(objs) == len({"editflow", *values.get("watchNamespaces", [])}) + 1
    result = dry_run(kubectl, objs)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("created (server dry run)") == len(objs), result.stdout


def test_the_apiserver_refuses_a_broken_policy(stack, kubectl, tmp_path) -> None:
    """The dry run can fail: the worker policy with an `except` outside its network."""
    ensure_namespaces(kubectl, "editflow")
    (worker,) = [p for p in policies(tmp_path, {}) if p["metadata"]["name"] == "editflow-worker"]
    broken = copy.deepcopy(worker)
    for rule in broken["spec"]["egress"]:
        for peer in rule.get("to", []):
            if peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0":
                peer["ipBlock"]["cidr"] = "203.0.113.0/24"
    result = dry_run(kubectl, [broken])
    assert result.returncode != 0
    assert "except" in result.stderr, result.stderr
