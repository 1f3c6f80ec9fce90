"""The control-plane image (editflow/operator, editflow/gateway), built with buildah, run with runc.

Each test runs the real image under runc with a read-only root and only ``/tmp``
writable, as the chart runs the operator and gateway Pods.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from editflow.devstack import images
from editflow.devstack.buildah import ImageStorage
from tests.images.ocirun import image_config, run_in_image

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_the_image_runs_the_editflow_command_by_default(control_plane, storage: ImageStorage):
    ran = run_in_image(storage, control_plane.local())
    assert ran.returncode == 0, ran.stderr
    for command in ("operator", "gateway", "events"):
        assert command in ran.stdout


def test_it_runs_as_uid_and_gid_10001(control_plane, storage: ImageStorage):
    config = image_config(storage, control_plane.local())
    # Numeric, so that the kubelet can verify runAsNonRoot without an /etc/passwd lookup.
    assert config["User"] == "10001:10001"
    ran = run_in_image(
        storage,
        control_plane.local(),
        ["-c", "import os; print(os.getuid(), os.getgid(), os.environ['HOME'])"],
        entrypoint=["python"],
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["10001", "10001", "/tmp"]


def test_the_control_plane_has_no_torch(control_plane, storage: ImageStorage):
    ran = run_in_image(
        storage, control_plane.local(), ["-c", "import torch"], entrypoint=["python"]
    )
    assert ran.returncode != 0
    assert "No module named 'torch'" in ran.stderr


def test_the_gateway_app_imports_in_its_image(control_plane, storage: ImageStorage):
    # A dependency only the venv had (Pillow for the desk's uploads) crash-looped the gateway
    # Pod; the unit tests run in the venv, so only the image itself can tell.
    ran = run_in_image(
        storage,
        control_plane.local(),
        ["-c", "import editflow.gateway.app, editflow.gateway.deskroutes"],
        entrypoint=["python"],
    )
    assert ran.returncode == 0, ran.stderr


def test_the_operator_loads_its_whole_code_on_a_read_only_root(
    control_plane, storage: ImageStorage
):
    # `operator crd` imports the operator package (kopf, the kubernetes client, the CRD
    # model) and prints the CRD: no write is needed anywhere, not even for bytecode.
    ran = run_in_image(storage, control_plane.local(), ["operator", "crd"])
    assert ran.returncode == 0, ran.stderr
    assert "editjobs.editflow.io" in ran.stdout


def test_a_write_to_the_root_filesystem_fails_even_as_root_and_tmp_is_writable(
    control_plane, storage: ImageStorage
):
    probe = (
        "import pathlib\n"
        "pathlib.Path('/tmp/probe').write_text('ok')\n"
        "print('tmp', pathlib.Path('/tmp/probe').read_text())\n"
        "try:\n"
        "    pathlib.Path('/probe').write_text('no')\n"
        "except OSError as exc:\n"
        "    print('root', exc.strerror)\n"
    )
    as_image_user = run_in_image(
        storage, control_plane.local(), ["-c", probe], entrypoint=["python"]
    )
    as_root = run_in_image(
        storage, control_plane.local(), ["-c", probe], entrypoint=["python"], user="0:0"
    )
    assert as_image_user.returncode == 0, as_image_user.stderr
    assert "tmp ok" in as_image_user.stdout
    assert "root " in as_image_user.stdout  # refused (permission or read-only)
    assert as_root.returncode == 0, as_root.stderr
    # Root may write anywhere it has permission: only the read-only mount stops it.
    assert "root Read-only file system" in as_root.stdout


def test_the_oci_labels_name_version_source_and_revision(control_plane, storage: ImageStorage):
    labels = image_config(storage, control_plane.local())["Labels"]
    assert labels["org.opencontainers.image.version"] == images.package_version(REPO)
    assert labels["org.opencontainers.image.source"] == images.SOURCE_URL
    assert labels["org.opencontainers.image.title"] == "editflow control plane"
    revision = labels["org.opencontainers.image.revision"]
    assert revision == control_plane.revision
    # The commit the build started from (`-dirty`: the context had local changes).
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", revision), revision
    commit = revision.removesuffix("-dirty")
    kind = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-t", commit], capture_output=True, text=True
    ).stdout.strip()
    assert kind == "commit"


def test_both_chart_names_are_the_same_image(control_plane, storage: ImageStorage):
    assert control_plane.names == ("operator", "gateway")
    ids = {storage.image_id(control_plane.local(name)) for name in control_plane.names}
    assert ids == {control_plane.image_id}


def _frozen_context(repo: Path, into: Path) -> Path:
    """A copy of the build context that nobody edits (the working tree may change meanwhile)."""
    for name in images.CONTEXT_FILES:
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, into / name)
    for top in images.CONTEXT_DIRS:
        shutil.copytree(repo / top, into / top, ignore=shutil.ignore_patterns("__pycache__"))
    # The wheelhouse is not part of the content hash. A checkout whose images were found by
    # their hash (built from another clone of the same commit) has none, and needs none.
    wheels = repo / "images" / "wheelhouse" / "control-plane"
    if wheels.is_dir():
        target = into / "images" / "wheelhouse" / "control-plane"
        shutil.copytree(wheels, target, copy_function=os.link)
    return into


def test_a_rebuild_with_the_same_content_is_skipped_by_its_hash(
    control_plane, storage: ImageStorage, tmp_path: Path
):
    context = _frozen_context(REPO, tmp_path)
    (first,) = images.build(["control-plane"], repo=context, report=lambda line: None)
    lines: list[str] = []
    (again,) = images.build(["control-plane"], repo=context, report=lines.append)
    assert again.cached
    assert (again.tag, again.image_id) == (first.tag, first.image_id)
    assert any("content hash unchanged: build skipped" in line for line in lines), lines
    # Nothing below the target was even looked at: no base image, wheelhouse or buildah run.
    assert not any(line.startswith(("base ", "wheelhouse")) for line in lines), lines


@pytest.mark.platform
def test_the_registry_serves_the_pushed_image_and_a_second_push_is_skipped(control_plane):
    lines: list[str] = []
    with images.local_registry() as address:
        images.push(control_plane, address, report=lines.append)
        for name in control_plane.names:
            reference = control_plane.reference(address, name)
            assert images.registry_config_digest(reference) == f"sha256:{control_plane.image_id}"
        lines.clear()
        images.push(control_plane, address, report=lines.append)
    assert lines and all("already has this image, skipped" in line for line in lines), lines
