"""``editflow worker prestage``: the staged-node DaemonSet's command (the imperative shell).

Each pass stages the configured models into the node's cache (:mod:`editflow.inference.prestage`)
and then sets the node's labels to what is staged (:func:`label_node`). Between passes it
sleeps: a DaemonSet's Pod must not exit, and a new model version published to S3 is picked up
on the next pass (``--interval-seconds``) or at once on SIGHUP
(``kubectl exec ... -- kill -HUP 1``). SIGTERM ends it cleanly.

The Kubernetes API is reached with the Pod's ServiceAccount token, read from
``--service-account-dir`` (the chart passes the standard path explicitly, so that it is part of
the command line that a process kubelet maps to the Pod's volume).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from editflow.core.staging import STAGED_LABEL_PREFIX, staged_label

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

Labeler = Callable[[dict[str, str]], None]


def label_patch(current: dict[str, str], staged: dict[str, str]) -> dict[str, str | None]:
    """The label changes that make a node say exactly ``staged`` (model -> version).

    Labels of models no longer staged (evicted, no longer configured) are removed (None in a
    merge patch); an empty dict means the node already says it.
    """
    wanted: dict[str, str | None] = {staged_label(m): v for m, v in staged.items()}
    for key in current:
        if key.startswith(STAGED_LABEL_PREFIX) and key not in wanted:
            wanted[key] = None
    return {k: v for k, v in wanted.items() if current.get(k) != v}


def node_labeler(node: str, service_account_dir: Path) -> Labeler:
    """A labeler for ``node`` through the in-cluster API (get and patch nodes: the chart's
    ClusterRole allows nothing else)."""
    from kubernetes import client
    from kubernetes.config.incluster_config import InClusterConfigLoader

    InClusterConfigLoader(
        token_filename=str(service_account_dir / "token"),
        cert_filename=str(service_account_dir / "ca.crt"),
    ).load_and_set()
    api = client.CoreV1Api()

    def label(staged: dict[str, str]) -> None:
        current = api.read_node(node).metadata.labels or {}
        patch = label_patch(current, staged)
        if patch:
            api.patch_node(node, {"metadata": {"labels": patch}})
            log.info("node labels set", extra={"node": node, "labels": patch})

    return label


def run_passes(
    stage: Callable[[], Any],
    label: Labeler,
    *,
    interval: float,
    wake: threading.Event,
    stop: threading.Event,
) -> None:
    """Stage, label, sleep until ``interval`` passes or ``wake`` is set; until ``stop``.

    A failure to label (the API briefly away) is logged and retried on the next pass: the
    cache stays filled either way, and workers use it whether or not the label is there.
    """
    while not stop.is_set():
        result = stage()
        try:
            label(result.staged)
        except Exception as exc:  # any API failure: retried on the next pass
            log.warning("node not labelled", extra={"error": str(exc)})
        wake.wait(interval)
        wake.clear()


def prestage_forever(
    node: str, interval: float, service_account_dir: Path, *, once: bool = False
) -> int:
    """The command: 0 when stopped by SIGTERM (or, with ``once``, when every model staged)."""
    from editflow.cli.worker import _settings
    from editflow.inference.prestage import stage_models

    settings = _settings()
    label = node_labeler(node, service_account_dir)

    def stage():  # noqa: ANN202
        return stage_models(settings.worker, settings.s3)

    if once:
        result = stage()
        label(result.staged)
        return 1 if result.failed else 0
    wake, stop = threading.Event(), threading.Event()

    def on_term(*_: object) -> None:
        stop.set()
        wake.set()

    signal.signal(signal.SIGHUP, lambda *_: wake.set())
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    run_passes(stage, label, interval=interval, wake=wake, stop=stop)
    return 0
