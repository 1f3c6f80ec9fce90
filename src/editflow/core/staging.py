"""The staged-node contract between the prestage DaemonSet, the operator and the workers.

With ``worker.prestage.enabled`` one Pod per GPU node (``editflow worker prestage``) is the
only writer of the node's weights cache. It fills ``<cache>/<model>/<version>`` through the
worker's own verified download (:mod:`editflow.inference.weights`) and then points
``<cache>/.staged/<model>`` at that version with a relative symlink. Workers mount the cache
read-only and use ``<cache>/.staged`` as their models root: a staged model is used in place,
an unstaged one is fetched into the worker's own /tmp. Once a model is staged its node gets
the label :func:`staged_label`, which warm workers prefer.

This module is the one place the names live, so that the operator (which never imports
``inference``) and the prestage command agree on them.
"""

from __future__ import annotations

#: The directory of per-model symlinks inside the cache. A dot name: the cache's eviction
#: (:func:`editflow.inference.weights._evict`) never treats it as a model.
STAGED_DIR = ".staged"

#: Node label prefix: ``staged.editflow.io/<model>=<version>`` once that model is staged.
STAGED_LABEL_PREFIX = "staged.editflow.io/"


def staged_label(model: str) -> str:
    """The node label that says ``model``'s weights are in this node's cache."""
    return f"{STAGED_LABEL_PREFIX}{model}"


def staged_models_root(cache_mount: str) -> str:
    """Where a worker that mounts the staged cache at ``cache_mount`` finds its models."""
    return f"{cache_mount.rstrip('/')}/{STAGED_DIR}"
