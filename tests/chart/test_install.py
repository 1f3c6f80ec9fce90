"""The chart against the real control plane (kube-apiserver v1.34 + controller-manager).

- every rendered object of every edge value set passes the apiserver's validation
  and admission (``kubectl apply --dry-run=server``);
- ``helm install`` creates the CRD (established), RBAC, ServiceAccounts, ConfigMaps and
  Secrets in the release namespace and each extra namespace; the operator's ServiceAccount
  can do its work and cannot read Secrets (``kubectl auth can-i --as``);
- ``helm upgrade`` keeps generated credentials; ``helm uninstall`` leaves nothing of the
  release (the CRD stays: `helm.sh/resource-policy: keep`; its upgrades: test_crd_upgrade.py);
- an operator that has only the chart's RBAC and the chart's rendered environment runs a
  real edit (tiny model, CPU) in an extra namespace through the worker ServiceAccount,
  ConfigMap, S3 Secret and models claim the chart created there;
- ``helm test`` passes its round trip against a running operator.

Deployments do get Pods on this control plane, but the operator's in-cluster login reads
its token from the fixed path /var/run/secrets/kubernetes.io/serviceaccount, which the
process kubelet cannot provide; so the operator runs here as a local process logged in
with a token of the chart's operator ServiceAccount. Every release points its operator
at an unreachable NATS, so no operator Pod ever consumes another test's approval events.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from editflow.devstack import localmode
from editflow.devstack.kubeapi import KubeClient, KubeError
from editflow.devstack.procs import ManagedProcess, free_port, wait_until
from tests.chart.chartkit import (
    CHART,
    EDGE_VALUES,
    NAMESPACE,
    REPO,
    documents,
    helm,
    is_hook,
    render_text,
    values_file,
)
from tests.hygiene import FINISHED_PODS

pytestmark = [pytest.mark.platform, pytest.mark.slow]

# No NATS listens here: Deployment Pods of the releases under test never take events.
NO_NATS = "nats://127.0.0.1:1"

# Kinds whose CRDs (Prometheus Operator) this control plane does not serve.
NOT_SERVED = {"ServiceMonitor", "PrometheusRule"}


def ensure_namespaces(kubectl, *names: str) -> None:
    for name in names:
        if kubectl("get", "namespace", name, check=False).returncode != 0:
            kubectl("create", "namespace", name)


def ensure_crd(stack) -> None:
    """The CRD a release that leaves it to others needs: created (without Helm) if missing."""
    api = KubeClient(stack.kubeconfig)
    try:
        try:
            api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{localmode.CRD_NAME}")
        except KubeError as exc:
            if exc.status != 404:
                raise
            localmode.install_crd(api)
    finally:
        api.close()


def uninstall(stack, release: str, namespace: str) -> None:
    """`helm uninstall`, then wait until the release's Pods are gone: its operator and gateway
    would otherwise run on, polling, for the rest of the session (tests/hygiene.py). The CRD
    stays (its keep policy), so no other test's EditJobs go with it."""
    helm("uninstall", release, "-n", namespace, kubeconfig=stack.kubeconfig, check=False)
    api = KubeClient(stack.kubeconfig)
    try:

        def gone() -> bool:
            pods = api.get(
                f"/api/v1/namespaces/{namespace}/pods",
                labelSelector=f"app.kubernetes.io/instance={release}",
            )["items"]
            return not [p for p in pods if p["status"].get("phase") not in FINISHED_PODS]

        wait_until(gone, timeout=90, what=f"the Pods of release {release} to stop")
    finally:
        api.close()


