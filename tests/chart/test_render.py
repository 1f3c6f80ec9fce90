"""The chart renders, lints and refuses bad values, without a cluster.

Each rendering test runs on every value set in ``EDGE_VALUES`` (defaults, gateway off, extra
namespaces, existing secrets, a created models PVC, an existing claim, everything on).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
import yaml

from editflow.core.settings import Settings
from editflow.operator.jobspec import job_manifest
from tests.chart.chartkit import (
    CHART,
    EDGE_VALUES,
    NAMESPACE,
    USER_OBJECTS,
    find,
    helm,
    is_hook,
    render_text,
    values_file,
)

CASES = sorted(EDGE_VALUES)


def namespaces_of(values: dict[str, Any]) -> list[str]:
    return [NAMESPACE, *values.get("watchNamespaces", [])]


def container_env(objs: list[dict[str, Any]], deployment: str) -> dict[str, str]:
    """A Deployment's plain env (what its settings object reads)."""
    deploy = find(objs, "Deployment", deployment, NAMESPACE)
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def settings_of(
    objs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, deployment: str
) -> Settings:
    """The settings a Deployment's process would run with (secret files left out)."""
    for name in list(os.environ):
        if name.startswith("EDITFLOW_"):
            monkeypatch.delenv(name)
    for name, value in container_env(objs, deployment).items():
        if not name.endswith("_FILE"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("EDITFLOW_NAMESPACE", NAMESPACE)  # the Pod's own namespace (fieldRef)
    return Settings()


def operator_settings(objs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Settings:
    return settings_of(objs, monkeypatch, "editflow-operator")


def an_editjob(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "editflow.io/v1alpha1",
        "kind": "EditJob",
        "metadata": {"name": "ej-poster", "namespace": namespace, "uid": "u-1"},
        "spec": {"source": {"url": "https://example.com/a.png"}, "prompt": "把背景换成海边"},
    }


def job_references(job: dict[str, Any]) -> set[tuple[str, str]]:
    """(kind, name) of every namespaced object a worker Job's Pod needs."""
    pod = job["spec"]["template"]["spec"]
    refs = {("ServiceAccount", pod.get("serviceAccountName", "default"))}
    for container in pod["containers"]:
        for source in container.get("envFrom") or []:
            if "configMapRef" in source:
                refs.add(("ConfigMap", source["configMapRef"]["name"]))
            if "secretRef" in source:
                refs.add(("Secret", source["secretRef"]["name"]))
        for item in container.get("env") or []:
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                refs.add(("Secret", ref["name"]))
    for volume in pod.get("volumes") or []:
        if "persistentVolumeClaim" in volume:
            refs.add(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
        if "secret" in volume:
            refs.add(("Secret", volume["secret"]["secretName"]))
        if "configMap" in volume:
            refs.add(("ConfigMap", volume["configMap"]["name"]))
    return refs


def pod_references(pod: dict[str, Any]) -> set[tuple[str, str]]:
    return job_references({"spec": {"template": {"spec": pod}}})


def rendered_keys(objs: list[dict[str, Any]], namespace: str) -> set[tuple[str, str]]:
    return {
        (o["kind"], o["metadata"]["name"])
        for o in objs
        if o["metadata"].get("namespace") == namespace
    }


# -- lint and render -----------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_helm_lint_strict_passes(case: str, tmp_path) -> None:
    path = values_file(tmp_path, EDGE_VALUES[case])
    result = helm("lint", "--strict", str(CHART), "-n", NAMESPACE, "-f", str(path))
    assert "0 chart(s) failed" in result.stdout, result.stdout


@pytest.mark.parametrize("case", CASES)
def test_renders_every_object_labelled_and_in_a_watched_namespace(case: str, render) -> None:
    values = EDGE_VALUES[case]
    objs = render(values)
    allowed = set(namespaces_of(values))
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "PriorityClass"}
    for obj in objs:
        meta = obj["metadata"]
        assert meta["labels"]["app.kubernetes.io/instance"] == "editflow", meta
        assert meta["labels"]["app.kubernetes.io/part-of"] == "editflow", meta
        if obj["kind"] in cluster_scoped:
            assert "namespace" not in meta
        else:
            assert meta.get("namespace") in allowed, (obj["kind"], meta)


def test_gateway_off_renders_no_gateway_object(render) -> None:
    objs = render(EDGE_VALUES["gateway-off"])
    assert not [o for o in objs if o["metadata"]["name"].startswith("editflow-gateway")]
    pod = find(objs, "Pod", "editflow-test", NAMESPACE)
    env = {e["name"] for e in pod["spec"]["containers"][0]["env"]}
    assert "TEST_GATEWAY_URL" not in env


def test_gateway_always_has_a_token_from_a_secret(render) -> None:
    objs = render({})
    deploy = find(objs, "Deployment", "editflow-gateway", NAMESPACE)
    spec = deploy["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["EDITFLOW_GATEWAY__TOKEN_FILE"] == "/etc/editflow/gateway/token"
    token_volume = next(v for v in spec["volumes"] if v["name"] == "token")
    secret = find(objs, "Secret", token_volume["secret"]["secretName"], NAMESPACE)
    assert len(secret["data"]["token"]) >= 40  # base64 of 40 random characters
    probes = spec["containers"][0]
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["ports"][0]["containerPort"] == 8000


def test_operator_pod_is_hardened_and_probed(render) -> None:
    deploy = find(render({}), "Deployment", "editflow-operator", NAMESPACE)
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    pod = deploy["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    # Credentials never appear as plain values: files or secretKeyRef only.
    plain = {e["name"]: e.get("value", "") for e in container["env"]}
    assert "EDITFLOW_S3__ACCESS_KEY" not in plain and "EDITFLOW_S3__SECRET_KEY" not in plain
    assert plain["EDITFLOW_S3__ACCESS_KEY_FILE"].startswith("/etc/editflow/s3/")


def test_only_the_operator_automounts_an_api_token(render) -> None:
    objs = render(EDGE_VALUES["everything-on"])
    for obj in objs:
        if obj["kind"] == "ServiceAccount":
            assert obj["automountServiceAccountToken"] is False, obj["metadata"]
        if obj["kind"] == "Deployment":
            pod = obj["spec"]["template"]["spec"]
            expected = obj["metadata"]["name"] == "editflow-operator"
            assert pod["automountServiceAccountToken"] is expected, obj["metadata"]["name"]


def test_operator_rbac_is_least_privilege(render) -> None:
    objs = render(EDGE_VALUES["extra-namespaces"])
    for namespace in namespaces_of(EDGE_VALUES["extra-namespaces"]):
        role = find(objs, "Role", "editflow-operator", namespace)
        resources = {r for rule in role["rules"] for r in rule["resources"]}
        assert "secrets" not in resources and "configmaps" not in resources
        assert all("*" not in rule["verbs"] for rule in role["rules"])
        binding = find(objs, "RoleBinding", "editflow-operator", namespace)
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "editflow-operator", "namespace": NAMESPACE}
        ]
    cluster = find(objs, "ClusterRole", "editflow-operator-editflow")
    assert cluster["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["list", "watch"],
        },
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    ]


def test_operator_settings_follow_values(render, monkeypatch) -> None:
    values = EDGE_VALUES["everything-on"]
    settings = operator_settings(render(values), monkeypatch)
    op = settings.operator
    assert op.namespaces == ["editflow", "team-a"]
    assert op.gpus_per_job == 2
    assert op.worker_resources == {
        "requests": {"cpu": "4", "memory": "24Gi"},
        "limits": {"memory": "32Gi"},
    }
    assert op.node_selector == {"nvidia.com/gpu.present": "true"}
    assert op.tolerations == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert op.priority_class == "editflow-worker"
    assert op.retention_seconds == 2592000
    assert op.sample_rate == 0.1
    assert op.worker_image == "editflow/worker:0.1.0"
    assert settings.nats.url == "nats://nats.nats.svc:4222"


def test_gateway_settings_follow_values(render, monkeypatch) -> None:
    values = EDGE_VALUES["everything-on"]
    objs = render(values)
    env = container_env(objs, "editflow-gateway")
    assert env["EDITFLOW_GATEWAY__TOKEN_FILE"] == "/etc/editflow/gateway/token"
    gateway = settings_of(objs, monkeypatch, "editflow-gateway").gateway
    assert gateway.port == 8000
    assert gateway.host == "0.0.0.0"  # noqa: S104 - a Pod listens on its own IP
    assert gateway.cors_origins == ["https://oa.example.com"]
    assert gateway.rate_limit_per_minute == 20
    assert gateway.wait_timeout_seconds == 300
    assert not gateway.provision_streams  # the operator owns the streams


def test_generated_s3_keys_are_the_same_in_every_namespace(render) -> None:
    values = EDGE_VALUES["extra-namespaces"]
    objs = render(values)
    secrets = [find(objs, "Secret", "editflow-s3", ns) for ns in namespaces_of(values)]
    assert len({json.dumps(s["data"], sort_keys=True) for s in secrets}) == 1
    assert set(secrets[0]["data"]) == {"access-key", "secret-key"}


@pytest.mark.parametrize("case", CASES)
def test_every_object_a_worker_job_references_is_rendered(case: str, render, monkeypatch) -> None:
    """The Job the operator builds (operator/jobspec.py, with the chart's operator settings)
    finds its ServiceAccount, ConfigMap, Secret and claim in every namespace it can run in."""
    values = EDGE_VALUES[case]
    objs = render(values)
    settings = operator_settings(objs, monkeypatch)
    assert settings.operator.namespaces == namespaces_of(values)
    brought = USER_OBJECTS.get(case, set())
    for namespace in settings.operator.namespaces:
        job = job_manifest(an_editjob(namespace), 1, settings.operator)
        missing = job_references(job) - rendered_keys(objs, namespace) - brought
        assert not missing, f"{case}: worker Job in {namespace} references missing {missing}"
        pod = job["spec"]["template"]["spec"]
        if values.get("priorityClass", {}).get("create"):
            find(objs, "PriorityClass", pod["priorityClassName"])


@pytest.mark.parametrize("case", CASES)
def test_every_object_the_chart_pods_reference_is_rendered(case: str, render) -> None:
    objs = render(EDGE_VALUES[case])
    brought = USER_OBJECTS.get(case, set())
    hooks = {(o["kind"], o["metadata"]["name"]) for o in objs if is_hook(o)}
    # What every namespace has: the default ServiceAccount and the cluster's CA bundle.
    builtin = {("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default")}
    available = rendered_keys(objs, NAMESPACE) | brought | builtin
    for obj in objs:
        if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
            pod = obj["spec"]["template"]["spec"]
        elif obj["kind"] == "Pod":
            pod = obj["spec"]
        else:
            continue
        missing = pod_references(pod) - available
        assert not missing, f"{obj['metadata']['name']} references missing {missing}"
        if obj["kind"] == "Pod":  # the helm test Pod uses only hook objects
            assert pod_references(pod) - builtin <= hooks


def test_existing_secrets_are_referenced_not_created(render) -> None:
    objs = render(EDGE_VALUES["existing-secrets"])
    names = {o["metadata"]["name"] for o in objs if o["kind"] == "Secret"}
    assert names == set(), names
    deploy = find(objs, "Deployment", "editflow-operator", NAMESPACE)
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs["EDITFLOW_NATS__PASSWORD"] == {"name": "corp-nats", "key": "password"}
    assert refs["EDITFLOW_OPERATOR__CALLBACK_SIGNING_KEY"]["name"] == "corp-callback-key"
    assert refs["EDITFLOW_OPERATOR__ALERT_WEBHOOK_URL"]["name"] == "corp-alert-webhook"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EDITFLOW_NATS__TLS_CA_FILE"] == "/etc/editflow/nats-tls/ca.crt"
    assert env["EDITFLOW_NATS__TLS_CERT_FILE"] == "/etc/editflow/nats-tls/tls.crt"
    assert env["EDITFLOW_EVENTS__SIGNING_KEY_FILE"] == "/etc/editflow/events/signing-key"
    assert env["EDITFLOW_OPERATOR__S3_SECRET"] == "corp-s3"


def test_bundled_servers_use_the_chart_credentials(render, monkeypatch) -> None:
    objs = render(EDGE_VALUES["bundled"])
    settings = operator_settings(objs, monkeypatch)
    assert settings.nats.url == "nats://editflow-nats.editflow.svc:4222"
    assert settings.s3.endpoint == "editflow-minio.editflow.svc:9000"
    nats = find(objs, "StatefulSet", "editflow-nats", NAMESPACE)["spec"]["template"]["spec"]
    assert "--auth=$(NATS_TOKEN)" in nats["containers"][0]["args"]
    token = nats["containers"][0]["env"][1]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "editflow-nats", "key": "token"}
    find(objs, "Secret", "editflow-nats", NAMESPACE)
    minio = find(objs, "StatefulSet", "editflow-minio", NAMESPACE)["spec"]["template"]["spec"]
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
        for e in minio["containers"][0]["env"]
        if "valueFrom" in e
    }
    assert refs == {"MINIO_ROOT_USER": "editflow-s3", "MINIO_ROOT_PASSWORD": "editflow-s3"}
    bucket = find(objs, "Job", "editflow-minio-bucket", NAMESPACE)
    assert bucket["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    configmap = find(objs, "ConfigMap", "editflow-worker", "team-a")
    assert configmap["data"]["EDITFLOW_S3__ENDPOINT"] == "editflow-minio.editflow.svc:9000"


def test_created_models_claim_exists_in_every_namespace(render) -> None:
    values = EDGE_VALUES["pvc-models"]
    objs = render(values)
    for namespace in namespaces_of(values):
        claim = find(objs, "PersistentVolumeClaim", "editflow-models", namespace)
        assert claim["spec"]["storageClassName"] == "nfs"


def test_prometheus_rule_alerts_on_timeouts_reviews_and_a_dead_operator(render) -> None:
    objs = render(EDGE_VALUES["everything-on"])
    rule = find(objs, "PrometheusRule", "editflow", NAMESPACE)
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {
        "EditflowOperatorDown",
        "EditflowWatchStale",
        "EditflowEditTimeouts",
        "EditflowNeedsReviewRateHigh",
    } <= set(alerts)
    assert 'reason="DeadlineExceeded"' in alerts["EditflowEditTimeouts"]["expr"]
    assert "{{ $labels.namespace }}" in alerts["EditflowEditTimeouts"]["annotations"]["summary"]
    monitor = find(objs, "ServiceMonitor", "editflow", NAMESPACE)
    assert monitor["metadata"]["labels"]["release"] == "prom"


# -- values.schema.json ----------------------------------------------------------------

BAD_VALUES = {
    "string for an integer": ({"limits": {"maxAttempts": "three"}}, "maxAttempts"),
    "negative GPUs": ({"worker": {"gpusPerJob": -1}}, "gpusPerJob"),
    "unknown key": ({"operator": {"replicas": 2}}, "replicas"),
    "unknown top-level key": ({"nat": {"url": "nats://x:4222"}}, "nat"),
    "bool as string": ({"gateway": {"enabled": "yes"}}, "enabled"),
    "enum": ({"nats": {"auth": {"method": "kerberos"}}}, "method"),
    "pull policy": ({"operator": {"image": {"pullPolicy": "Sometimes"}}}, "pullPolicy"),
    "namespace name": ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
    "endpoint with scheme": ({"s3": {"endpoint": "http://minio:9000"}}, "endpoint"),
    "sample rate above 1": ({"limits": {"sampleRate": 1.5}}, "sampleRate"),
    "integer toleration field": (
        {"worker": {"tolerations": [{"key": "x", "tolerationSeconds": 30}]}},
        "tolerationSeconds",
    ),
    "model not in the registry": ({"models": {"default": "sd-1.5"}}, "default"),
    "list for a map": ({"worker": {"nodeSelector": ["gpu"]}}, "nodeSelector"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_refuses_wrong_values(case: str, tmp_path) -> None:
    values, field = BAD_VALUES[case]
    result = render_text(tmp_path, values, check=False)
    assert result.returncode != 0, f"{case}: rendered although invalid"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert field in result.stderr, result.stderr


def test_schema_closes_every_object() -> None:
    """additionalProperties: false wherever the schema lists properties."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = []

    def walk(node: dict[str, Any], path: str) -> None:
        if "properties" in node:
            if node.get("additionalProperties") is not False:
                open_objects.append(path or "/")
            for key, child in node["properties"].items():
                walk(child, f"{path}/{key}")

    walk(schema, "")
    assert not open_objects


def test_every_value_is_documented() -> None:
    """Each value in values.yaml has a `# --` comment (helm-docs style): on itself, or on
    the map or list it belongs to."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    parents: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        while parents and parents[-1][0] >= indent:
            parents.pop()
        above = number - 1
        while above >= 0 and lines[above].strip().startswith("#"):
            if lines[above].strip().startswith("# --"):
                break
            above -= 1
        documented = above >= 0 and lines[above].strip().startswith("# --")
        covered = documented or any(doc for _, doc in parents)
        key, _, rest = stripped.partition(":")
        if rest.strip() and not covered:
            undocumented.append(f"line {number + 1}: {key}")
        parents.append((indent, covered))
    assert not undocumented


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"nats": {"auth": {"method": "creds"}}}, "needs nats.auth.existingSecret"),
        ({"nats": {"auth": {"method": "token"}}}, "nats.auth.token"),
        ({"nats": {"tls": {"enabled": True}}}, "nats.tls.enabled needs nats.tls.existingSecret"),
        (
            {
                "nats": {
                    "bundled": {"enabled": True},
                    "auth": {"method": "nkey", "existingSecret": "k"},
                }
            },
            "nats.bundled.enabled takes nats.auth.method none, token or userPassword",
        ),
    ],
)
def test_incomplete_credentials_fail_with_a_clear_message(values, message, tmp_path) -> None:
    result = render_text(tmp_path, values, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


# -- the CRD -----------------------------------------------------------------------------


def test_chart_crd_equals_the_generated_crd() -> None:
    """crds/editjob.yaml is `editflow operator crd` output, byte for byte."""
    generated = subprocess.run(
        [sys.executable, "-m", "editflow.cli.main", "operator", "crd"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    on_disk = (CHART / "crds" / "editjob.yaml").read_text()
    assert on_disk == generated, "run `editflow operator crd --write`"
    assert yaml.safe_load(on_disk)["metadata"]["name"] == "editjobs.editflow.io"


def test_refuses_kubernetes_older_than_1_29(tmp_path) -> None:
    """Pod failure policies, bound tokens and the CRD's CEL rules need 1.29 or later."""
    old = render_text(tmp_path, {}, "--kube-version", "1.28.9", check=False)
    assert old.returncode != 0 and "kubeVersion" in old.stderr, old.stderr
    render_text(tmp_path, {}, "--kube-version", "1.29.0")
