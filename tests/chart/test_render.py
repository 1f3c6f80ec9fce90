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
from editflow.operator.crd import editjob_crd
from editflow.operator.jobspec import job_manifest
from editflow.operator.leader import lease_config
from editflow.operator.warmjobs import warm_job_manifest
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
CRD_NAME = "editjobs.editflow.io"


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
        if "secret" in volume and not volume["secret"].get("optional"):
            # An optional Secret (the desk's reviewer tokens) may be missing by design.
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
    cluster_scoped = {
        "ClusterRole",
        "ClusterRoleBinding",
        "PriorityClass",
        "CustomResourceDefinition",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
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
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
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
        assert "configmaps" not in resources
        # Secrets: create (each attempt's short-lived S3 keys, the warm-pool key); read and
        # rotate only the warm-pool key, by name: never another Secret of the namespace.
        secret_rules = [r for r in role["rules"] if "secrets" in r["resources"]]
        assert {v for r in secret_rules if not r.get("resourceNames") for v in r["verbs"]} == {
            "create"
        }
        named = [r for r in secret_rules if r.get("resourceNames")]
        assert named == [
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": ["editflow-warm-key"],
                "verbs": ["get", "patch"],
            }
        ]
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


def test_the_operator_s3_key_stays_in_the_release_namespace(render) -> None:
    """Workers get per-attempt keys, so no watched namespace holds the operator's key (issue
    20 §1); only the insecure opt-in copies it (the same keys) where the workers run."""
    values = EDGE_VALUES["extra-namespaces"]
    objs = render(values)
    holders = {
        o["metadata"]["namespace"]
        for o in objs
        if o["kind"] == "Secret" and o["metadata"]["name"] == "editflow-s3"
    }
    assert holders == {NAMESPACE}
    shared = {**values, "s3": {"attemptCredentials": False, "insecureSharedKey": True}}
    objs = render(shared)
    secrets = [find(objs, "Secret", "editflow-s3", ns) for ns in namespaces_of(shared)]
    assert len(secrets) > 1
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
        # With attempt credentials the operator makes the attempt's Secret itself.
        own = "ej-poster-a1-s3" if settings.operator.attempt_credentials else None
        job = job_manifest(an_editjob(namespace), 1, settings.operator, credentials_secret=own)
        made = {("Secret", own)} if own else set()
        missing = job_references(job) - rendered_keys(objs, namespace) - brought - made
        assert not missing, f"{case}: worker Job in {namespace} references missing {missing}"
        pod = job["spec"]["template"]["spec"]
        if values.get("priorityClass", {}).get("create"):
            find(objs, "PriorityClass", pod["priorityClassName"])