def install(
    stack,
    tmp_path: Path,
    release: str,
    namespace: str,
    values: dict[str, Any],
    *,
    own_crd: bool = False,
):
    """`helm install` for the local platform; fills ``values`` in place with its defaults.

    One replica of the operator and of the gateway unless a test asks for more: Pods share
    the host's network on the process kubelet, so a second replica could not bind its ports.
    Only a release with ``own_crd`` installs the CRD (one release can own it, and earlier
    tests may have created it without Helm): it takes ownership of what already exists, as
    a cluster upgraded from the chart's old crds/ does (see the chart README).
    """
    values.setdefault("operator", {}).setdefault("replicas", 1)
    values.setdefault("gateway", {}).setdefault("replicas", 1)
    values.setdefault("crds", {}).setdefault("install", own_crd)
    if not own_crd:
        ensure_crd(stack)
    path = values_file(tmp_path, values, f"{release}.yaml")
    ownership = ("--take-ownership",) if own_crd else ()
    return helm(
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "-f",
        str(path),
        *ownership,
        kubeconfig=stack.kubeconfig,
    )


def can_i(kubectl, sa: str, *args: str) -> bool:
    result = kubectl("auth", "can-i", *args, f"--as={sa}", check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), result.stderr
    return answer == "yes"


def secret_data(kubectl, namespace: str, name: str) -> dict[str, str]:
    return yaml.safe_load(kubectl("-n", namespace, "get", "secret", name, "-o", "yaml").stdout)[
        "data"
    ]


# -- server-side validation ----------------------------------------------------------


@pytest.mark.parametrize("case", sorted(EDGE_VALUES))
def test_rendered_objects_pass_server_side_dry_run(case: str, stack, kubectl, tmp_path) -> None:
    values = EDGE_VALUES[case]
    ensure_namespaces(kubectl, NAMESPACE, *values.get("watchNamespaces", []))
    objs = documents(render_text(tmp_path, values).stdout)
    # The helm test Pod needs its hook ServiceAccount to exist: `helm test` covers it.
    checked = [
        o for o in objs if o["kind"] not in NOT_SERVED and not (is_hook(o) and o["kind"] == "Pod")
    ]
    result = kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(checked), check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(checked), result.stdout


