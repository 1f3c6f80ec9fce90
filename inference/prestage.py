"""Fill a node's weights cache ahead of any worker: the prestage DaemonSet's work.

Each configured model (``cache_models``, else the registry's default) goes through the
worker's own S3 download into the cache (:func:`editflow.inference.weights._download`: the
manifest's sha256 and size for every file, a staging directory renamed into place, the
cache's eviction policy). A copy already there is hashed again on every pass, so the one
writer also repairs what it finds changed. Then ``<cache>/.staged/<model>`` is pointed at
the verified version (:mod:`editflow.core.staging`), by an atomic rename of a fresh symlink:
a worker reading the link sees the old version or the new one, never neither.

A model that cannot be staged (not published yet, S3 down) is reported and left unstaged;
the others are not held back by it, and the next pass tries it again.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from editflow.core.errors import ModelError, UpstreamError
from editflow.core.settings import S3Settings, WorkerSettings
from editflow.core.staging import STAGED_DIR
from editflow.inference.registry import DEFAULT_MODEL

# The node cache's verified download, shared with the workers so that there is one code path
# (and one set of checks) for what lands in the cache; private only because workers reach it
# through resolve_model_dir.
from editflow.inference.weights import _download

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageResult:
    """One pass: the models now staged (name -> version) and those that failed (name -> why)."""

    staged: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def configured_models(worker: WorkerSettings) -> list[str]:
    """The models this cluster keeps in its caches (the chart's ``models.nodeCache.keepModels``)."""
    return list(worker.cache_models) or [DEFAULT_MODEL]


def link_staged(cache: Path, model: str, version_dir: Path) -> None:
    """Point ``<cache>/.staged/<model>`` at ``version_dir`` (relative, so any mount path works)."""
    links = cache / STAGED_DIR
    links.mkdir(exist_ok=True)
    target = os.path.relpath(version_dir, links)
    link = links / model
    if link.is_symlink() and os.readlink(link) == target:
        return
    fresh = links / f".{model}.new"
    fresh.unlink(missing_ok=True)
    fresh.symlink_to(target)
    os.replace(fresh, link)


def stage_models(worker: WorkerSettings, s3: S3Settings) -> StageResult:
    """Download and verify every configured model into ``worker.cache_dir``; link each one."""
    if not worker.weights_s3_prefix:
        raise ModelError(
            "prestage needs weights on S3: EDITFLOW_WORKER__WEIGHTS_S3_PREFIX (chart "
            "models.s3Prefix) is not set"
        )
    cache = Path(worker.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    result = StageResult()
    for model in configured_models(worker):
        try:
            version_dir = _download(model, worker, s3)
        except (ModelError, UpstreamError) as exc:
            log.warning("model not staged", extra={"model": model, "error": str(exc)})
            result.failed[model] = str(exc)
            continue
        link_staged(cache, model, version_dir)
        result.staged[model] = version_dir.name
        log.info("model staged", extra={"model": model, "version": version_dir.name})
    return result
