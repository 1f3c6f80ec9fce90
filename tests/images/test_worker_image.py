"""The worker image (editflow/worker): torch and diffusers import, uid 10001, read-only root.

Cold it costs about 5 minutes and 6.4 GB here (the demo's test runs in the same image,
built once per content hash); EDITFLOW_TEST_WORKER_IMAGE=0 leaves it out (see conftest.py).
"""

from __future__ import annotations

import pytest

from editflow.devstack.buildah import ImageStorage
from tests.images.ocirun import image_config, run_in_image

pytestmark = pytest.mark.slow


def test_torch_diffusers_and_the_worker_import_inside_the_image(worker, storage: ImageStorage):
    ran = run_in_image(
        storage,
        worker.local(),
        [
            "-c",
            "import os, torch, diffusers, transformers, editflow.inference;"
            "print(torch.__version__, diffusers.__version__, os.getuid())",
        ],
        entrypoint=["python"],
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    torch_version, _, uid = ran.stdout.split()
    assert torch_version.startswith("2.15.0")
    assert uid == "10001"


def test_the_worker_command_runs_on_a_read_only_root(worker, storage: ImageStorage):
    ran = run_in_image(storage, worker.local(), ["worker", "run", "--help"], timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert "--request" in ran.stdout


def test_the_worker_image_asks_the_nvidia_toolkit_for_compute_and_stays_offline(
    worker, storage: ImageStorage
):
    config = image_config(storage, worker.local())
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["HOME"] == "/tmp"
    assert config["User"] == "10001:10001"
    assert config["Labels"]["org.opencontainers.image.title"] == "editflow worker"
