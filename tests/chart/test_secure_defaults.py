"""The chart is secure unless told otherwise, and says what to set when it refuses.

Rendering only (the real nats-server side: test_nats_roles.py; the NetworkPolicies on the real
apiserver: test_network_policies.py, and test_install.py's dry run of every EDGE_VALUES case).
"""

from __future__ import annotations

import base64
import ipaddress
from typing import Any

import pytest
import yaml

from editflow.operator.jobspec import job_manifest
from tests.chart.chartkit import CHART, EDGE_VALUES, NAMESPACE, find, helm, render_text, values_file
from tests.chart.test_render import an_editjob, namespaces_of, operator_settings, settings_of

ROLES = ("operator", "gateway", "worker", "publisher")


def containers(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every container of every Pod template the chart renders."""
    found = []
    for obj in objs:
        spec = obj.get("spec") or {}
        pod = (spec.get("template") or {}).get("spec") or (spec if obj["kind"] == "Pod" else {})
        found += pod.get("containers", []) + pod.get("initContainers", [])
    return found


def secret_value(objs: list[dict[str, Any]], name: str, key: str) -> str:
    return base64.b64decode(find(objs, "Secret", name, NAMESPACE)["data"][key]).decode()


def policy(objs: list[dict[str, Any]], name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    return find(objs, "NetworkPolicy", name, namespace)["spec"]


def egress_cidrs(spec: dict[str, Any]) -> list[str]:
    return [
        peer["ipBlock"]["cidr"]
        for rule in spec["egress"]
        for peer in rule.get("to", [])
        if "ipBlock" in peer
    ]


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # An open NATS needs saying so.
        ({"nats": {"auth": {"method": "none"}}}, "at '/nats/auth/insecure': value must be true"),
        # The bundled NATS gives each role its own user: a shared token cannot.
        (
            {"nats": {"bundled": {"enabled": True}, "auth": {"method": "token", "token": "t"}}},
            "at '/nats/auth/method': value must be one of 'userPassword', 'none'",
        ),
        # Your own NATS with a token, a creds file or an nkey, without it.
        (
            {"nats": {"auth": {"method": "token"}}},
            "at '/nats/auth/token': minLength: got 0, want 1",
        ),
        ({"nats": {"auth": {"method": "nkey"}}}, "at '/nats/auth/existingSecret': minLength"),
        ({"nats": {"tls": {"enabled": True}}}, "at '/nats/tls/existingSecret': minLength"),
        # One identity shared by every namespace's warm workers (issue 20 §2).
        (
            {"nats": {"auth": {"method": "token", "token": "t"}}},
            "at '/worker/mode': value must be 'job'",
        ),
        (
            {"nats": {"auth": {"method": "creds", "existingSecret": "c"}}},
            "at '/worker/mode': value must be 'job'",
        ),
        # A role without a user name.
        ({"nats": {"auth": {"users": {"worker": ""}}}}, "/nats/auth/users/worker"),
        # Workers with the shared S3 key (an S3 without STS), without saying so.
        ({"s3": {"attemptCredentials": False}}, "at '/s3/insecureSharedKey': value must be true"),
    ],
)
def test_insecure_combinations_fail_lint_with_what_to_set(values, message, tmp_path) -> None:
    path = values_file(tmp_path, values)
    result = helm("lint", "--strict", str(CHART), "-n", NAMESPACE, "-f", str(path), check=False)
    assert result.returncode != 0, result.stdout
    assert message in result.stdout + result.stderr, result.stdout


def test_an_open_nats_on_purpose_renders_and_says_so(tmp_path) -> None:
    values = {"nats": {"auth": {"method": "none", "insecure": True}}}
    result = render_text(tmp_path, values)
    objs = [d for d in yaml.safe_load_all(result.stdout) if d]
    env = {e["name"] for c in containers(objs) for e in c.get("env", [])}
    assert not env & {"EDITFLOW_NATS__USER", "EDITFLOW_NATS__PASSWORD", "EDITFLOW_NATS__TOKEN"}
    assert not [
        o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"] == "editflow-nats"
    ]


# -- NATS users ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["defaults", "bundled", "existing-secrets"])
def test_each_deployment_connects_as_its_own_user_from_a_secret(case, render, monkeypatch) -> None:
    objs = render(EDGE_VALUES[case])
    secret = "corp-nats" if case == "existing-secrets" else "editflow-nats"
    for deployment, role in (("editflow-operator", "operator"), ("editflow-gateway", "gateway")):
        assert settings_of(objs, monkeypatch, deployment).nats.user == f"editflow-{role}"
        container = find(objs, "Deployment", deployment, NAMESPACE)["spec"]["template"]["spec"][
            "containers"
        ][0]
        (password,) = [e for e in container["env"] if e["name"] == "EDITFLOW_NATS__PASSWORD"]
        assert password == {
            "name": "EDITFLOW_NATS__PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": secret, "key": f"{role}-password"}},
        }


@pytest.mark.parametrize("case", ["defaults", "bundled"])
def test_generated_passwords_are_distinct_and_in_no_plain_value(case, render) -> None:
    objs = render(EDGE_VALUES[case])
    passwords = [secret_value(objs, "editflow-nats", _password_key(role)) for role in ROLES]
    assert len(set(passwords)) == len(ROLES) and min(map(len, passwords)) >= 32
    plain = [e.get("value", "") for c in containers(objs) for e in c.get("env", [])]
    configs = [v for o in objs if o["kind"] == "ConfigMap" for v in o.get("data", {}).values()]
    for password in passwords:
        assert not [v for v in plain + configs if password in v]


def test_your_own_nats_gets_the_users_and_permissions_to_include(render) -> None:
    objs = render({})
    conf = secret_value(objs, "editflow-nats", "authorization.conf")
    for role in ROLES:
        user = f"editflow-worker-{NAMESPACE}" if role == "worker" else f"editflow-{role}"
        assert f'user: "{user}"' in conf
        password = secret_value(objs, "editflow-nats", _password_key(role))
        assert f'password: "{password}"' in conf
    assert 'user: "editflow-worker"' not in conf  # no identity shared by every namespace
    # The bundled server reads the same permissions; its passwords come from its environment.
    bundled = render(EDGE_VALUES["bundled"])
    data = find(bundled, "ConfigMap", "editflow-nats-config", NAMESPACE)["data"]
    assert "include ./authorization.conf" in data["nats.conf"]
    assert f"password: ${NAMESPACE.upper()}_PASSWORD" not in data["authorization.conf"]
    assert f"password: $WORKER_{NAMESPACE.upper()}_PASSWORD" in data["authorization.conf"]
    assert "authorization.conf" not in find(bundled, "Secret", "editflow-nats", NAMESPACE)["data"]


def _password_key(role: str) -> str:
    """The worker's password is its namespace's (one worker identity per namespace)."""
    return f"worker-{NAMESPACE}-password" if role == "worker" else f"{role}-password"


def test_user_names_follow_values(render, monkeypatch) -> None:
    objs = render({"nats": {"auth": {"users": {"operator": "ef-op"}}}})
    assert operator_settings(objs, monkeypatch).nats.user == "ef-op"
    assert 'user: "ef-op"' in secret_value(objs, "editflow-nats", "authorization.conf")


# -- the event-signing key -----------------------------------------------------------------


def test_a_signing_key_is_generated_and_read_from_a_file(render) -> None:
    objs = render({})
    assert len(secret_value(objs, "editflow-events", "signing-key")) == 48
    for deployment in ("editflow-operator", "editflow-gateway"):
        pod = find(objs, "Deployment", deployment, NAMESPACE)["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["EDITFLOW_EVENTS__SIGNING_KEY_FILE"] == "/etc/editflow/events/signing-key"
        assert "EDITFLOW_EVENTS__SIGNING_KEY" not in env
        volume = next(v for v in pod["volumes"] if v["name"] == "events-signing")
        assert volume["secret"]["secretName"] == "editflow-events"


def test_signing_can_be_brought_or_turned_off(render) -> None:
    brought = render({"events": {"signingKey": {"existingSecret": "oa-key"}}})
    assert not [o for o in brought if o["metadata"]["name"] == "editflow-events"]
    off = render({"events": {"signingKey": {"enabled": False}}})
    env = {e["name"] for c in containers(off) for e in c.get("env", [])}
    assert "EDITFLOW_EVENTS__SIGNING_KEY_FILE" not in env


# -- NetworkPolicies -----------------------------------------------------------------------


PRIVATE = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8")


@pytest.mark.parametrize("case", ["defaults", "extra-namespaces", "network-peers", "bundled"])
def test_worker_policy_selects_the_operators_worker_pods_everywhere(case, render, monkeypatch):
    values = EDGE_VALUES[case]
    objs = render(values)
    settings = operator_settings(objs, monkeypatch)
    for namespace in namespaces_of(values):
        spec = policy(objs, "editflow-worker", namespace)
        job = job_manifest(an_editjob(namespace), 1, settings.operator)
        labels = job["spec"]["template"]["metadata"]["labels"]
        assert spec["podSelector"]["matchLabels"].items() <= labels.items()
        assert spec["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in spec


def test_worker_egress_is_dns_s3_nats_public_and_allowed_networks_only(render) -> None:
    spec = policy(render(EDGE_VALUES["network-peers"]), "editflow-worker", "team-a")
    blocks = [p["ipBlock"] for r in spec["egress"] for p in r.get("to", []) if "ipBlock" in p]
    (public,) = [b for b in blocks if b["cidr"] == "0.0.0.0/0"]
    assert set(PRIVATE) <= set(public["except"])
    # Every address rule is public, worker.allowCidrs, NATS/S3 by address, or the user's own.
    assert sorted(egress_cidrs(spec)) == sorted(
        ["0.0.0.0/0", "::/0", "10.40.0.0/16", "10.20.0.7/32", "10.30.0.9/32", "10.50.0.0/16"]
    )
    by_port = {
        (port["port"], peer.get("ipBlock", {}).get("cidr") or str(peer.get("namespaceSelector")))
        for rule in spec["egress"]
        for port in rule.get("ports", [])
        for peer in rule.get("to", [{}])
    }
    assert (4443, "10.20.0.7/32") in by_port  # tls://10.20.0.7:4443
    assert (9000, "10.30.0.9/32") in by_port  # S3 10.30.0.9:9000
    assert (4222, "{'matchLabels': {'kubernetes.io/metadata.name': 'messaging'}}") in by_port
    assert {("53", "UDP"), ("53", "TCP")} <= {
        (str(p["port"]), p["protocol"]) for r in spec["egress"] if "to" not in r for p in r["ports"]
    }


def test_public_egress_excludes_the_metadata_address() -> None:
    """169.254.169.254 (cloud metadata) and the cluster's private ranges fall in an `except`."""
    for address in ("169.254.169.254", "10.96.0.1", "192.168.1.1", "127.0.0.1"):
        ip = ipaddress.ip_address(address)
        assert any(ip in ipaddress.ip_network(block) for block in PRIVATE), address


def test_operator_takes_ingress_only_on_its_health_and_metrics_ports(render) -> None:
    objs = render(EDGE_VALUES["network-peers"])
    spec = policy(objs, "editflow-operator")
    deploy = find(objs, "Deployment", "editflow-operator", NAMESPACE)
    ports = {
        p["containerPort"] for p in deploy["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    (rule,) = spec["ingress"]
    assert {p["port"] for p in rule["ports"]} == ports
    assert rule["from"] == EDGE_VALUES["network-peers"]["networkPolicy"]["metricsFrom"]
    selector = spec["podSelector"]["matchLabels"]
    assert selector.items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    api = next(r for r in spec["egress"] if {p["port"] for p in r["ports"]} == {443, 6443})
    assert api["to"] == [{"ipBlock": {"cidr": "192.168.10.0/24"}}]


def test_network_policies_can_be_left_out(render) -> None:
    objs = render({"networkPolicy": {"enabled": False}})
    assert not [o for o in objs if o["kind"] == "NetworkPolicy"]
