"""`editflow dev up` / `dev down`: the same stack for a person, editflow included."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from editflow.devstack import installer

pytestmark = [pytest.mark.platform, pytest.mark.slow]


def test_dev_up_runs_the_platform_and_editflow_and_dev_down_stops_everything(tmp_path: Path):
    env = {**os.environ, "EDITFLOW_DEV_DIR": str(tmp_path / "dev"), "COLUMNS": "200"}
    cli = [sys.executable, "-m", "editflow.cli.main", "dev"]
    # Cold, `dev up` builds both images first (the worker's takes minutes); warm, seconds.
    up = subprocess.run([*cli, "up"], env=env, capture_output=True, text=True, timeout=1800)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        endpoints = json.loads((tmp_path / "dev" / "endpoints.json").read_text())
        kubeconfig = tmp_path / "dev" / "kubeconfig"
        nodes = subprocess.run(
            [str(installer.binary("kubectl")), f"--kubeconfig={kubeconfig}", "get", "nodes"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "editflow-local-node" in nodes.stdout and "Ready" in nodes.stdout
        # editflow is a helm release running in its images (root: buildah, runc); without
        # root `dev up` says why and runs host processes.
        expected = "images" if os.geteuid() == 0 else "host"
        assert endpoints["mode"] == expected, endpoints
        if expected == "images":
            _assert_pods_run_in_their_images(kubeconfig, endpoints)
            asyncio.run(_assert_nats_has_the_charts_users(endpoints))
        gateway = endpoints["gateway"]
        with urllib.request.urlopen(f"{gateway['url']}/readyz", timeout=10) as resp:  # noqa: S310
            assert resp.status == 200
        request = urllib.request.Request(  # noqa: S310 - the loopback gateway
            f"{gateway['url']}/v1/templates",
            headers={"Authorization": f"Bearer {gateway['token']}"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            assert resp.status == 200
        status = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True)
        assert status.returncode == 0
    finally:
        down = subprocess.run([*cli, "down"], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert left.stdout.strip() == ""
    assert not (tmp_path / "dev" / "endpoints.json").exists()


async def _assert_nats_has_the_charts_users(endpoints: dict) -> None:
    """Issue 20 §2: the platform's NATS runs the chart's per-role users, as in production:
    no anonymous connection; the OA system's user publishes and nothing else."""
    import nats

    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(endpoints["nats_url"], allow_reconnect=False, max_reconnect_attempts=0)
    creds = endpoints["nats"]
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(
        creds["url"], user=creds["user"], password=creds["password"], error_cb=on_error,
        inbox_prefix=f"_INBOX_{creds['user']}", allow_reconnect=False,
    )  # fmt: skip
    try:
        assert (await nc.jetstream().account_info()) is not None
        await nc.publish("editflow.completions.forged", b"{}")  # the operator's alone
        await nc.flush()
        await asyncio.sleep(0.5)
        assert any("permissions violation" in e.lower() for e in errors), errors
    finally:
        await nc.close()


def _assert_pods_run_in_their_images(kubeconfig: Path, endpoints: dict) -> None:
    """The chart's operator and gateway Pods run the images pushed to the stack's registry."""
    pods = subprocess.run(
        [
            str(installer.binary("kubectl")),
            f"--kubeconfig={kubeconfig}",
            "-n",
            endpoints["namespace"],
            "get",
            "pods",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    running = {
        pod["metadata"]["labels"].get("app.kubernetes.io/component"): [
            status["image"] for status in pod["status"].get("containerStatuses", [])
        ]
        for pod in json.loads(pods.stdout)["items"]
    }
    registry = endpoints["registry"]
    assert running["operator"][0].startswith(f"{registry}/editflow/operator:"), running
    assert running["gateway"][0].startswith(f"{registry}/editflow/gateway:"), running
