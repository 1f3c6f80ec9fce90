"""The wheelhouse the image build installs from, made on the host with the host's pip.

A fresh root filesystem inside a build does not trust a site's package proxy (its
certificate chain is the host's, not Debian's), so pip never reaches an index inside
``make images``: the host's pip, with the host's settings and the project's pip cache
(``paths.cache_root()/pip``, as scripts/bootstrap.sh uses), writes every wheel the image
needs into the wheelhouse and the Dockerfile installs with ``--no-index``.

One folder per dependency layer of the Dockerfile, so that building the control-plane
image never fetches the multi-GB torch wheels:

    control-plane/  editflow's required dependencies, plus setuptools and wheel (to build
                    editflow's own wheel)
    worker/         the ``inference`` extra (torch, torchvision, diffusers, ...)

**One copy per machine.** The wheels live in the editflow cache
(``paths.cache_root()/wheelhouse/<folder>``), not in the checkout: the worker's are 3.5 GB,
and a checkout of its own per clone (every clean-clone CI run, every worktree) filled a
machine's disk until a CI run died with ENOSPC inside ``pip wheel`` (issue 19). The build
context's ``images/wheelhouse/<folder>`` (the Dockerfile's bind mount must be inside the
context) gets hard links to them for the length of one build (:func:`linked`), which cost no
space, and is emptied afterwards.

A ``.stamp`` in each cache folder holds the hash of what decided it (its requirement lines and
``constraints.txt``); a stale folder is replaced whole, so no wheel of an old pin lingers where
``--find-links`` could pick it. A download is made in a ``.partial`` folder and renamed into
place only when complete, so an interrupted one is never mistaken for a wheelhouse.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path

from editflow.devstack import paths
from editflow.devstack.buildah import Reporter, run_streaming

#: The Dockerfile's dependency layers and the folder of each.
LAYERS = {"control-plane": "control-plane", "inference": "worker"}
#: Needed to build editflow's own wheel offline (pyproject.toml's build-system.requires).
BUILD_REQUIREMENTS = ("setuptools>=75", "wheel")


def requirement_lines(repo: Path, layer: str) -> list[str]:
    """The requirement lines of a layer, exactly as images/requirements.py prints them."""
    result = subprocess.run(
        [
            sys.executable,
            str(repo / "images" / "requirements.py"),
            str(repo / "pyproject.toml"),
            layer,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if layer == "control-plane":
        build = tomllib.loads((repo / "pyproject.toml").read_text())["build-system"]["requires"]
        lines += [req for req in build if req not in lines]
    return lines


def folder(repo: Path, layer: str) -> Path:
    """The build context's folder of a layer (the Dockerfile's bind mount source)."""
    return repo / "images" / "wheelhouse" / LAYERS[layer]


def cache_folder(layer: str) -> Path:
    """Where a layer's wheels are kept, once per machine."""
    return paths.cache_root() / "wheelhouse" / LAYERS[layer]


def stamp_of(repo: Path, layer: str) -> str:
    digest = hashlib.sha256()
    digest.update("\n".join(requirement_lines(repo, layer)).encode())
    digest.update((repo / "constraints.txt").read_bytes())
    return digest.hexdigest()[:16]


def ensure_wheelhouse(repo: Path, layer: str, report: Reporter) -> Path:
    """The cache folder of one layer, downloaded unless its stamp is current."""
    target = cache_folder(layer)
    stamp = stamp_of(repo, layer)
    stamp_file = target / ".stamp"
    if stamp_file.exists() and stamp_file.read_text().strip() == stamp:
        count = len(list(target.glob("*.whl")))
        report(f"wheelhouse {target.name}: cached ({count} wheels, stamp {stamp})")
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    requirements = partial / "requirements.in"
    requirements.write_text("\n".join(requirement_lines(repo, layer)) + "\n")
    report(f"wheelhouse {target.name}: pip wheel -c constraints.txt (host pip settings)")
    env = dict(os.environ)
    env.setdefault("PIP_CACHE_DIR", str(paths.cache_root() / "pip"))
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # The stale folder goes first: the old and the new worker wheels side by side are 7 GB.
    shutil.rmtree(target, ignore_errors=True)
    run_streaming(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--progress-bar",
            "off",
            "--wheel-dir",
            str(partial),
            "-c",
            str(repo / "constraints.txt"),
            "-r",
            str(requirements),
        ],
        log=paths.cache_root() / "images" / "logs" / f"wheelhouse-{target.name}.log",
        report=report,
        keep=lambda line: line.strip() if line.startswith(("Saved ", "Building wheel")) else None,
        step=f"wheelhouse {target.name}",
        env=env,
    )
    (partial / ".stamp").write_text(stamp + "\n")
    partial.rename(target)
    return target


@contextlib.contextmanager
def linked(repo: Path, layers: Iterable[str]) -> Iterator[None]:
    """The build context's wheelhouse folders hold the cached wheels for one build.

    Hard links when the checkout and the cache share a filesystem (no space at all), else
    copies; either way the folders are emptied afterwards, so a checkout never pins old wheels.
    """
    ensure_empty_folders(repo)
    made: list[Path] = []
    try:
        for layer in layers:
            source, into = cache_folder(layer), folder(repo, layer)
            _empty(into)
            made.append(into)
            for wheel in source.glob("*.whl"):
                try:
                    os.link(wheel, into / wheel.name)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                        raise
                    shutil.copy2(wheel, into / wheel.name)
        yield
    finally:
        for into in made:
            _empty(into)


def _empty(directory: Path) -> None:
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def ensure_empty_folders(repo: Path) -> None:
    """Both folders exist (the Dockerfile's bind mount names them), filled or not."""
    for name in LAYERS.values():
        (repo / "images" / "wheelhouse" / name).mkdir(parents=True, exist_ok=True)
