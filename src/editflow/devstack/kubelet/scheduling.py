"""Pure fit checks: does a Pod fit this Node, and if not, why (in the scheduler's words)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

Pod = dict[str, Any]
Node = dict[str, Any]

TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Fit:
    ok: bool
    reason: str = ""
    message: str = ""


def pod_requests(pod: Pod) -> dict[str, Decimal]:
    """Effective requests: per container requests (limits when requests are absent), summed;
    init containers run first, so they count with their maximum."""
    spec = pod.get("spec", {})

    def one(container: dict[str, Any]) -> dict[str, Decimal]:
        res = container.get("resources") or {}
        merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        return {k: parse_quantity(v) for k, v in merged.items()}

    total: dict[str, Decimal] = {}
    for container in spec.get("containers", []):
        for key, value in one(container).items():
            total[key] = total.get(key, Decimal(0)) + value
    for container in spec.get("initContainers", []) or []:
        for key, value in one(container).items():
            total[key] = max(total.get(key, Decimal(0)), value)
    return total


def _tolerates(tolerations: list[dict[str, Any]], taint: dict[str, str]) -> bool:
    for tol in tolerations:
        if tol.get("effect") and tol["effect"] != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists":
            if not tol.get("key") or tol["key"] == taint["key"]:
                return True
        elif tol.get("key") == taint["key"] and tol.get("value", "") == taint.get("value", ""):
            return True
    return False


def host_ports(pod: Pod) -> set[tuple[str, int]]:
    """The (protocol, hostPort) pairs a Pod's containers ask the node for."""
    ports: set[tuple[str, int]] = set()
    for container in pod.get("spec", {}).get("containers", []):
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                ports.add((port.get("protocol", "TCP"), int(port["hostPort"])))
    return ports


def _requirement_met(requirement: dict[str, Any], values: dict[str, str]) -> bool:
    """One ``matchExpressions``/``matchFields`` entry against a node's labels or fields."""
    key, operator = requirement["key"], requirement["operator"]
    wanted = requirement.get("values") or []
    if operator == "Exists":
        return key in values
    if operator == "DoesNotExist":
        return key not in values
    if operator == "In":
        return values.get(key) in wanted
    if operator == "NotIn":
        return values.get(key) not in wanted
    if operator in ("Gt", "Lt") and key in values:
        try:
            have, bound = int(values[key]), int(wanted[0])
        except (ValueError, IndexError):
            return False
        return have > bound if operator == "Gt" else have < bound
    return False


def required_affinity_met(pod: Pod, node: Node) -> bool:
    """The Pod's required node affinity: any term, each of whose expressions (labels) and
    fields (only ``metadata.name`` exists) holds. A DaemonSet's Pods are pinned to their node
    this way (``matchFields``), so another node's kubelet must not take them."""
    required = ((pod.get("spec", {}).get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    labels = node["metadata"].get("labels", {})
    fields = {"metadata.name": node["metadata"].get("name", "")}
    return any(
        all(_requirement_met(r, labels) for r in term.get("matchExpressions") or [])
        and all(_requirement_met(r, fields) for r in term.get("matchFields") or [])
        for term in terms
    )


def fits(pod: Pod, node: Node, bound_pods: Iterable[Pod]) -> Fit:
    """Whether ``pod`` fits ``node`` next to the non-terminal ``bound_pods``."""
    spec = pod.get("spec", {})
    bound_pods = list(bound_pods)
    # A cordoned node (kubectl cordon) takes no new Pods, unless they tolerate it.
    unschedulable_taint = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
    if node.get("spec", {}).get("unschedulable") and not _tolerates(
        spec.get("tolerations") or [], unschedulable_taint
    ):
        return Fit(
            False, "NodeUnschedulable", "0/1 nodes are available: 1 node(s) were unschedulable."
        )
    labels = node["metadata"].get("labels", {})
    selector = spec.get("nodeSelector") or {}
    missing = {k: v for k, v in selector.items() if labels.get(k) != v}
    if missing:
        wanted = ", ".join(f"{k}={v}" for k, v in missing.items())
        return Fit(
            False, "NodeSelectorMismatch", f"node(s) didn't match Pod's node selector ({wanted})"
        )
    if not required_affinity_met(pod, node):
        return Fit(
            False,
            "NodeAffinity",
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.",
        )
    tolerations = spec.get("tolerations") or []
    for taint in node.get("spec", {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(
            tolerations, taint
        ):
            return Fit(
                False,
                "TaintNotTolerated",
                f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}",
            )
    wanted_ports = host_ports(pod)
    if wanted_ports:
        active = [p for p in bound_pods if p.get("status", {}).get("phase") not in TERMINAL_PHASES]
        taken = set().union(*(host_ports(p) for p in active))
        if wanted_ports & taken:
            return Fit(
                False,
                "NodePorts",
                "0/1 nodes are available: 1 node(s) didn't have free ports for the requested "
                "pod ports.",
            )
    allocatable = {k: parse_quantity(v) for k, v in node["status"]["allocatable"].items()}
    used: dict[str, Decimal] = {"pods": Decimal(0)}
    for other in bound_pods:
        if other.get("status", {}).get("phase") in TERMINAL_PHASES:
            continue
        used["pods"] += 1
        for key, value in pod_requests(other).items():
            used[key] = used.get(key, Decimal(0)) + value
    wanted = pod_requests(pod)
    wanted["pods"] = Decimal(1)
    short = []
    for key, value in sorted(wanted.items()):
        if value == 0:
            continue
        free = allocatable.get(key, Decimal(0)) - used.get(key, Decimal(0))
        if value > free:
            short.append(key)
    if short:
        names = ", ".join(f"Insufficient {k}" for k in short)
        return Fit(False, "InsufficientResources", f"0/1 nodes are available: 1 {names}.")
    return Fit(True)