def test_example_editjob_is_accepted_by_the_apiserver(stack, kubectl) -> None:
    kubectl("apply", "--server-side", "-f", str(CHART / "files" / "crds" / "editjob.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/editjobs.editflow.io")
    ensure_namespaces(kubectl, NAMESPACE)
    example = str(REPO / "examples" / "editjob.yaml")
    results = []

    def accepted() -> bool:
        # Established comes a moment before every apiserver handler serves the new kind.
        results.append(
            kubectl("-n", NAMESPACE, "apply", "--dry-run=server", "-f", example, check=False)
        )
        return results[-1].returncode == 0

    try:
        wait_until(accepted, timeout=30, what="the example EditJob to be accepted")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: {results[-1].stderr}") from None
    created = "editjob.editflow.io/poster-beach-background created (server dry run)"
    assert created in results[-1].stdout


# -- helm install ----------------------------------------------------------------------

RELEASE = "ef"
RELEASE_NS = "ef-install"
TEAM_NS = "ef-team"
OPERATOR_SA = f"system:serviceaccount:{RELEASE_NS}:ef-editflow-operator"
WORKER_SA = f"system:serviceaccount:{RELEASE_NS}:ef-editflow-worker"


@pytest.fixture(scope="module")
def release(stack, kubectl, tmp_path_factory) -> Iterator[dict[str, Any]]:
    ensure_namespaces(kubectl, RELEASE_NS, TEAM_NS)
    values = {
        "watchNamespaces": [TEAM_NS],
        "nats": {"url": NO_NATS},
        "operator": {"healthPort": free_port(), "metricsPort": free_port()},
        "gateway": {"port": free_port()},
    }
    result = install(
        stack, tmp_path_factory.mktemp("release"), RELEASE, RELEASE_NS, values, own_crd=True
    )
    yield {"values": values, "stdout": result.stdout}
    uninstall(stack, RELEASE, RELEASE_NS)


def test_install_establishes_the_crd(release, kubectl) -> None:
    kubectl("wait", "--for=condition=Established", "crd/editjobs.editflow.io", "--timeout=60s")
    names = kubectl("get", "crd", "editjobs.editflow.io", "-o", "jsonpath={.spec.names.shortNames}")
    assert "ej" in names.stdout


def test_install_creates_what_worker_jobs_need_in_every_namespace(release, kubectl) -> None:
    for namespace in (RELEASE_NS, TEAM_NS):
        for kind, name in (
            ("serviceaccount", "ef-editflow-worker"),
            ("configmap", "ef-editflow-worker"),
            ("role", "ef-editflow-operator"),
            ("rolebinding", "ef-editflow-operator"),
        ):
            kubectl("-n", namespace, "get", kind, name)
    # The operator's S3 key stays in the release namespace: workers get per-attempt keys, so
    # a watched namespace holds no key that reaches past one attempt (issue 20 §1).
    assert set(secret_data(kubectl, RELEASE_NS, "ef-editflow-s3")) == {"access-key", "secret-key"}
    missing = kubectl("-n", TEAM_NS, "get", "secret", "ef-editflow-s3", check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr
    kubectl("-n", RELEASE_NS, "get", "secret", "ef-editflow-gateway-token")
    kubectl("get", "clusterrole", f"ef-editflow-operator-{RELEASE_NS}")
    kubectl("get", "clusterrolebinding", f"ef-editflow-operator-{RELEASE_NS}")
    for name in ("ef-editflow-operator", "ef-editflow-gateway"):
        kubectl("-n", RELEASE_NS, "get", "deployment", name)


def test_install_prints_next_steps(release) -> None:
    notes = release["stdout"].split("NOTES:", 1)[1]
    assert f"helm test {RELEASE} -n {RELEASE_NS}" in notes
    assert f"kubectl -n {RELEASE_NS} get editjobs" in notes
    assert "editflow events publish" in notes
    assert f"EditJobs are served in: {RELEASE_NS}, {TEAM_NS}" in notes
    assert f"kubectl -n {RELEASE_NS} get lease ef-editflow-operator" in notes


def test_the_example_editjob_passes_the_installed_charts_admission(release, kubectl) -> None:
    """The README's `kubectl apply -f examples/editjob.yaml`, into a namespace the installed
    chart serves: its admission policy refuses what the CRD schema alone lets through (an
    output prefix outside the namespace's own results, for one)."""
    example = str(REPO / "examples" / "editjob.yaml")
    result = kubectl("-n", TEAM_NS, "apply", "--dry-run=server", "-f", example, check=False)
    assert result.returncode == 0, result.stderr
    assert "created (server dry run)" in result.stdout


@pytest.mark.parametrize("namespace", [RELEASE_NS, TEAM_NS])
def test_operator_can_run_edits_in_each_watched_namespace(release, kubectl, namespace) -> None:
    ns = ("-n", namespace)
    for verb in ("create", "get", "list", "watch", "patch", "delete"):
        assert can_i(kubectl, OPERATOR_SA, verb, "editjobs.editflow.io", *ns), verb
    assert can_i(kubectl, OPERATOR_SA, "patch", "editjobs.editflow.io", "--subresource=status", *ns)
    for verb in ("create", "get", "list", "watch", "delete"):
        assert can_i(kubectl, OPERATOR_SA, verb, "jobs.batch", *ns), verb
    for verb in ("get", "list", "watch"):
        assert can_i(kubectl, OPERATOR_SA, verb, "pods", *ns), verb
    assert can_i(kubectl, OPERATOR_SA, "create", "events", *ns)


@pytest.mark.parametrize("namespace", [RELEASE_NS, TEAM_NS, "default"])
def test_operator_cannot_read_secrets_or_escalate(release, kubectl, namespace) -> None:
    ns = ("-n", namespace)
    for verb in ("get", "list", "watch"):
        assert not can_i(kubectl, OPERATOR_SA, verb, "secrets", *ns), verb
    assert not can_i(kubectl, OPERATOR_SA, "get", "configmaps", *ns)
    assert not can_i(kubectl, OPERATOR_SA, "create", "pods", *ns)
    assert not can_i(kubectl, OPERATOR_SA, "patch", "jobs.batch", *ns)
    assert not can_i(kubectl, OPERATOR_SA, "create", "roles.rbac.authorization.k8s.io", *ns)


def test_operator_cluster_access_is_observation_only(release, kubectl) -> None:
    assert can_i(kubectl, OPERATOR_SA, "watch", "customresourcedefinitions.apiextensions.k8s.io")
    assert can_i(kubectl, OPERATOR_SA, "list", "namespaces")
    assert not can_i(kubectl, OPERATOR_SA, "get", "secrets", "--all-namespaces")
    assert not can_i(kubectl, OPERATOR_SA, "create", "editjobs.editflow.io", "-n", "default")
    assert not can_i(kubectl, OPERATOR_SA, "delete", "namespaces")
    assert not can_i(
        kubectl, OPERATOR_SA, "patch", "customresourcedefinitions.apiextensions.k8s.io"
    )


LEASE = "leases.coordination.k8s.io"


def test_operator_may_hold_only_its_own_lease(release, kubectl) -> None:
    ns = ("-n", RELEASE_NS)
    assert can_i(kubectl, OPERATOR_SA, "create", LEASE, *ns)
    for verb in ("get", "update"):
        assert can_i(kubectl, OPERATOR_SA, verb, f"{LEASE}/ef-editflow-operator", *ns), verb
        assert not can_i(kubectl, OPERATOR_SA, verb, f"{LEASE}/kube-scheduler", *ns), verb
    for verb in ("list", "watch", "delete", "patch"):
        assert not can_i(kubectl, OPERATOR_SA, verb, f"{LEASE}/ef-editflow-operator", *ns), verb
    for namespace in (TEAM_NS, "kube-system"):
        assert not can_i(kubectl, OPERATOR_SA, "create", LEASE, "-n", namespace), namespace


def test_worker_service_account_has_no_api_access(release, kubectl) -> None:
    for args in (("get", "pods"), ("get", "secrets"), ("create", "editjobs.editflow.io")):
        assert not can_i(kubectl, WORKER_SA, *args, "-n", RELEASE_NS), args


def test_upgrade_keeps_generated_credentials(release, stack, kubectl, tmp_path) -> None:
    before = {
        name: secret_data(kubectl, RELEASE_NS, name)
        for name in (
            "ef-editflow-gateway-token",
            "ef-editflow-s3",
            "ef-editflow-nats",
            "ef-editflow-events",
        )
    }
    team_nats = secret_data(kubectl, TEAM_NS, "ef-editflow-worker-nats")
    path = values_file(tmp_path, release["values"])
    helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        RELEASE_NS,
        "-f",
        str(path),
        "--take-ownership",  # the CRD, should a later test have re-created it without Helm
        kubeconfig=stack.kubeconfig,
    )
    for name, data in before.items():
        assert secret_data(kubectl, RELEASE_NS, name) == data, name
    # The worker NATS identity in a watched namespace is kept too.
    assert secret_data(kubectl, TEAM_NS, "ef-editflow-worker-nats") == team_nats


# -- helm uninstall ----------------------------------------------------------------------

NAMESPACED = "all,secrets,configmaps,serviceaccounts,roles,rolebindings,pvc,poddisruptionbudgets"
CLUSTERED = "clusterroles,clusterrolebindings,priorityclasses"
PVC_PROTECTION = "kubernetes.io/pvc-protection"


def test_uninstall_leaves_nothing_of_the_release(stack, kubectl, tmp_path) -> None:
    release, namespace, team = "gone", "ef-gone", "ef-gone-team"
    ensure_namespaces(kubectl, namespace, team)
    values = {
        **EDGE_VALUES["everything-on"],
        "watchNamespaces": [team],
        "metrics": {"serviceMonitor": {"enabled": False}},
        "prometheusRule": {"enabled": False},
        "models": {"pvc": {"enabled": True}},
        "nats": {"auth": {"method": "token", "token": "s3cr3t"}, "url": NO_NATS},
        # Two operators: their PodDisruptionBudget and Lease Role must go too.
        "operator": {"healthPort": free_port(), "metricsPort": free_port(), "replicas": 2},
        "gateway": {"port": free_port()},
    }
    install(stack, tmp_path, release, namespace, values)
    kubectl("-n", namespace, "get", "poddisruptionbudget", "gone-editflow-operator")
    kubectl("-n", namespace, "get", "role", "gone-editflow-operator-leader-election")
    selector = f"app.kubernetes.io/instance={release}"

    def leftovers() -> list[str]:
        found = []
        for kinds, scope in ((NAMESPACED, ("-A",)), (CLUSTERED, ())):
            listed = kubectl("get", kinds, *scope, "-l", selector, "-o", "json").stdout
            for obj in json.loads(listed)["items"]:
                meta = obj["metadata"]
                # Deleted, waiting only for the pvc-protection controller, which this
                # control plane does not run (a cluster's removes it once no Pod mounts it).
                if meta.get("deletionTimestamp") and meta.get("finalizers") == [PVC_PROTECTION]:
                    continue
                found.append(f"{obj['kind']}/{meta.get('namespace', '')}/{meta['name']}")
        return found

    created = leftovers()
    assert "PriorityClass//gone-editflow-worker" in created
    assert f"PersistentVolumeClaim/{team}/gone-editflow-models" in created

    helm("uninstall", release, "-n", namespace, kubeconfig=stack.kubeconfig)
    try:
        wait_until(lambda: not leftovers(), timeout=120, what="the release's objects to go")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: {leftovers()}") from None
    kubectl("get", "crd", "editjobs.editflow.io")  # CRDs stay, as Helm does


# -- an edit with only what the chart gives the operator ----------------------------------


def isolated_events(tag: str) -> list[dict[str, str]]:
    """Stream, subject and consumer names of this test only (the NATS server is shared;
    the approval subjects are chart values, set by the test's values)."""
    names = {
        "APPROVALS_STREAM": f"CH{tag.upper()}_APPROVALS",
        "COMPLETIONS_STREAM": f"CH{tag.upper()}_COMPLETIONS",
        "DLQ_STREAM": f"CH{tag.upper()}_DLQ",
        "ADVISORIES_STREAM": f"CH{tag.upper()}_ADVISORIES",
        "COMPLETION_SUBJECT_PREFIX": f"ch{tag}.completions",
        "REVIEW_SUBJECT_PREFIX": f"ch{tag}.reviews",
        "DLQ_SUBJECT_PREFIX": f"ch{tag}.dlq",
        "CONSUMER": f"ch{tag}-operator",
    }
    return [{"name": f"EDITFLOW_EVENTS__{k}", "value": v} for k, v in names.items()]


def local_values(stack, tag: str, nats_url: str) -> dict[str, Any]:
    """Chart values for editflow on the local platform: its MinIO, CPU workers, a models
    claim, events isolated under ``tag``, and free ports (Pods share the host's network)."""
    s3 = stack.s3_settings()
    return {
        # The local platform's nats-server has no users: open on purpose.
        "nats": {"url": nats_url, "auth": {"method": "none", "insecure": True}},
        "s3": {
            "endpoint": s3.endpoint,
            "bucket": s3.bucket,
            "accessKey": s3.access_key.get_secret_value(),
            "secretKey": s3.secret_key.get_secret_value(),
        },
        "worker": {
            "device": "cpu",
            "allowCidrs": ["127.0.0.0/8"],
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {}},
            # A warm worker outlives its release (the operator made it, not Helm) until it has
            # been idle this long, holding the platform's one GPU: short, so the next test's
            # worker is not left waiting for it.
            "idleSeconds": 5,
        },
        "models": {"pvc": {"enabled": True}},
        "gateway": {"enabled": False},
        "events": {
            "approvalSubject": f"ch{tag}.approvals.image-edit",
            "withdrawSubject": f"ch{tag}.approvals.image-edit.withdraw",
            "storage": "memory",
            # The local platform's tests publish unsigned events (signing: test_secure_defaults.py).
            "signingKey": {"enabled": False},
        },
        "operator": {
            "healthPort": free_port(),
            "metricsPort": free_port(),
            "resyncSeconds": 2,
            "extraEnv": isolated_events(tag),
        },
    }


