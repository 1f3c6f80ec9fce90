"""Where the local platform keeps its cache (binaries, Go caches, pip cache).

Everything lives under ``~/.cache/editflow`` (or ``$EDITFLOW_CACHE_DIR``) so a
second machine run, or CI on the same machine, reuses what the first built.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The root of every editflow cache."""
    env = os.environ.get("EDITFLOW_CACHE_DIR")
    base = Path(env) if env else Path.home() / ".cache" / "editflow"
    return base.expanduser()


def platform_bin_dir() -> Path:
    """Where the installer puts the platform binaries it built."""
    return cache_root() / "platform" / "bin"


def manifest_path() -> Path:
    """The installer's record of what it built, from which recipe, with which checksum."""
    return cache_root() / "platform" / "manifest.json"


def go_mod_cache() -> Path:
    return cache_root() / "go" / "mod"


def go_build_cache() -> Path:
    return cache_root() / "go" / "build"


def dev_state_dir() -> Path:
    """Where ``editflow dev up`` writes the kubeconfig and endpoints for a person."""
    env = os.environ.get("EDITFLOW_DEV_DIR")
    return Path(env).expanduser() if env else cache_root() / "dev"
