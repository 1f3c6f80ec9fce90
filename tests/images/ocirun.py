"""Run a command inside a built image the way a kubelet would: runc, read-only root, /tmp mounted.

The image's own config decides the process (entrypoint, command, environment, user,
working directory), exactly as a container runtime reads it; the only mount that can be
written is an empty ``/tmp``, as the chart's emptyDir gives every editflow Pod. The root
is an overlay of the image (``buildah from`` + ``buildah mount``) that runc remounts
read-only, so a write anywhere else fails with EROFS, whoever the user is.

The network namespace is left out, as the process kubelet's host-network Pods do, and
nothing here needs it.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editflow.devstack.buildah import ImageStorage


@dataclass(frozen=True)
class Ran:
    """What one container run printed and returned."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float  # `runc run` alone, from start to exit (no image mount or unmount)


def image_config(storage: ImageStorage, image: str) -> dict[str, Any]:
    """The OCI image config's ``config`` object (Entrypoint, Cmd, Env, User, Labels, ...)."""
    info = storage.inspect(image)
    assert info is not None, f"{image} is not in the build storage"
    return dict(info["OCIv1"]["config"])


def _user(spec: str) -> dict[str, int]:
    uid, _, gid = spec.partition(":")
    return {"uid": int(uid or 0), "gid": int(gid or uid or 0)}


def run_in_image(
    storage: ImageStorage,
    image: str,
    command: list[str] | None = None,
    *,
    entrypoint: list[str] | None = None,
    user: str | None = None,
    timeout: float = 120,
) -> Ran:
    """Run ``entrypoint + command`` (the image's own when None) in ``image`` under runc."""
    config = image_config(storage, image)
    argv = [*(entrypoint if entrypoint is not None else config.get("Entrypoint") or [])]
    argv += command if command is not None else config.get("Cmd") or []
    container = storage.buildah("from", "--pull=never", image).stdout.strip()
    name = f"editflow-test-{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory(prefix="editflow-runc-") as scratch:
        bundle, state = Path(scratch) / "bundle", Path(scratch) / "state"
        bundle.mkdir()
        try:
            rootfs = storage.buildah("mount", container).stdout.strip()
            subprocess.run(["runc", "spec"], cwd=bundle, check=True)
            spec = json.loads((bundle / "config.json").read_text())
            spec["root"] = {"path": rootfs, "readonly": True}
            spec["process"].update(
                terminal=False,
                args=argv,
                env=list(config.get("Env") or []),
                cwd=config.get("WorkingDir") or "/",
                user=_user(user if user is not None else config.get("User") or "0"),
            )
            namespaces = spec["linux"]["namespaces"]
            spec["linux"]["namespaces"] = [ns for ns in namespaces if ns["type"] != "network"]
            spec["mounts"].append(
                {
                    "destination": "/tmp",
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": ["nosuid", "nodev", "mode=1777", "size=256m"],
                }
            )
            (bundle / "config.json").write_text(json.dumps(spec))
            began = time.monotonic()
            result = subprocess.run(
                ["runc", "--root", str(state), "run", "--bundle", str(bundle), name],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            seconds = time.monotonic() - began
            return Ran(result.returncode, result.stdout, result.stderr, seconds)
        finally:
            subprocess.run(
                ["runc", "--root", str(state), "delete", "--force", name], capture_output=True
            )
            storage.buildah("umount", container, check=False)
            storage.buildah("rm", container, check=False)
