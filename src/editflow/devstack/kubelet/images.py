"""Pulling images and keeping them, cached by digest, as unpacked layers for overlay roots.

Layout under the store (``KubeletConfig.store_dir()``, shared by every kubelet on
the machine, so an image is fetched once however many stacks run it)::

    oci/                  one OCI image layout that skopeo copies into (blobs deduplicated)
    layers/<hex>/         each layer unpacked once, with overlayfs whiteouts
    images/<hex>.json     what a manifest digest resolved to: layer dirs and image config
    lock                  flock held while copying and unpacking

A container's root is an overlay of the layer directories (read-only, shared)
with an upper directory of its own, so the multi-GB worker image exists here
once, unpacked, never once per container: the compressed layer blobs skopeo
wrote to the layout are removed once unpacked (manifests and configs stay).
After each new image, the oldest images of its repository beyond the newest two go, with
the layers nothing else names (:meth:`ImageStore._prune`); ``rm -rf`` of the store is
always safe while no kubelet runs.

Pulling runs in background threads (:class:`ImagePuller`): a slow pull must not
stall the agent's one reconcile loop, and a failed pull is retried with the
kubelet's doubling back-off (10 s up to 5 min), reported as ``ErrImagePull``
and then ``ImagePullBackOff`` as the kubelet does.

Layers come from the project's own registry; the unpacker trusts them as a
container engine trusts a pulled image (GNU tar as root, ownership kept).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editflow.core.filelock import exclusive

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
BACKOFF_INITIAL = 10.0
BACKOFF_MAX = 300.0


#: Images kept per repository in the store (see :meth:`ImageStore._prune`).
KEEP_PER_REPOSITORY = 2


def _repository(reference: str) -> str:
    """``host:port/editflow/worker:tag`` -> ``editflow/worker``: one repository whichever
    registry port served it (every stack's registry serves the same storage)."""
    name = reference.partition("@")[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name.rsplit(":", 1)[0]
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    return "/".join(parts)


class PullError(Exception):
    """The image could not be pulled; the message is what the container status shows."""


@dataclass(frozen=True)
class ImageInfo:
    """A pulled image: where its layers are and what its config says."""

    reference: str
    digest: str
    layers: tuple[Path, ...]  # bottom layer first
    config: dict[str, Any]  # the OCI image config's "config" (Entrypoint, Cmd, Env, User, ...)

    @property
    def user(self) -> str:
        return str(self.config.get("User") or "")


def qualify(image: str, default_registry: str | None) -> str:
    """The full reference to pull: ``host[:port]/repo:tag``.

    Names without a registry host go to ``default_registry`` when there is one
    (the local registry stands in for docker.io), else to docker.io as Docker
    normalises them.
    """
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return image
    if default_registry:
        return f"{default_registry}/{image}"
    return f"docker.io/{image}" if rest else f"docker.io/library/{image}"


def credentials_for(reference: str, docker_configs: list[dict[str, Any]]) -> str | None:
    """``user:password`` for the reference's registry from ``imagePullSecrets`` (their
    ``.dockerconfigjson`` / ``.dockercfg`` contents, in the Pod's order), or None."""
    host = reference.partition("/")[0]
    for config in docker_configs:
        auths = config.get("auths", config)  # .dockercfg is the auths map itself
        for key, entry in auths.items():
            server = key.removeprefix("https://").removeprefix("http://").split("/", 1)[0]
            if server != host or not isinstance(entry, dict):
                continue
            if entry.get("username"):
                return f"{entry['username']}:{entry.get('password', '')}"
            if entry.get("auth"):
                return base64.b64decode(entry["auth"]).decode()
    return None


def _skopeo_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
    text = lines[-1] if lines else f"skopeo exited with {result.returncode}"
    logged = re.search(r'msg="(.*)"$', text)  # logrus: time="..." level=fatal msg="..."
    if logged:
        text = logged.group(1).replace('\\"', '"')
    return text.removeprefix("Error: ").strip()


def convert_whiteouts(root: Path) -> None:
    """OCI whiteout files become what overlayfs understands: a 0/0 character device for a
    deleted path, the ``trusted.overlay.opaque`` attribute for a directory replaced whole."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if not name.startswith(WHITEOUT):
                continue
            path = Path(dirpath) / name
            path.unlink()
            if name == OPAQUE:
                os.setxattr(dirpath, "trusted.overlay.opaque", b"y")
            else:
                os.mknod(Path(dirpath) / name[len(WHITEOUT) :], stat.S_IFCHR, os.makedev(0, 0))


def unpack_layer(blob: Path, target: Path) -> None:
    """Unpack one layer blob into ``target`` once; concurrent unpackers never see half a layer."""
    if target.exists():
        return
    tmp = target.parent / f".tmp-{target.name[:12]}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        # GNU tar detects the compression itself; as root it keeps owners and modes.
        result = subprocess.run(
            ["tar", "-x", "-f", str(blob), "-C", str(tmp), "--numeric-owner", "-p"],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise PullError(f"unpacking layer {target.name[:12]}: {result.stderr.strip()}")
        convert_whiteouts(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.exists():
                raise  # another kubelet finished the same layer first otherwise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class ImageStore:
    """Pull by reference, keep by digest."""

    def __init__(self, root: Path, *, skopeo: str = "skopeo") -> None:
        self.root = root
        self.skopeo = skopeo

    def _blob(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        return self.root / "oci" / "blobs" / algo / hexpart

    def resolve(self, reference: str, creds: str | None = None) -> str:
        """The manifest digest the registry serves for ``reference`` now."""
        auth = ["--creds", creds] if creds else []
        result = subprocess.run(
            [self.skopeo, "inspect", "--tls-verify=false", *auth, "--raw", f"docker://{reference}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise PullError(f'failed to resolve reference "{reference}": {_skopeo_error(result)}')
        return "sha256:" + hashlib.sha256(result.stdout.encode()).hexdigest()

    def cached(self, digest: str, reference: str | None = None) -> ImageInfo | None:
        record = self.root / "images" / f"{digest.partition(':')[2]}.json"
        if not record.exists():
            return None
        data = json.loads(record.read_text())
        layers = tuple(Path(p) for p in data["layers"])
        if not all(p.is_dir() for p in layers):
            return None
        return ImageInfo(reference or data["reference"], digest, layers, data["config"])

    def _ref_record(self, reference: str) -> Path:
        return self.root / "refs" / hashlib.sha256(reference.encode()).hexdigest()

    def present(self, reference: str) -> ImageInfo | None:
        """The image last pulled for ``reference``, without asking the registry."""
        with contextlib.suppress(FileNotFoundError):
            return self.cached(self._ref_record(reference).read_text().strip(), reference)
        return None

    def pull(self, reference: str, *, always: bool = False, creds: str | None = None) -> ImageInfo:
        """``IfNotPresent``: what is here for the reference; else (and with ``always``)
        resolve the digest, then copy and unpack unless that digest is already here."""
        if not always:
            found = self.present(reference)
            if found is not None:
                return found
        digest = self.resolve(reference, creds)
        found = self.cached(digest, reference)
        if found is None:
            with exclusive(self.root / "lock"):
                found = self.cached(digest, reference) or self._copy_and_unpack(
                    reference, digest, creds
                )
        record = self._ref_record(reference)
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(f".{uuid.uuid4().hex[:8]}")
        tmp.write_text(digest)
        tmp.replace(record)
        return found

    def _copy_and_unpack(self, reference: str, digest: str, creds: str | None) -> ImageInfo:
        name = digest.partition(":")[2]
        layout = self.root / "oci"
        result = subprocess.run(
            [
                self.skopeo,
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                *(["--src-creds", creds] if creds else []),
                f"docker://{reference}",
                f"oci:{layout}:{name}",
            ],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if result.returncode != 0:
            raise PullError(f'failed to pull image "{reference}": {_skopeo_error(result)}')
        index = json.loads((layout / "index.json").read_text())
        entry = next(
            m
            for m in index["manifests"]
            if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == name
        )
        manifest = json.loads(self._blob(entry["digest"]).read_text())
        config = json.loads(self._blob(manifest["config"]["digest"]).read_text())
        layers: list[Path] = []
        for layer in manifest["layers"]:
            target = self.root / "layers" / layer["digest"].partition(":")[2]
            unpack_layer(self._blob(layer["digest"]), target)
            # The unpacked layer is what runs; the compressed blob would only be a third
            # copy of a multi-GB image (registry, layout, layers). A later image that
            # shares the layer downloads it again over loopback and skips the unpack.
            self._blob(layer["digest"]).unlink(missing_ok=True)
            layers.append(target)
        record = self.root / "images" / f"{name}.json"
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "reference": reference,
                    "layers": [str(p) for p in layers],
                    "config": config.get("config") or {},
                }
            )
        )
        tmp.replace(record)
        self._prune(keep=record)
        return ImageInfo(reference, digest, tuple(layers), config.get("config") or {})

    def _prune(self, *, keep: Path, per_repository: int = KEEP_PER_REPOSITORY) -> list[Path]:
        """After a new image, drop the oldest images of its repository and their layers.

        Called under the store lock. Every new worker build is a new digest, and nothing
        else ever removed one: the store grew by the image's new layers on each build, and a
        new dependency set is gigabytes (issue 19: the disk filled). The newest
        ``per_repository`` records of each repository stay (by when they were pulled), so a
        container started from the image before stays on layers that exist; a layer goes only
        when no remaining record names it.
        """
        records = sorted(
            (self.root / "images").glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True
        )
        seen: dict[str, int] = {}
        doomed: list[Path] = []
        kept_layers: set[str] = set()
        for path in records:
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            repository = _repository(data.get("reference", ""))
            seen[repository] = seen.get(repository, 0) + 1
            if path != keep and seen[repository] > per_repository:
                doomed.append(path)
            else:
                kept_layers.update(data.get("layers", []))
        for path in doomed:
            path.unlink(missing_ok=True)
        removed: list[Path] = []
        for layer in (self.root / "layers").iterdir():
            if layer.is_dir() and str(layer) not in kept_layers:
                shutil.rmtree(layer, ignore_errors=True)
                removed.append(layer)
        return removed


@dataclass
class _Attempt:
    future: Future[ImageInfo] | None = None
    error: str = ""
    failures: int = 0
    retry_at: float = 0.0
    reported: bool = False


@dataclass(frozen=True)
class Waiting:
    """Not pulled (yet): the container's waiting reason and message."""

    reason: str  # ContainerCreating, ErrImagePull, ImagePullBackOff
    message: str = ""


class ImagePuller:
    """Background pulls with the kubelet's per-image back-off."""

    def __init__(self, store: ImageStore, *, workers: int = 2) -> None:
        self.store = store
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kubelet-pull")
        self.attempts: dict[str, _Attempt] = {}
        self.lock = threading.Lock()

    def get(
        self, key: str, reference: str, *, always: bool = False, creds: str | None = None
    ) -> ImageInfo | Waiting:
        """The image for ``key`` (the agent uses one per Pod and image, as the kubelet's
        back-off does; ``always``: ask the registry even when the store has the reference)."""
        if not always and key not in self.attempts:
            present = self.store.present(reference)  # IfNotPresent and here: no pull at all
            if present is not None:
                return present
        with self.lock:
            attempt = self.attempts.setdefault(key, _Attempt())
            if attempt.future is not None and attempt.future.done():
                try:
                    return attempt.future.result()
                except PullError as exc:
                    attempt.error = str(exc)
                except Exception as exc:  # any failure is a pull failure
                    attempt.error = f'failed to pull image "{reference}": {exc}'
                attempt.future = None
                attempt.failures += 1
                attempt.reported = False
                delay = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (attempt.failures - 1))
                attempt.retry_at = time.monotonic() + delay
            if attempt.future is not None:
                return Waiting("ContainerCreating")
            if attempt.failures and time.monotonic() < attempt.retry_at:
                if not attempt.reported:
                    attempt.reported = True
                    return Waiting("ErrImagePull", attempt.error)
                return Waiting(
                    "ImagePullBackOff",
                    f'Back-off pulling image "{reference}": ErrImagePull: {attempt.error}',
                )
            attempt.future = self.pool.submit(
                self.store.pull, reference, always=always, creds=creds
            )
            return Waiting("ContainerCreating")

    def forget_pod(self, uid: str) -> None:
        """Drop the attempts of a Pod that is gone."""
        with self.lock:
            for key in [k for k in self.attempts if k.endswith(f"#{uid}")]:
                del self.attempts[key]

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