def _selects(policy: dict[str, Any], pod_labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    assert not selector.get("matchExpressions"), "extend _selects for matchExpressions"
    return all(pod_labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


@pytest.mark.parametrize("case", CASES)
def test_every_worker_pod_of_either_mode_is_under_a_network_policy(
    case: str, render, monkeypatch
) -> None:
    """The operator's own Pod builders (a Job-mode attempt and a warm worker), with the chart's
    operator settings: each Pod they make in a watched namespace is selected by a policy
    there (warm workers once carried a label no policy selected: issue 20 item 4)."""
    values = EDGE_VALUES[case]
    objs = render(values)
    if not values.get("networkPolicy", {}).get("enabled", True):
        pytest.skip("networkPolicy.enabled: false renders no policy on purpose")
    settings = operator_settings(objs, monkeypatch).operator
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    for namespace in settings.namespaces:
        for mode, job in (
            ("job", job_manifest(an_editjob(namespace), 1, settings)),
            ("warm", warm_job_manifest(settings, namespace, "longcat-image-edit")),
        ):
            labels = job["spec"]["template"]["metadata"]["labels"]
            covering = [
                p["metadata"]["name"]
                for p in policies
                if p["metadata"]["namespace"] == namespace and _selects(p, labels)
            ]
            assert covering, f"{case}: a {mode}-mode worker Pod in {namespace} has no policy"


def test_a_pod_outside_the_worker_label_is_not_covered(render) -> None:
    """The check above can fail: a Pod without the worker label is selected by nothing."""
    policies = [o for o in render({}) if o["kind"] == "NetworkPolicy"]
    stray = {"app.kubernetes.io/name": "editflow-warm-worker"}
    assert policies and not [p for p in policies if _selects(p, stray)]


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
    assert refs["EDITFLOW_NATS__PASSWORD"] == {"name": "corp-nats", "key": "operator-password"}
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
    assert nats["containers"][0]["args"] == ["--config", "/etc/nats/nats.conf"]
    passwords = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in nats["containers"][0]["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert passwords["OPERATOR_PASSWORD"] == {"name": "editflow-nats", "key": "operator-password"}
    # One worker identity per namespace the workers run in.
    workers = {
        f"WORKER_{ns.upper().replace('-', '_')}" for ns in namespaces_of(EDGE_VALUES["bundled"])
    }
    assert set(passwords) == {
        f"{r}_PASSWORD" for r in ("OPERATOR", "GATEWAY", "PUBLISHER", *workers)
    }
    assert passwords["WORKER_TEAM_A_PASSWORD"] == {
        "name": "editflow-nats",
        "key": "worker-team-a-password",
    }
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
    "unknown key": ({"operator": {"replica": 2}}, "replica"),
    "replicas as a string": ({"operator": {"replicas": "two"}}, "replicas"),
    "negative replicas": ({"gateway": {"replicas": -1}}, "replicas"),
    "lease as a string": (
        {"operator": {"leaderElection": {"leaseSeconds": "10s"}}},
        "leaseSeconds",
    ),
    "budget as a word": (
        {"operator": {"podDisruptionBudget": {"maxUnavailable": "one"}}},
        "maxUnavailable",
    ),
    "registry with a scheme": ({"global": {"imageRegistry": "https://r.example"}}, "imageRegistry"),
    "crds.install as a string": ({"crds": {"install": "yes"}}, "install"),
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
    # Helm hands a parent chart's globals down to every subchart: they must stay open.
    assert open_objects == ["/global"]


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
        # The schema refuses these first (so does `helm lint --strict`), naming the value to set.
        ({"nats": {"auth": {"method": "creds"}}}, "at '/nats/auth/existingSecret': minLength"),
        ({"nats": {"auth": {"method": "token"}}}, "at '/nats/auth/token': minLength"),
        ({"nats": {"tls": {"enabled": True}}}, "at '/nats/tls/existingSecret': minLength"),
        (
            {
                "nats": {
                    "bundled": {"enabled": True},
                    "auth": {"method": "nkey", "existingSecret": "k"},
                }
            },
            "value must be one of 'userPassword', 'none'",
        ),
    ],
)
def test_incomplete_credentials_fail_with_a_clear_message(values, message, tmp_path) -> None:
    result = render_text(tmp_path, values, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


# -- the CRD -----------------------------------------------------------------------------


CRD_FILE = CHART / "files" / "crds" / "editjob.yaml"


def test_chart_crd_equals_the_generated_crd() -> None:
    """files/crds/editjob.yaml is `editflow operator crd` output, byte for byte."""
    generated = subprocess.run(
        [sys.executable, "-m", "editflow.cli.main", "operator", "crd"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    on_disk = CRD_FILE.read_text()
    assert on_disk == generated, "run `editflow operator crd --write`"
    assert yaml.safe_load(on_disk)["metadata"]["name"] == "editjobs.editflow.io"


def test_the_chart_has_no_crds_directory() -> None:
    """Helm installs crds/ once and never upgrades it; the same CRD there and in the
    templates would collide on the first install."""
    assert not (CHART / "crds").exists()


def test_rendered_crd_is_operator_crd_py_with_the_release_labels_and_kept(render) -> None:
    objs = render({})
    crd = find(objs, "CustomResourceDefinition", "editjobs.editflow.io")
    assert crd["spec"] == editjob_crd()["spec"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"]["labels"]["app.kubernetes.io/component"] == "crd"


def test_crd_can_be_left_to_others_or_deleted_on_uninstall(render) -> None:
    assert not [o for o in render({"crds": {"install": False}}) if o["kind"].startswith("Custom")]
    crd = find(render({"crds": {"keep": False}}), "CustomResourceDefinition", CRD_NAME)
    assert "annotations" not in crd["metadata"]


def test_refuses_kubernetes_older_than_1_29(tmp_path) -> None:
    """Pod failure policies, bound tokens and the CRD's CEL rules need 1.29 or later."""
    old = render_text(tmp_path, {}, "--kube-version", "1.28.9", check=False)
    assert old.returncode != 0 and "kubeVersion" in old.stderr, old.stderr
    render_text(tmp_path, {}, "--kube-version", "1.29.0")


# -- more than one replica ----------------------------------------------------------------


def test_two_operators_elect_a_leader_through_the_chart_s_lease(render, monkeypatch) -> None:
    objs = render({})
    deploy = find(objs, "Deployment", "editflow-operator", NAMESPACE)
    assert deploy["spec"]["replicas"] == 2
    # A new Pod starts as a standby before an old one stops; the leader releases on SIGTERM.
    assert deploy["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    pod_name = next(e for e in container["env"] if e["name"] == "POD_NAME")
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    settings = operator_settings(objs, monkeypatch)
    assert settings.operator.leader_election is True
    lease = lease_config(settings)  # what the operator will hold: valid, and the Role's name
    assert (lease.namespace, lease.name) == (NAMESPACE, "editflow-operator")
    assert (lease.lease_seconds, lease.renew_deadline, lease.retry_period) == (10, 7, 2)
    role = find(objs, "Role", "editflow-operator-leader-election", NAMESPACE)
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [lease.name],
            "verbs": ["get", "update"],
        },
    ]
    binding = find(objs, "RoleBinding", "editflow-operator-leader-election", NAMESPACE)
    assert (
        binding["subjects"][0]["name"] == deploy["spec"]["template"]["spec"]["serviceAccountName"]
    )


def test_the_lease_role_exists_only_in_the_release_namespace(render) -> None:
    objs = render(EDGE_VALUES["extra-namespaces"])
    roles = [o for o in objs if o["metadata"]["name"] == "editflow-operator-leader-election"]
    assert {(o["kind"], o["metadata"]["namespace"]) for o in roles} == {
        ("Role", NAMESPACE),
        ("RoleBinding", NAMESPACE),
    }


def test_lease_name_and_timing_follow_values(render, monkeypatch) -> None:
    values = {
        "fullnameOverride": "ef",
        "operator": {
            "leaderElection": {
                "leaseSeconds": 8,
                "renewDeadlineSeconds": 5,
                "retryPeriodSeconds": 1,
            }
        },
    }
    objs = render(values)
    lease = lease_config(settings_of(objs, monkeypatch, "ef-operator"))
    assert (lease.name, lease.lease_seconds, lease.renew_deadline, lease.retry_period) == (
        "ef-operator",
        8,
        5,
        1,
    )
    role = find(objs, "Role", "ef-operator-leader-election", NAMESPACE)
    assert role["rules"][1]["resourceNames"] == ["ef-operator"]


def test_a_single_operator_without_election_is_recreated_and_unbudgeted(
    render, monkeypatch
) -> None:
    objs = render(EDGE_VALUES["single-replicas"])
    deploy = find(objs, "Deployment", "editflow-operator", NAMESPACE)
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    assert "affinity" not in deploy["spec"]["template"]["spec"]
    assert not [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    assert not [o for o in objs if o["metadata"]["name"].endswith("-leader-election")]
    assert operator_settings(objs, monkeypatch).operator.leader_election is False


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"operator": {"leaderElection": {"enabled": False}}},
            "operator.replicas above 1 needs operator.leaderElection.enabled",
        ),
        (
            {"operator": {"leaderElection": {"leaseSeconds": 7}}},
            "operator.leaderElection.leaseSeconds must exceed renewDeadlineSeconds",
        ),
        (
            {"operator": {"leaderElection": {"retryPeriodSeconds": 6}}},
            "operator.leaderElection.renewDeadlineSeconds must exceed 1.2 x retryPeriodSeconds",
        ),
    ],
)
def test_replicas_that_could_act_twice_are_refused(values, message, tmp_path) -> None:
    result = render_text(tmp_path, values, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("component", ["operator", "gateway"])
def test_replicas_get_a_disruption_budget_and_spread_over_nodes(render, component) -> None:
    objs = render({})
    name = f"editflow-{component}"
    deploy = find(objs, "Deployment", name, NAMESPACE)
    budget = find(objs, "PodDisruptionBudget", name, NAMESPACE)
    assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"]
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert budget["spec"]["selector"]["matchLabels"] == selector
    spread = deploy["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    term = spread["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term == {
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": selector},
    }


def test_a_budget_can_say_min_available_and_a_user_affinity_wins(render) -> None:
    zone = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}
    objs = render(
        {
            "gateway": {
                "replicas": 3,
                "podDisruptionBudget": {"minAvailable": "50%"},
                "affinity": zone,
            }
        }
    )
    budget = find(objs, "PodDisruptionBudget", "editflow-gateway", NAMESPACE)
    assert budget["spec"]["minAvailable"] == "50%" and "maxUnavailable" not in budget["spec"]
    deploy = find(objs, "Deployment", "editflow-gateway", NAMESPACE)
    assert deploy["spec"]["replicas"] == 3
    assert deploy["spec"]["template"]["spec"]["affinity"] == zone


def test_gateway_replicas_share_their_rate_limits(render, monkeypatch) -> None:
    objs = render({})
    assert settings_of(objs, monkeypatch, "editflow-gateway").gateway.rate_limit_shared is True
    objs = render({"gateway": {"sharedRateLimits": False}})
    assert settings_of(objs, monkeypatch, "editflow-gateway").gateway.rate_limit_shared is False


# -- images -------------------------------------------------------------------------------


def pod_images(objs: list[dict[str, Any]]) -> dict[str, str]:
    """Image of the first container of every Pod-bearing object, by object name."""
    images = {}
    for obj in objs:
        if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
            images[obj["metadata"]["name"]] = obj["spec"]["template"]["spec"]["containers"][0][
                "image"
            ]
        elif obj["kind"] == "Pod":
            images[obj["metadata"]["name"]] = obj["spec"]["containers"][0]["image"]
    return images


def test_images_come_from_a_local_registry(render, monkeypatch) -> None:
    objs = render(EDGE_VALUES["local-registry"])
    images = pod_images(objs)
    assert images["editflow-operator"] == "127.0.0.1:5000/editflow/operator:dev"
    # A repository that names its registry is not prefixed a second time.
    assert images["editflow-gateway"] == "127.0.0.1:5000/editflow/gateway:dev"
    assert images["editflow-test"] == "127.0.0.1:5000/editflow/operator:dev"
    op = operator_settings(objs, monkeypatch).operator
    assert op.worker_image == "127.0.0.1:5000/editflow/worker:dev"
    deploy = find(objs, "Deployment", "editflow-operator", NAMESPACE)
    pod = deploy["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "local-registry"}]
    assert pod["containers"][0]["imagePullPolicy"] == "Always"
    worker_sa = find(objs, "ServiceAccount", "editflow-worker", NAMESPACE)
    assert worker_sa["imagePullSecrets"] == [{"name": "local-registry"}]


def test_the_registry_prefix_reaches_the_bundled_servers(render) -> None:
    values = {**EDGE_VALUES["bundled"], "global": {"imageRegistry": "mirror.corp.example/hub"}}
    images = pod_images(render(values))
    assert images["editflow-nats"] == "mirror.corp.example/hub/nats:2.11-alpine"
    assert images["editflow-minio"].startswith("mirror.corp.example/hub/minio/minio:")


def test_images_default_to_the_app_version_without_a_registry(render) -> None:
    images = pod_images(render({}))
    assert images["editflow-operator"] == "editflow/operator:0.1.0"
    assert images["editflow-gateway"] == "editflow/gateway:0.1.0"


def test_attempt_credentials_are_on_and_s3_weights_need_a_read_only_key(render, tmp_path) -> None:
    env = _operator_env(render({}))
    assert env["EDITFLOW_OPERATOR__ATTEMPT_CREDENTIALS"] == "true"
    assert "EDITFLOW_OPERATOR__WEIGHTS_SECRET" not in env
    # Your own reader: referenced, nothing generated, the operator creates no user.
    values = {"models": {"s3Prefix": "models", "s3ReaderSecret": "weights-reader"}}
    objs = render(values)
    env = _operator_env(objs)
    assert env["EDITFLOW_OPERATOR__WEIGHTS_SECRET"] == "weights-reader"
    assert "EDITFLOW_OPERATOR__WEIGHTS_READER_CREATE" not in env
    assert not [o for o in objs if o["metadata"]["name"] == "editflow-weights"]


def test_the_chart_creates_the_read_only_weights_reader_it_documents(render) -> None:
    """Issue 20 §1: with weights on S3 and no reader of yours, the chart generates the key into
    every worker namespace (the only S3 key a watched namespace holds) and the operator makes
    the MinIO user, allowed to read the weights prefix only."""
    objs = render({"models": {"s3Prefix": "models"}, "watchNamespaces": ["team-a"]})
    readers = [
        o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"] == "editflow-weights"
    ]
    assert {o["metadata"]["namespace"] for o in readers} == {"editflow", "team-a"}
    assert len({(o["data"]["access-key"], o["data"]["secret-key"]) for o in readers}) == 1
    env = _operator_env(objs)
    assert env["EDITFLOW_OPERATOR__WEIGHTS_SECRET"] == "editflow-weights"
    assert env["EDITFLOW_OPERATOR__WEIGHTS_READER_CREATE"] == "true"
    assert env["EDITFLOW_WORKER__WEIGHTS_S3_PREFIX"] == "models"
    operator = next(
        o for o in objs if o["kind"] == "Deployment" and "operator" in o["metadata"]["name"]
    )
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
        if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    }
    assert refs["EDITFLOW_WORKER__WEIGHTS_ACCESS_KEY"] == {
        "name": "editflow-weights",
        "key": "access-key",
    }
    # The operator's own key stays in the release namespace.
    s3 = [o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"] == "editflow-s3"]
    assert {o["metadata"]["namespace"] for o in s3} == {"editflow"}


def _operator_env(objs: list[dict[str, Any]]) -> dict[str, str | None]:
    operator = next(
        o for o in objs if o["kind"] == "Deployment" and "operator" in o["metadata"]["name"]
    )
    return {
        e["name"]: e.get("value")
        for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
    }


def test_the_weights_cache_reaches_the_operator_and_the_workers_config(render, tmp_path) -> None:
    plain = render({})
    assert "EDITFLOW_OPERATOR__WEIGHTS_CACHE_PVC" not in _operator_env(plain)
    objs = render(
        {"models": {"nodeCache": {"existingClaim": "weights-cache", "maxBytes": 200000000000}}}
    )
    env = _operator_env(objs)
    assert env["EDITFLOW_OPERATOR__WEIGHTS_CACHE_PVC"] == "weights-cache"
    worker_config = next(
        o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-worker")
    )
    assert worker_config["data"]["EDITFLOW_WORKER__CACHE_MAX_BYTES"] == "200000000000"
    assert json.loads(worker_config["data"]["EDITFLOW_WORKER__CACHE_MODELS"]) == [
        "longcat-image-edit"
    ]
    # The operator's settings take what the chart renders, and mount it in every worker Job.
    settings = Settings(operator={"weights_cache_pvc": env["EDITFLOW_OPERATOR__WEIGHTS_CACHE_PVC"]})
    pod = job_manifest(
        {"metadata": {"name": "e", "namespace": "edits", "uid": "u"},
         "spec": {"source": {"url": "https://x/a.png"}, "prompt": "p"}},
        1,
        settings.operator,
    )["spec"]["template"]["spec"]  # fmt: skip
    assert {"name": "weights-cache", "persistentVolumeClaim": {"claimName": "weights-cache"}} in (
        pod["volumes"]
    )
    worker = pod["containers"][0]
    assert {"name": "weights-cache", "mountPath": "/var/cache/editflow/models"} in worker[
        "volumeMounts"
    ]
    assert {
        "name": "EDITFLOW_WORKER__CACHE_DIR",
        "value": "/var/cache/editflow/models",
    } in worker["env"]
    both = {"models": {"nodeCache": {"existingClaim": "c", "hostPath": "/var/cache/editflow"}}}
    refused = render_text(tmp_path, both, check=False)
    assert refused.returncode != 0 and "not both" in refused.stderr, refused.stderr
    with pytest.raises(ValueError, match="both set"):
        Settings(operator={"weights_cache_pvc": "c", "weights_cache_host_path": "/x"})


def test_a_host_path_weights_cache_must_exist_on_the_node() -> None:
    settings = Settings(operator={"weights_cache_host_path": "/var/cache/editflow"})
    pod = job_manifest(
        {"metadata": {"name": "e", "namespace": "edits", "uid": "u"},
         "spec": {"source": {"url": "https://x/a.png"}, "prompt": "p"}},
        1,
        settings.operator,
    )["spec"]["template"]["spec"]  # fmt: skip
    (cache,) = [v for v in pod["volumes"] if v["name"] == "weights-cache"]
    # Directory, not DirectoryOrCreate: a kubelet-created directory is root's, not uid 10001's.
    assert cache["hostPath"] == {"path": "/var/cache/editflow", "type": "Directory"}


def test_the_grafana_dashboard_ships_for_the_sidecar_and_names_only_real_metrics(render) -> None:
    import re

    from prometheus_client import REGISTRY

    import editflow.events.dlq  # registers the dead-letter counter
    import editflow.operator.metrics  # noqa: F401 - registers the operator's metrics
    from editflow.gateway.metrics import GatewayMetrics  # its own registry (the review row)

    objs = render({})
    (dashboard,) = [
        o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")
    ]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(dashboard["data"]["editflow.json"])
    titles = " | ".join(p["title"] for p in board["panels"])
    wanted_panels = ("Queue depth", "Edit latency", "GPU-seconds by department", "Quality gate",
                     "Dead letters")  # fmt: skip
    for wanted in wanted_panels:
        assert wanted in titles, titles
    # A row (the review row) groups panels and queries nothing.
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p.get("targets", []))
    used = set(re.findall(r"\b(editflow_[a-z_]+?)(?:_bucket|_total)?\b", exprs))
    known = {family.name for family in REGISTRY.collect()}  # counters without "_total"
    known |= {family.name for family in GatewayMetrics().registry.collect()}
    assert used and used <= known, used - known
    assert not any(
        o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")
        for o in render({"metrics": {"grafanaDashboard": {"enabled": False}}})
    )
