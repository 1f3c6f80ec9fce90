"""editflow's container images, built here without a container engine (``make images``).

The repository's ``Dockerfile`` has two targets; each gives the chart one or two image names:

    control-plane  editflow/operator, editflow/gateway   (operator, gateway, CLI; no torch)
    worker         editflow/worker                       (plus torch, diffusers, ...)

:func:`build` makes sure every requested target exists in the build storage, in four
cached steps, each of which says when it skips:

1. the base image ``debian:bookworm-slim``, made with mmdebstrap (:mod:`.baseimage`);
2. the wheelhouse, made by the host's pip (:mod:`.wheelhouse`);
3. ``buildah bud --layers --isolation chroot`` of the target, tagged
   ``<version>-<content hash>``; skipped outright when the storage already holds that tag.
   The content hash covers everything the build reads (the Dockerfile, .dockerignore,
   pyproject.toml, README.md, constraints.txt, images/ and the sources of the package) and
   the base recipe, so a warm ``make images`` takes seconds, and a changed line of code
   gives a new tag whose build reuses every layer below editflow's own wheel;
4. (:func:`push`) ``skopeo copy`` to a registry, skipped when the registry's manifest
   already names the same config digest. Layers already in the registry are never sent
   again (skopeo asks first), so after a code change only the one small layer travels:
   pushes always go to one loopback address per cache (:func:`push_port`), the key of
   skopeo's blob cache, so no unchanged layer is even compressed again.

What was built is recorded in ``paths.cache_root()/images/images.json`` (tag, image ID,
size, seconds), where the demo, the tests and ``editflow dev images --list`` read it.
The registry's port changes with every start, so pushes are not recorded: the registry
itself is asked.
Only one build runs at a time per cache (a file lock), so a test session and a
``make images`` beside it wait for each other instead of racing on the wheelhouse.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from editflow.core.filelock import exclusive
from editflow.devstack import baseimage, imageprune, paths, wheelhouse
from editflow.devstack.buildah import (
    ImageBuildError,
    ImageStorage,
    Reporter,
    require_tools,
    run_streaming,
)

#: Dockerfile target -> the chart's image names built from it.
TARGETS: dict[str, tuple[str, ...]] = {
    "control-plane": ("operator", "gateway"),
    "worker": ("worker",),
}
#: Dockerfile target -> the wheelhouse layers its build installs from.
TARGET_LAYERS: dict[str, tuple[str, ...]] = {
    "control-plane": ("control-plane",),
    "worker": ("control-plane", "inference"),
}
REPOSITORY_PREFIX = "editflow"
SOURCE_URL = "https://github.com/editflow/editflow"
#: Files and folders the build reads (the .dockerignore allow-list); the content hash covers them.
CONTEXT_FILES = (
    "Dockerfile",
    ".dockerignore",
    "pyproject.toml",
    "README.md",
    "constraints.txt",
    "images/requirements.py",
    "images/pip-install.sh",
)
CONTEXT_DIRS = ("src", "events", "operator", "inference", "gateway")
_SKIPPED_PARTS = {"__pycache__", ".pytest_cache"}


def _is_repo(root: Path) -> bool:
    return (root / "Dockerfile").is_file() and (root / "pyproject.toml").is_file()


def repo_root() -> Path:
    """The repository the images are built from: ``EDITFLOW_REPO``, else the current tree,
    else the checkout this module was installed from (an editable install links back to it,
    so ``make demo`` works from any directory)."""
    env = os.environ.get("EDITFLOW_REPO")
    if env:
        if not _is_repo(Path(env)):
            raise ImageBuildError(f"EDITFLOW_REPO={env} has no Dockerfile and pyproject.toml")
        return Path(env).resolve()
    installed_from = Path(__file__).resolve().parents[3]
    for root in (Path.cwd(), installed_from):
        if _is_repo(root):
            return root.resolve()
    raise ImageBuildError(
        f"{Path.cwd()} has no Dockerfile and pyproject.toml: run from the editflow repository "
        "(or set EDITFLOW_REPO to it)"
    )


def package_version(repo: Path) -> str:
    """editflow's version from pyproject.toml (the chart's appVersion follows it)."""
    return str(tomllib.loads((repo / "pyproject.toml").read_text())["project"]["version"])


def context_files(repo: Path) -> Iterator[Path]:
    """Every file of the build context that decides an image, in a stable order."""
    for name in CONTEXT_FILES:
        yield repo / name
    for top in CONTEXT_DIRS:
        for path in sorted((repo / top).rglob("*")):
            rel = path.relative_to(repo)
            if path.is_file() and not _SKIPPED_PARTS & set(rel.parts) and path.suffix != ".pyc":
                yield path


def content_hash(repo: Path) -> str:
    """A hash of everything a build reads, plus the base recipe: the tag's second half."""
    digest = hashlib.sha256()
    digest.update(f"base {baseimage.recipe_hash()}\n".encode())
    for path in context_files(repo):
        rel = path.relative_to(repo).as_posix()
        executable = os.access(path, os.X_OK)
        digest.update(f"{rel}\0{int(executable)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:12]


def git_revision(repo: Path) -> str:
    """The commit the build starts from, ``-dirty`` when the context has local changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", *CONTEXT_FILES, *CONTEXT_DIRS],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


@dataclass
class BuiltImage:
    """One Dockerfile target in the build storage."""

    target: str
    names: tuple[str, ...]
    tag: str
    image_id: str
    size_bytes: int
    build_seconds: float
    cached: bool
    revision: str

    def local(self, name: str | None = None) -> str:
        """The image's name in the build storage (``localhost/editflow/<name>:<tag>``)."""
        return f"localhost/{REPOSITORY_PREFIX}/{name or self.names[0]}:{self.tag}"

    def reference(self, registry: str, name: str | None = None) -> str:
        """``REGISTRY/editflow/<name>:<tag>``, what a Pod's ``image`` names."""
        return f"{registry}/{REPOSITORY_PREFIX}/{name or self.names[0]}:{self.tag}"


def record_path() -> Path:
    return paths.cache_root() / "images" / "images.json"


def recorded() -> dict[str, BuiltImage]:
    """What the last builds recorded, by target (empty when nothing was built)."""
    try:
        data = json.loads(record_path().read_text())
    except (OSError, ValueError):
        return {}
    return {
        target: BuiltImage(**{**item, "names": tuple(item["names"])})
        for target, item in data.items()
        if target in TARGETS
    }


def _record(image: BuiltImage) -> None:
    with _lock("record"):
        current = {target: asdict(built) for target, built in recorded().items()}
        current[image.target] = asdict(image)
        target = record_path()
        partial = target.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps(current, indent=2) + "\n")
        partial.replace(target)


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """An exclusive lock per cache (``build``: one build at a time; ``record``: images.json)."""
    with exclusive(paths.cache_root() / "images" / f"{name}.lock"):
        yield


