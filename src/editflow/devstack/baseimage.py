"""The base image the Dockerfile names, made here: no container registry is reachable.

``debian:bookworm-slim`` is made with mmdebstrap (Debian's own minimal bootstrap) from the
Debian mirror, which the machine can reach, and imported into the build storage under
that very name, so the Dockerfile stays the one a cluster operator builds with docker.
It differs from Docker Hub's image in one way the Dockerfile knows: Python is already in
it (``--include``), so the build's first RUN needs no apt network access.

Like Docker Hub's slim images, documentation, manual pages and translations are left out
(dpkg ``path-exclude``): they are a third of a minimal Debian and no container reads them.

The tarball (about 200 MB, about a minute to make) is cached under
``paths.cache_root()/images/base/`` by a hash of the recipe; the image in storage carries
that hash as a label, so a warm run only inspects it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from editflow.devstack import paths
from editflow.devstack.buildah import (
    ImageBuildError,
    ImageStorage,
    Reporter,
    require_tools,
    run_streaming,
)

#: The name the Dockerfile's FROM uses (its BASE_IMAGE default), fully qualified.
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
SUITE = "bookworm"
VARIANT = "minbase"
#: python3 is 3.11 in bookworm, like the project's; ca-certificates for HTTPS from the images.
PACKAGES = ("python3", "python3-venv", "ca-certificates")
#: What Docker Hub's slim images exclude (debuerreotype's slimify), copyright files kept.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/groff/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/linda/*",
    "path-exclude=/usr/share/locale/*",
)
#: The config Docker Hub's debian images carry.
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RECIPE_LABEL = "io.editflow.base.recipe"


def mirror() -> str:
    """The Debian mirror (``EDITFLOW_DEBIAN_MIRROR`` overrides deb.debian.org)."""
    return os.environ.get("EDITFLOW_DEBIAN_MIRROR", "http://deb.debian.org/debian").rstrip("/")


def sources() -> list[str]:
    """The apt sources: the release, its updates and its security updates."""
    main = mirror()
    security = main.removesuffix("/debian") + "/debian-security"
    return [
        f"deb {main} {SUITE} main",
        f"deb {main} {SUITE}-updates main",
        f"deb {security} {SUITE}-security main",
    ]


def recipe_hash() -> str:
    """What decides the base image's contents; part of every image's content hash."""
    recipe = {
        "suite": SUITE,
        "variant": VARIANT,
        "packages": PACKAGES,
        "dpkg": DPKG_EXCLUDES,
        "sources": sources(),
        "env": PATH_ENV,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def tarball_path() -> Path:
    return paths.cache_root() / "images" / "base" / f"debian-{SUITE}-{VARIANT}-{recipe_hash()}.tar"


def make_tarball(report: Reporter) -> Path:
    """The mmdebstrap root filesystem tarball, made once per recipe (written atomically)."""
    target = tarball_path()
    if target.exists():
        report(f"base tarball: cached ({target})")
        return target
    require_tools("mmdebstrap")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial.tar")
    report(f"base tarball: mmdebstrap --variant={VARIANT} {SUITE} (about a minute)")
    argv = [
        "mmdebstrap",
        f"--variant={VARIANT}",
        f"--include={','.join(PACKAGES)}",
        *(f"--dpkgopt={rule}" for rule in DPKG_EXCLUDES),
        SUITE,
        str(partial),
        *sources(),
    ]
    run_streaming(
        argv,
        log=paths.cache_root() / "images" / "logs" / "base.log",
        report=report,
        keep=lambda line: line if line.startswith(("I: success", "E: ")) else None,
        step="mmdebstrap",
    )
    partial.replace(target)
    return target


def ensure_base_image(storage: ImageStorage, report: Reporter) -> str:
    """Make sure the storage holds ``debian:bookworm-slim`` of the current recipe; its ID."""
    recipe = recipe_hash()
    info = storage.inspect(BASE_IMAGE)
    if info is not None:
        labels = (info.get("OCIv1", {}).get("config") or {}).get("Labels") or {}
        if labels.get(RECIPE_LABEL) == recipe:
            report(f"base image: cached ({BASE_IMAGE}, recipe {recipe})")
            return str(info["FromImageID"])
    tarball = make_tarball(report)
    report(f"base image: importing {tarball.name} as {BASE_IMAGE}")
    container = storage.buildah("from", "scratch").stdout.strip()
    try:
        storage.buildah("add", container, str(tarball), "/")
        storage.buildah(
            "config",
            "--env",
            PATH_ENV,
            "--cmd",
            "bash",
            "--label",
            f"{RECIPE_LABEL}={recipe}",
            container,
        )
        image_id = storage.buildah("commit", "--quiet", container, BASE_IMAGE).stdout.strip()
    finally:
        storage.buildah("rm", container, check=False)
    if not image_id:
        raise ImageBuildError(f"buildah commit of {BASE_IMAGE} printed no image ID")
    return image_id
