"""The image build storage and the tools that use it: buildah builds, skopeo copies.

No container engine runs here: buildah (Debian's 1.28) builds a Dockerfile into a
containers-storage directory with the overlay driver and ``--isolation chroot``, and skopeo
copies images out of that storage into a registry. Both take the storage location on every
call, so the project's images live in one place of their own under the editflow cache
(``paths.cache_root()/images/storage``) instead of the machine-wide
``/var/lib/containers/storage``: an ``EDITFLOW_CACHE_DIR`` of its own (a cold-build
measurement, a clean CI cache) gets a storage of its own, and nothing else on the machine
prunes it.

The run root (locks and mount state, which must not survive a reboot) goes under ``/run``,
keyed by the storage path, as containers-storage expects.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editflow.devstack import paths

#: Progress lines for a person: one call per line (the CLI prints them, tests may collect them).
Reporter = Callable[[str], None]

#: The Debian packages behind the tools (what scripts/bootstrap.sh installs as root).
DEBIAN_PACKAGES = ("buildah", "runc", "skopeo", "umoci", "mmdebstrap", "zstd")


class ImageBuildError(RuntimeError):
    """An image could not be made, copied or inspected; the message says which step and why."""


def require_tools(*tools: str) -> None:
    """Fail with the fix when a tool is missing (they come from Debian, as root)."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise ImageBuildError(
            f"{', '.join(missing)} not found on PATH: images are built without a container "
            "engine by Debian's buildah and skopeo; install them as root with "
            f"`apt-get install {' '.join(DEBIAN_PACKAGES)}` (scripts/bootstrap.sh does)"
        )


@dataclass(frozen=True)
class ImageStorage:
    """A containers-storage directory (overlay driver) and how to name it to each tool."""

    root: Path
    runroot: Path
    driver: str = "overlay"

    @classmethod
    def default(cls) -> ImageStorage:
        """The project's build storage under the editflow cache."""
        root = paths.cache_root() / "images" / "storage"
        key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
        return cls(root=root, runroot=Path("/run") / f"editflow-containers-{key}")

    def buildah_args(self) -> list[str]:
        """The global options that put buildah on this storage."""
        return [
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            self.driver,
        ]

    def skopeo_ref(self, image: str) -> str:
        """A skopeo transport reference to ``image`` in this storage."""
        return f"containers-storage:[{self.driver}@{self.root}+{self.runroot}]{image}"

    def buildah(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one short buildah command on this storage and capture its output."""
        result = subprocess.run(
            ["buildah", *self.buildah_args(), *args], capture_output=True, text=True
        )
        if check and result.returncode != 0:
            raise ImageBuildError(
                f"buildah {' '.join(args[:2])} failed: {_last_line(result.stderr)}"
            )
        return result

    def inspect(self, image: str) -> dict[str, Any] | None:
        """``buildah inspect`` of an image in this storage, or None when it is not there."""
        result = self.buildah("inspect", "--type", "image", image, check=False)
        if result.returncode != 0:
            return None
        return json.loads(result.stdout)

    def image_id(self, image: str) -> str | None:
        """The image's ID (the digest of its config), or None when it is not there."""
        info = self.inspect(image)
        return None if info is None else str(info["FromImageID"])

    def image_size(self, image: str) -> int:
        """Bytes of the image's layers, uncompressed (what it takes on a node's disk).

        buildah prints sizes only rounded for people ("433 MB"), so the layer chain is
        summed from containers-storage's own records (``diff-size`` of each layer).
        """
        image_id = self.image_id(image)
        if image_id is None:
            raise ImageBuildError(f"{image} is not in {self.root}")
        images = json.loads((self.root / f"{self.driver}-images" / "images.json").read_text())
        layers = json.loads((self.root / f"{self.driver}-layers" / "layers.json").read_text())
        by_id = {layer["id"]: layer for layer in layers}
        top = next(item["layer"] for item in images if item["id"] == image_id)
        total = 0
        while top:
            layer = by_id[top]
            total += int(layer.get("diff-size", 0))
            top = layer.get("parent", "")
        return total


def run_streaming(
    argv: Sequence[str],
    *,
    log: Path,
    report: Reporter,
    keep: Callable[[str], str | None],
    step: str,
    heartbeat_seconds: float = 30.0,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """Run a long command, its whole output into ``log``, the lines ``keep`` picks to ``report``.

    A build step can be silent for minutes (committing a multi-GB layer), so a heartbeat
    line says what is still running. On failure the error names the log and quotes its end.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    last_output = [began]
    done = threading.Event()

    def beat() -> None:
        while not done.wait(heartbeat_seconds):
            if time.monotonic() - last_output[0] >= heartbeat_seconds:
                report(f"    ... {step}: still running ({time.monotonic() - began:.0f}s)")

    ticker = threading.Thread(target=beat, daemon=True)
    ticker.start()
    try:
        with log.open("w", encoding="utf-8") as sink:
            proc = subprocess.Popen(
                list(argv),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                cwd=cwd,
                env=env,
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                sink.write(line)
                shown = keep(line.rstrip("\n"))
                if shown:
                    report(f"    {shown}")
                    last_output[0] = time.monotonic()
            code = proc.wait()
    finally:
        done.set()
        ticker.join()
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise ImageBuildError(f"{step} failed (exit {code}); full log: {log}\n" + "\n".join(tail))


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