def _print(line: str) -> None:
    print(line, flush=True)


def _keep_build_line(line: str) -> str | None:
    """The buildah lines a person wants to see: steps, cache hits, pip's summary, commits."""
    if re.match(r"^\[\d+/\d+\] (STEP \d+/\d+|COMMIT)", line):
        return line if len(line) <= 110 else line[:107] + "..."
    if line.startswith(("--> Using cache", "Successfully tagged", "Installing collected")):
        return line if len(line) <= 110 else line[:107] + "..."
    return None


def _validate_targets(targets: Iterable[str]) -> list[str]:
    chosen = list(dict.fromkeys(targets))
    unknown = [t for t in chosen if t not in TARGETS]
    if unknown or not chosen:
        raise ImageBuildError(
            f"targets {unknown or chosen}: choose from {', '.join(TARGETS)} "
            "(the Dockerfile's targets)"
        )
    return chosen


def build(
    targets: Sequence[str] = tuple(TARGETS),
    *,
    report: Reporter = _print,
    storage: ImageStorage | None = None,
    repo: Path | None = None,
) -> list[BuiltImage]:
    """Build the Dockerfile's ``targets`` into the build storage unless they are current.

    A current image is found without waiting for the build lock, so a test session that
    only needs the control-plane image never waits behind a worker build beside it.
    """
    chosen = _validate_targets(targets)
    require_tools("buildah")
    storage = storage or ImageStorage.default()
    repo = repo or repo_root()
    version = package_version(repo)
    tag = f"{version}-{content_hash(repo)}"
    results: list[BuiltImage] = []
    for target in chosen:
        built = _cached(target, tag, storage, report)
        if built is None:
            with _lock("build"):
                built = _cached(target, tag, storage, report)
                if built is None:
                    built = _build_one(target, tag, version, repo, storage, report)
                    imageprune.prune_build_storage(storage, tag, report)
        _record(built)
        results.append(built)
    return results