def token_kubeconfig(stack, path: Path, token: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "local",
                        "cluster": {
                            "server": stack.apiserver.url,
                            "certificate-authority": str(stack.apiserver.ca.cert_path),
                        },
                    }
                ],
                "users": [{"name": "operator", "user": {"token": token}}],
                "contexts": [
                    {"name": "local", "context": {"cluster": "local", "user": "operator"}}
                ],
                "current-context": "local",
            }
        )
    )
    return path


def test_operator_with_only_the_chart_rbac_runs_an_edit_in_an_extra_namespace(
    stack, kubectl, image_host, tiny_model_root, tmp_path
) -> None:
    release, namespace, team = "e2e", "ef-e2e", "ef-e2e-team"
    tag = uuid.uuid4().hex[:6]
    ensure_namespaces(kubectl, namespace, team)
    values = local_values(stack, tag, NO_NATS)
    values["watchNamespaces"] = [team]
    values["worker"]["extraEnv"] = {"EDITFLOW_WORKER__FETCH_TIMEOUT_SECONDS": "120"}
    values["limits"] = {"backoffSeconds": 1}
    # The operator below is the only one: a Deployment Pod would hold the Lease it waits for.
    values["operator"]["replicas"] = 0
    install(stack, tmp_path, release, namespace, values)
    claim = stack.kubelet.root / "pvc" / team / f"{release}-editflow-models"
    shutil.copytree(tiny_model_root, claim, dirs_exist_ok=True)

    # The operator exactly as the chart configures it: its Deployment's environment, the
    # mounted S3 key files, and the API identity of its ServiceAccount.
    manifest = helm("get", "manifest", release, "-n", namespace, kubeconfig=stack.kubeconfig)
    deploy = next(
        d
        for d in documents(manifest.stdout)
        if d["kind"] == "Deployment" and d["metadata"]["name"] == f"{release}-editflow-operator"
    )
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    keys = tmp_path / "s3"
    keys.mkdir()
    for key, value in secret_data(kubectl, namespace, f"{release}-editflow-s3").items():
        (keys / key).write_text(base64.b64decode(value).decode())
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDITFLOW_")}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"].replace("/etc/editflow/s3", str(keys))
    env["EDITFLOW_NAMESPACE"] = namespace  # the Pod's fieldRef
    env["EDITFLOW_NATS__URL"] = stack.nats_url
    env["EDITFLOW_OPERATOR__WARM_NATS_URL"] = stack.nats_url  # what the warm workers dial
    sa = f"{release}-editflow-operator"
    token = kubectl("-n", namespace, "create", "token", sa, "--duration=1h").stdout.strip()
    env["KUBECONFIG"] = str(token_kubeconfig(stack, tmp_path / "kubeconfig", token))
    process = ManagedProcess(
        "chart-operator",
        [sys.executable, "-m", "editflow.cli.main", "operator", "run"],
        log_path=tmp_path / "operator.log",
        env=env,
    )
    process.start()
    name = f"chart-{tag}"
    try:
        kubectl(
            "-n",
            team,
            "apply",
            "-f",
            "-",
            input=yaml.safe_dump(
                {
                    "apiVersion": "editflow.io/v1alpha1",
                    "kind": "EditJob",
                    "metadata": {"name": name},
                    "spec": {
                        "source": {"url": image_host.url("red.png")},
                        "prompt": "make the red square blue",
                        "parameters": {"steps": 2, "seed": 1},
                    },
                }
            ),
        )
        seen: dict[str, Any] = {}
        log_path = tmp_path / "operator.log"

        def finished_or_refused() -> bool:
            process.ensure_running()
            got = kubectl("-n", team, "get", "editjob", name, "-o", "json").stdout
            seen.update(json.loads(got).get("status") or {})
            refused = "403 Forbidden" in log_path.read_text()
            finished = seen.get("phase") in ("Succeeded", "Failed", "NeedsReview")
            # The outcome's delivery is recorded in status after the phase.
            return refused or (finished and bool(seen.get("completionPublishedAt")))

        try:
            wait_until(finished_or_refused, timeout=240, what=f"EditJob {team}/{name} to finish")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}: {seen}\n{process.log_tail(40)}") from None
        log = log_path.read_text()
        refusals = [line for line in log.splitlines() if "Forbidden" in line]
        assert not refusals, "the API refused the operator:\n" + "\n".join(refusals[:5])
        assert "Not enough permissions" not in log, log[-3000:]
        assert seen["phase"] == "Succeeded", f"{seen}\n{process.log_tail(40)}"
        assert seen["completionEventId"] and seen["resultKey"].endswith(".png")
    finally:
        kubectl("-n", team, "delete", "editjob", name, "--wait=false", check=False)
        process.stop()
        uninstall(stack, release, namespace)


