"""What the process kubelet's node offers, where it pulls images from, and (only when a
caller asks for it with ``host_images``) how images map to local commands."""

from __future__ import annotations

import fnmatch
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class ImageRuntime:
    """How one image runs here: which directories stand in for its PATH, and its entrypoint."""

    path: tuple[str, ...]
    entrypoint: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


def _venv_bin() -> str:
    return str(Path(sys.executable).parent)


def default_images() -> dict[str, ImageRuntime]:
    """The project's own images run the installed ``editflow`` entry points."""
    system = ("/usr/local/bin", "/usr/bin", "/bin")
    editflow = ImageRuntime(path=(_venv_bin(), *system), entrypoint=("editflow",))
    return {
        "*editflow/worker*": editflow,
        "*editflow/editflow*": editflow,
        "*editflow/operator*": editflow,
        "*editflow/gateway*": editflow,
        # Small utility images used by tests and `helm test`.
        "busybox*": ImageRuntime(path=system, entrypoint=("sh",)),
        "*library/busybox*": ImageRuntime(path=system, entrypoint=("sh",)),
        "*python*": ImageRuntime(path=(_venv_bin(), *system), entrypoint=("python",)),
    }


def image_repository(image: str) -> str:
    """``registry/repo:tag@digest`` without tag and digest."""
    name = image.split("@", 1)[0]
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        name = name[:colon]
    return name


@dataclass
class KubeletConfig:
    """Everything the agent needs; defaults make a one-GPU "GPU node" for local mode."""

    root: Path
    node_name: str = "editflow-local-node"
    gpus: int = 1
    cpu: str = "8"
    memory: str = "32Gi"
    max_pods: int = 110
    labels: dict[str, str] = field(
        default_factory=lambda: {"editflow.io/local-node": "true", "nvidia.com/gpu.present": "true"}
    )
    taints: list[dict[str, str]] = field(default_factory=list)
    images: dict[str, ImageRuntime] = field(default_factory=default_images)
    pvc_root: Path | None = None
    host_paths: dict[str, str] = field(default_factory=dict)
    #: Run editflow's images as host commands (the ``images`` mapping) instead of pulling
    #: them and running them with runc. Only for callers that ask for it explicitly.
    host_images: bool = False
    #: Unqualified image names (``editflow/worker:1``) are pulled from this registry
    #: (``HOST:PORT``), like a containerd mirror for docker.io.
    default_registry: str | None = None
    #: Pulled images and unpacked layers, shared by every kubelet on this machine.
    image_store: Path | None = None
    runc: str = "runc"
    skopeo: str = "skopeo"
    resync_seconds: float = 2.0
    heartbeat_seconds: float = 10.0
    #: Pods reconciled at once. One (the default) keeps every action in one thread; a
    #: benchmark node that starts dozens of Pods a second needs more, as each Pod's
    #: actions wait on apiserver round trips (bind, status), not on this machine's CPU.
    workers: int = 1

    def resolve_image(self, image: str) -> ImageRuntime | None:
        repo = image_repository(image)
        for pattern, runtime in self.images.items():
            if fnmatch.fnmatchcase(repo, pattern) or fnmatch.fnmatchcase(image, pattern):
                return runtime
        return None

    def store_dir(self) -> Path:
        from editflow.devstack import paths

        return self.image_store or paths.cache_root() / "kubelet" / "images"

    def pvc_dir(self, namespace: str, claim: str) -> Path:
        base = self.pvc_root or self.root / "pvc"
        return base / namespace / claim

    def map_host_path(self, path: str) -> str | None:
        """A hostPath is only reachable through an explicit prefix mapping."""
        for prefix, target in sorted(self.host_paths.items(), key=lambda kv: -len(kv[0])):
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return target + path[len(prefix.rstrip("/")) :]
        return None

    @classmethod
    def from_file(cls, path: Path, root: Path) -> KubeletConfig:
        """Load overrides from JSON (``images`` maps pattern -> {path, entrypoint, env})."""
        raw: dict[str, Any] = json.loads(path.read_text())
        images = default_images()
        for pattern, spec in raw.pop("images", {}).items():
            images[pattern] = ImageRuntime(
                path=tuple(spec.get("path", ())),
                entrypoint=tuple(spec.get("entrypoint", ())),
                env=tuple(spec.get("env", {}).items()),
            )
        for key in ("pvc_root", "image_store"):
            if key in raw:
                raw[key] = Path(raw[key])
        return cls(root=root, images=images, **raw)


def which_in(command: str, path: tuple[str, ...]) -> str | None:
    """Resolve ``command`` against an image's PATH (absolute commands pass through)."""
    if "/" in command:
        return command
    return shutil.which(command, path=":".join(path))
