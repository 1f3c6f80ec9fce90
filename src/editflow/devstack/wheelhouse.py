"""The wheelhouse the image build installs from, made on the host with the host's pip.

A fresh root filesystem inside a build does not trust a site's package proxy (its
certificate chain is the host's, not Debian's), so pip never reaches an index inside
``make images``: the host's pip, with the host's settings and the project's pip cache
(``paths.cache_root()/pip``, as scripts/bootstrap.sh uses), writes every wheel the image
needs into ``images/wheelhouse/<layer>/`` and the Dockerfile installs with ``--no-index``.

One folder per dependency layer of the Dockerfile, so that building the control-plane
image never fetches the multi-GB torch wheels:

    control-plane/  editflow's required dependencies, plus setuptools and wheel (to build
                    editflow's own wheel)
    worker/         the ``inference`` extra (torch, torchvision, diffusers, ...)

A ``.stamp`` in each folder holds the hash of what decided it (its requirement lines and
``constraints.txt``); a stale folder is emptied and made again, so no wheel of an old pin
lingers where ``--find-links`` could pick it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
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
    return repo / "images" / "wheelhouse" / LAYERS[layer]


def stamp_of(repo: Path, layer: str) -> str:
    digest = hashlib.sha256()
    digest.update("\n".join(requirement_lines(repo, layer)).encode())
    digest.update((repo / "constraints.txt").read_bytes())
    return digest.hexdigest()[:16]


def ensure_wheelhouse(repo: Path, layer: str, report: Reporter) -> Path:
    """Fill ``images/wheelhouse/<folder>`` for one layer unless its stamp is current."""
    target = folder(repo, layer)
    stamp = stamp_of(repo, layer)
    stamp_file = target / ".stamp"
    if stamp_file.exists() and stamp_file.read_text().strip() == stamp:
        count = len(list(target.glob("*.whl")))
        report(f"wheelhouse {target.name}: cached ({count} wheels, stamp {stamp})")
        return target
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    requirements = target / "requirements.in"
    requirements.write_text("\n".join(requirement_lines(repo, layer)) + "\n")
    report(f"wheelhouse {target.name}: pip wheel -c constraints.txt (host pip settings)")
    env = dict(os.environ)
    env.setdefault("PIP_CACHE_DIR", str(paths.cache_root() / "pip"))
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    run_streaming(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--progress-bar",
            "off",
            "--wheel-dir",
            str(target),
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
    stamp_file.write_text(stamp + "\n")
    return target


def ensure_empty_folders(repo: Path) -> None:
    """Both folders exist (the Dockerfile's bind mount names them), filled or not."""
    for name in LAYERS.values():
        (repo / "images" / "wheelhouse" / name).mkdir(parents=True, exist_ok=True)