def _cached(target: str, tag: str, storage: ImageStorage, report: Reporter) -> BuiltImage | None:
    """The target's image of this tag when the storage has it (its labels say the rest)."""
    names = TARGETS[target]
    local = f"localhost/{REPOSITORY_PREFIX}/{names[0]}:{tag}"
    info = storage.inspect(local)
    if info is None:
        return None
    report(f"{target}: cached ({local}, content hash unchanged: build skipped)")
    image_id = str(info["FromImageID"])
    labels = (info.get("OCIv1", {}).get("config") or {}).get("Labels") or {}
    previous = recorded().get(target)
    return BuiltImage(
        target=target,
        names=names,
        tag=tag,
        image_id=image_id,
        size_bytes=storage.image_size(local),
        build_seconds=previous.build_seconds
        if previous is not None and previous.image_id == image_id
        else 0.0,
        cached=True,
        revision=labels.get("org.opencontainers.image.revision", "unknown"),
    )


def _build_one(
    target: str, tag: str, version: str, repo: Path, storage: ImageStorage, report: Reporter
) -> BuiltImage:
    names = TARGETS[target]
    local = f"localhost/{REPOSITORY_PREFIX}/{names[0]}:{tag}"
    began = time.monotonic()
    report(f"{target}: building {', '.join(names)} as tag {tag}")
    baseimage.ensure_base_image(storage, report)
    wheelhouse.ensure_empty_folders(repo)
    for layer in TARGET_LAYERS[target]:
        wheelhouse.ensure_wheelhouse(repo, layer, report)
    revision = git_revision(repo)
    argv = [
        "buildah",
        *storage.buildah_args(),
        "bud",
        "--isolation",
        "chroot",
        "--layers",
        "--pull=never",
        "--target",
        target,
        "--build-arg",
        "PYTHON_PACKAGES=wheelhouse",
        "--build-arg",
        f"VERSION={version}",
        "--build-arg",
        f"REVISION={revision}",
        "--build-arg",
        f"SOURCE={SOURCE_URL}",
        "--file",
        str(repo / "Dockerfile"),
    ]
    for name in names:
        argv += ["--tag", f"localhost/{REPOSITORY_PREFIX}/{name}:{tag}"]
    with wheelhouse.linked(repo, TARGET_LAYERS[target]):
        run_streaming(
            [*argv, str(repo)],
            log=paths.cache_root() / "images" / "logs" / f"build-{target}.log",
            report=report,
            keep=_keep_build_line,
            step=f"buildah bud --target {target}",
            cwd=repo,
        )
    image_id = storage.image_id(local)
    if image_id is None:
        raise ImageBuildError(f"buildah reported success but {local} is not in {storage.root}")
    seconds = time.monotonic() - began
    size = storage.image_size(local)
    report(f"{target}: built in {seconds:.0f}s, {size / 1e6:.0f} MB, image {image_id[:12]}")
    built = BuiltImage(
        target=target,
        names=names,
        tag=tag,
        image_id=image_id,
        size_bytes=size,
        build_seconds=round(seconds, 1),
        cached=False,
        revision=revision,
    )
    return built


def registry_config_digest(reference: str) -> str | None:
    """The config digest of ``docker://reference`` in a plain-HTTP registry, None if absent."""
    result = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{reference}"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        return None
    manifest = json.loads(result.stdout)
    return str((manifest.get("config") or {}).get("digest", "")) or None


