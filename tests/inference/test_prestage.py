"""The prestage pass (``editflow worker prestage``) against the session's MinIO: it fills the
cache through the verified download and links each staged model, which a worker then reads in
place from a read-only cache; and the node labels it asks for."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from editflow.cli.prestage import label_patch, run_passes
from editflow.core.settings import S3Settings, WorkerSettings
from editflow.core.staging import STAGED_DIR, staged_label, staged_models_root
from editflow.inference.prestage import StageResult, stage_models
from editflow.inference.registry import DEFAULT_MODEL
from editflow.inference.weights import publish_to_s3, resolve_model_dir


def test_prestage_stages_each_model_and_a_worker_reads_it_in_place_read_only(
    tiny_models_root: Path, s3: S3Settings, tmp_path: Path
) -> None:
    publish_to_s3(tiny_models_root / DEFAULT_MODEL, s3, f"prestage-unit/{DEFAULT_MODEL}")
    cache = tmp_path / "cache"
    writer = WorkerSettings(weights_s3_prefix="prestage-unit", cache_dir=str(cache),
                            cache_models=[DEFAULT_MODEL, "not-published"])  # fmt: skip
    result = stage_models(writer, s3)
    assert list(result.staged) == [DEFAULT_MODEL]
    assert "not-published" in result.failed  # reported; the others are not held back
    link = cache / STAGED_DIR / DEFAULT_MODEL
    assert link.is_symlink() and not os.readlink(link).startswith("/")  # any mount path
    assert link.resolve().name == result.staged[DEFAULT_MODEL]
    assert stage_models(writer, s3).staged == result.staged  # a second pass: the same version

    # A worker (the cache mounted read-only): the staged link is its models root, used in
    # place; its own cache directory (the Pod's /tmp) is never touched for a staged model.
    worker = WorkerSettings(models_root=staged_models_root(str(cache)),
                            weights_s3_prefix="prestage-unit",
                            cache_dir=str(tmp_path / "own-tmp"))  # fmt: skip
    assert resolve_model_dir(DEFAULT_MODEL, worker, s3) == link
    assert not (tmp_path / "own-tmp").exists()


def test_node_labels_follow_what_is_staged() -> None:
    current = {"kubernetes.io/hostname": "n1", staged_label("old-model"): "abc"}
    patch = label_patch(current, {DEFAULT_MODEL: "0123456789abcdef"})
    assert patch == {
        staged_label(DEFAULT_MODEL): "0123456789abcdef",
        staged_label("old-model"): None,
    }
    assert label_patch({staged_label(DEFAULT_MODEL): "v1"}, {DEFAULT_MODEL: "v1"}) == {}


def test_passes_repeat_on_wake_survive_a_failed_label_and_end_on_stop() -> None:
    """A DaemonSet's Pod never exits by itself: it sleeps between passes, SIGHUP (wake) starts
    one at once, an API failure waits for the next pass, and SIGTERM (stop) ends it."""
    wake, stop = threading.Event(), threading.Event()
    passes: list[dict[str, str]] = []

    def stage() -> StageResult:
        return StageResult(staged={DEFAULT_MODEL: "v1"})

    def label(staged: dict[str, str]) -> None:
        passes.append(staged)
        wake.set()  # the next pass now, as SIGHUP does
        if len(passes) == 3:
            stop.set()
        if len(passes) == 1:
            raise OSError("apiserver away")

    runner = threading.Thread(
        target=run_passes,
        args=(stage, label),
        kwargs={"interval": 3600, "wake": wake, "stop": stop},
    )
    runner.start()
    runner.join(timeout=10)
    assert not runner.is_alive()
    assert passes == [{DEFAULT_MODEL: "v1"}] * 3