# -- helm test ---------------------------------------------------------------------------


def test_helm_test_round_trip_passes_against_a_running_operator(
    operator, stack, kubectl, tmp_path
) -> None:
    """`helm test`'s Pod creates a cancelled EditJob and sees the operator finish it and
    publish its completion, then finds the chart's gateway ready and refusing edits without
    its token. The operator is the harness's `editflow operator run` process watching the
    release namespace (the chart's operator Pod cannot log in here, see the module doc);
    the gateway is the chart's own Pod, run by the process kubelet on a host port."""
    from tests.harness import NAMESPACE as EDITS

    release = f"ht{uuid.uuid4().hex[:4]}"
    s3 = stack.s3_settings()
    gateway_port = free_port()
    values = {
        "nats": {"url": NO_NATS},
        "s3": {
            "endpoint": s3.endpoint,
            "bucket": s3.bucket,
            "accessKey": s3.access_key.get_secret_value(),
            "secretKey": s3.secret_key.get_secret_value(),
        },
        "operator": {"healthPort": free_port(), "metricsPort": free_port()},
        # The running operator is the session's (an admin login), not this release's
        # ServiceAccount, which the admission policy would rightly refuse as an outbox writer
        # (the policy itself: tests/security/test_api_boundary.py).
        "admissionPolicy": {"enabled": False},
        # Only the gateway reaches NATS: it publishes nothing without a valid token.
        "gateway": {
            "port": gateway_port,
            "extraEnv": [{"name": "EDITFLOW_NATS__URL", "value": stack.nats_url}],
        },
        "tests": {
            "timeoutSeconds": 90,
            "gatewayUrl": f"http://127.0.0.1:{gateway_port}",
            "deleteOnSuccess": False,  # keep it for `helm test --logs`
        },
    }
    install(stack, tmp_path, release, EDITS, values)
    try:
        result = helm(
            "test",
            release,
            "-n",
            EDITS,
            "--timeout",
            "180s",
            "--logs",
            kubeconfig=stack.kubeconfig,
            check=False,
        )
        logs = kubectl("-n", EDITS, "logs", f"{release}-editflow-test", check=False)
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{logs.stdout}"
        assert "Phase:          Succeeded" in result.stdout, result.stdout
        assert "operator moved it to Cancelled and published completion" in result.stdout
        assert "gateway /readyz: 200" in result.stdout
        assert "gateway refuses edits without a token: 401" in result.stdout
    finally:
        kubectl(
            "-n", EDITS, "delete", "pod", f"{release}-editflow-test", "--wait=false", check=False
        )
        uninstall(stack, release, EDITS)