def push(
    image: BuiltImage,
    registry: str,
    *,
    report: Reporter = _print,
    storage: ImageStorage | None = None,
    compression: str = "zstd",
) -> BuiltImage:
    """Copy each name of ``image`` to ``registry`` unless the registry already has it."""
    require_tools("skopeo")
    storage = storage or ImageStorage.default()
    for name in image.names:
        reference = image.reference(registry, name)
        if registry_config_digest(reference) == f"sha256:{image.image_id}":
            report(f"push {reference}: the registry already has this image, skipped")
            continue
        began = time.monotonic()
        report(f"push {reference}: skopeo copy ({compression} layers)")
        digest_file = paths.cache_root() / "images" / "logs" / f"push-{name}.digest"
        digest_file.parent.mkdir(parents=True, exist_ok=True)
        run_streaming(
            [
                "skopeo",
                "copy",
                "--dest-tls-verify=false",
                "--dest-compress-format",
                compression,
                "--digestfile",
                str(digest_file),
                storage.skopeo_ref(image.local(name)),
                f"docker://{reference}",
            ],
            log=paths.cache_root() / "images" / "logs" / f"push-{name}.log",
            report=report,
            keep=lambda line: (
                line if line.startswith(("Copying blob", "Writing manifest")) else None
            ),
            step=f"skopeo copy {name}",
        )
        report(f"push {reference}: {time.monotonic() - began:.0f}s")
        if registry_config_digest(reference) != f"sha256:{image.image_id}":
            raise ImageBuildError(
                f"push {reference}: skopeo succeeded but the registry does not serve "
                f"image {image.image_id[:12]}"
            )
    return image


def push_port() -> int:
    """The loopback port pushes go to: fixed per cache (``EDITFLOW_IMAGES_PUSH_PORT`` overrides).

    skopeo compresses a layer that comes from build storage unless its blob cache knows
    the registry already holds it, and that cache is keyed by the registry's host:port.
    A stack's registry gets a new port every start, so pushing there would compress the
    multi-GB torch layer again (measured: 272 s) after every code change; pushing always
    to one address of the same storage lets skopeo skip it (seconds).
    """
    env = os.environ.get("EDITFLOW_IMAGES_PUSH_PORT")
    if env:
        return int(env)
    key = hashlib.sha256(str(paths.cache_root().resolve()).encode()).digest()
    return 15000 + int.from_bytes(key[:2], "big") % 1000


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the registry binds (Go sets SO_REUSEADDR): the last push's TIME_WAIT is no owner.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def local_registry(report: Reporter = _print) -> Iterator[str]:
    """The push registry: a local registry on the persistent storage, on :func:`push_port`.

    Every stack serves the same storage (editflow.devstack.registry), so what is pushed
    here is at once in each stack's registry. One push registry runs at a time per cache
    (a lock); should something else hold the port, a free one is used and skopeo
    compresses the layers again (slower, never wrong).
    """
    from editflow.devstack.registry import LocalRegistry

    with _lock("push"), tempfile.TemporaryDirectory(prefix="editflow-push-registry-") as workdir:
        port = push_port()
        if not _port_is_free(port):
            report(f"push registry: port {port} is taken, using a free one (layers get compressed)")
            port = 0
        registry = LocalRegistry(Path(workdir), port=port)
        try:
            registry.start()
            yield registry.address
        finally:
            registry.stop()


def publish(
    targets: Sequence[str] = ("control-plane",),
    *,
    report: Reporter = _print,
    compression: str = "zstd",
    repo: Path | None = None,
) -> list[BuiltImage]:
    """Build ``targets`` if needed and push them to the local registry storage.

    What a test or the demo calls before it runs Pods in editflow's images: the images
    are then served by every stack's registry (``stack.registry.address``) under
    ``editflow/<name>:<tag>``.
    """
    built = build(targets, report=report, repo=repo)
    with local_registry(report) as address:
        for image in built:
            push(image, address, report=report, compression=compression)
    return built


def chart_values(
    registry: str, built: Sequence[BuiltImage], pull_policy: str = "IfNotPresent"
) -> dict:
    """The chart values that run ``built`` from ``registry`` (``operator``/``gateway``/``worker``
    ``.image``): what the tests, the demo and ``editflow dev up`` pass to ``helm install``.

    A name whose target was not built is left out, so the chart default stays for it.
    """
    values: dict[str, dict] = {}
    for image in built:
        for name in image.names:
            values[name] = {
                "image": {
                    "repository": f"{registry}/{REPOSITORY_PREFIX}/{name}",
                    "tag": image.tag,
                    "pullPolicy": pull_policy,
                }
            }
    return values
