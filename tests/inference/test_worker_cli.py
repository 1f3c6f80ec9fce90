"""The operator contract, through real ``editflow worker run`` processes.

Each run is checked for the three copies of the WorkerResult (last stdout
line, termination message, S3 next to the image) and the exit code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from editflow.core.errors import PERMANENT_EXIT_CODES, ExitCode
from editflow.core.s3 import s3_client
from editflow.core.settings import Settings
from editflow.events.worker_contract import (
    TERMINATION_MESSAGE_LIMIT,
    WorkerResult,
    result_json_key,
)

from .conftest import ImageServer, Route, png_bytes, worker_env

pytestmark = pytest.mark.slow
EDITFLOW = str(Path(sys.executable).with_name("editflow"))


def run_worker(settings: Settings, request: dict, tmp_path: Path) -> tuple[int, WorkerResult, str]:
    termination = tmp_path / "termination-log"
    proc = subprocess.run(
        [EDITFLOW, "worker", "run", "--request", json.dumps(request),
         "--termination-log", str(termination)],
        capture_output=True, text=True, env=worker_env(settings), timeout=300,
    )  # fmt: skip
    last_line = proc.stdout.strip().splitlines()[-1]
    result = WorkerResult.model_validate_json(last_line)
    message = termination.read_text()
    assert len(message.encode()) <= TERMINATION_MESSAGE_LIMIT
    assert WorkerResult.model_validate_json(message).status == result.status
    return proc.returncode, result, proc.stderr


def stored_result(settings: Settings, edit_id: str, attempt: int = 1) -> WorkerResult:
    key = result_json_key("results", edit_id, attempt)
    data = s3_client(settings.s3).get_object(settings.s3.bucket, key).read()
    return WorkerResult.model_validate_json(data)


def test_successful_run_reports_everywhere_and_exits_0(
    worker_settings: Settings, image_server: ImageServer, tmp_path: Path
) -> None:
    image_server.routes["/cli.jpg"] = Route(png_bytes((900, 1200)))  # a PNG behind a .jpg name
    request = {"edit_id": "cli-ok", "attempt": 2, "source": {"url": image_server.url("/cli.jpg")},
               "prompt": "把背景换成海边, add the text '夏日' in red", "usage": "wechat-article",
               "parameters": {"seed": 11}, "event_id": "evt-1"}  # fmt: skip
    code, result, stderr = run_worker(worker_settings, request, tmp_path)
    assert code == ExitCode.OK, stderr
    assert result.status == "success" and result.format == "jpeg"  # usage profile
    assert (result.width, result.height) == (768, 1024)
    assert result.result_key == "results/cli-ok/attempt-2/result.jpg"
    assert result.cost.infer > 0 and result.cost.load > 0 and result.cost.total > 0
    assert stored_result(worker_settings, "cli-ok", 2) == result
    meta = s3_client(worker_settings.s3).stat_object(worker_settings.s3.bucket, result.result_key)
    assert meta.metadata["x-amz-meta-usage"] == "wechat-article"
    assert meta.metadata["x-amz-meta-event-id"] == "evt-1"
    assert meta.content_type == "image/jpeg"


@pytest.mark.parametrize(
    ("change", "exit_code", "code"),
    [
        ({"prompt": "x" * 600}, ExitCode.PROMPT_REJECTED, "prompt_rejected"),
        ({"source": {"url": "http://169.254.169.254/latest/meta-data/"}},
         ExitCode.UNSAFE_SOURCE, "unsafe_source"),
        ({"source": {"url": "IMAGE_SERVER/not-an-image"}}, ExitCode.IMAGE_REJECTED,
         "image_rejected"),
        ({"model": "longcat-image-edit-xl"}, ExitCode.INVALID_INPUT, "invalid_input"),
    ],
    ids=["prompt-too-long", "metadata-url", "not-an-image", "unknown-model"],
)  # fmt: skip
def test_permanent_failures_exit_with_their_code(
    worker_settings: Settings, image_server: ImageServer, tmp_path: Path,
    change: dict, exit_code: int, code: str,
) -> None:  # fmt: skip
    image_server.routes["/not-an-image"] = Route(b"<html>hello</html>")
    request = {"edit_id": f"cli-{code.replace('_', '-')}", "source": {"url": "https://x.test/a"},
               "prompt": "make the sky blue"}  # fmt: skip
    request.update(json.loads(json.dumps(change).replace("IMAGE_SERVER", image_server.url(""))))
    status, result, _ = run_worker(worker_settings, request, tmp_path)
    assert status == exit_code and status in PERMANENT_EXIT_CODES
    assert result.status == "failed" and result.error is not None
    assert result.error.code == code and not result.error.retriable
    assert stored_result(worker_settings, request["edit_id"]).error == result.error


def test_missing_weights_are_a_retriable_model_failure(
    worker_settings: Settings, image_server: ImageServer, tmp_path: Path
) -> None:
    settings = worker_settings.model_copy(
        update={"worker": worker_settings.worker.model_copy(update={"models_root": str(tmp_path)})}
    )
    request = {"edit_id": "cli-no-weights", "source": {"url": image_server.url("/x.png")},
               "prompt": "make the sky blue"}  # fmt: skip
    status, result, _ = run_worker(settings, request, tmp_path)
    assert status == ExitCode.MODEL_FAILED and result.error.retriable
    assert "EDITFLOW_WORKER__MODELS_ROOT" in result.error.message


def test_malformed_request_is_invalid_input(worker_settings: Settings, tmp_path: Path) -> None:
    termination = tmp_path / "t"
    proc = subprocess.run(
        [EDITFLOW, "worker", "run", "--request", '{"edit_id": "Bad Id", "prompt": ""}',
         "--termination-log", str(termination)],
        capture_output=True, text=True, env=worker_env(worker_settings), timeout=120,
    )  # fmt: skip
    assert proc.returncode == ExitCode.INVALID_INPUT
    result = WorkerResult.model_validate_json(proc.stdout.strip().splitlines()[-1])
    assert result.error.code == "invalid_input" and "edit_id" in result.error.message
    assert result.edit_id == "unknown"  # an id the contract forbids never becomes an S3 key


def test_the_cli_imports_no_torch_until_a_worker_command_runs() -> None:
    probe = (
        "import sys, editflow.cli.main; "
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'PIL') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_tiny_model_command_builds_a_dir_the_worker_loads(tmp_path: Path) -> None:
    out = tmp_path / "models" / "longcat-image-edit-turbo"
    argv = [EDITFLOW, "worker", "tiny-model", "--model", "longcat-image-edit-turbo"]
    proc = subprocess.run([*argv, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    hint = json.loads(proc.stdout.strip().splitlines()[-1])
    assert hint["EDITFLOW_WORKER__MODELS_ROOT"] == str(out.parent)
    assert (out / "model_index.json").is_file() and (out / "editflow-model.json").is_file()
    argv = [EDITFLOW, "worker", "tiny-model", "--model", "sdxl", "--out", str(tmp_path / "x")]
    unknown = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2


def test_published_weights_are_what_a_worker_downloads(
    worker_settings: Settings, tiny_models_root: Path, tmp_path: Path
) -> None:
    import shutil

    model_dir = tmp_path / "to-publish"
    shutil.copytree(tiny_models_root / "longcat-image-edit", model_dir)
    env = worker_env(worker_settings)
    proc = subprocess.run(
        [EDITFLOW, "worker", "publish-weights", str(model_dir), "--prefix",
         "cli-weights/longcat-image-edit"], capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    from editflow.core.settings import WorkerSettings
    from editflow.inference.weights import resolve_model_dir

    worker = WorkerSettings(models_root=str(tmp_path / "none"), weights_s3_prefix="cli-weights",
                            cache_dir=str(tmp_path / "cache"))  # fmt: skip
    local = resolve_model_dir("longcat-image-edit", worker, worker_settings.s3)
    assert (local / "model_index.json").read_bytes() == (
        model_dir / "model_index.json"
    ).read_bytes()
