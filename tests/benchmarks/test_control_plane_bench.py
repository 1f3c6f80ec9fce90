"""The control-plane benchmark's own parts: its stub worker keeps the worker contract,
its percentiles are the samples that happened, and a tiny run on the real platform
produces the JSON with every event accounted for (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from editflow.events.worker_contract import SourceRef, WorkerRequest, WorkerResult

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    """One stand-alone module of benchmarks/controlplane (the folder is not installed)."""
    qualified = f"bench_controlplane_{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    spec = importlib.util.spec_from_file_location(qualified, BENCH / "controlplane" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def test_stub_worker_writes_a_valid_worker_result_to_its_termination_log(tmp_path):
    request = WorkerRequest(
        edit_id="ej-bench", attempt=2, source=SourceRef(url="https://oa.example.com/a.png"),
        prompt="把背景换成蓝色",
    )  # fmt: skip
    term = tmp_path / "termination-log"
    # Exactly as the process kubelet runs it for the stub image: no site-packages.
    out = subprocess.run(
        [sys.executable, "-S", "-E", str(BENCH / "controlplane" / "stub_worker.py"),
         "worker", "run", "--request", request.model_dump_json(), "--termination-log", str(term)],
        capture_output=True, text=True, check=True, env={"EDITFLOW_S3__BUCKET": "editflow"},
    )  # fmt: skip
    result = WorkerResult.model_validate_json(term.read_text())
    assert result.status == "success"
    assert (result.edit_id, result.attempt, result.bucket) == ("ej-bench", 2, "editflow")
    assert result.result_key == "results/ej-bench/attempt-2/result.png"
    assert WorkerResult.model_validate_json(out.stdout.strip().splitlines()[-1]) == result


def test_stub_worker_refuses_a_command_line_outside_the_contract(tmp_path):
    out = subprocess.run(
        [sys.executable, "-S", str(BENCH / "controlplane" / "stub_worker.py"), "serve"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 2
    assert "expected 'worker run" in out.stderr


def test_percentiles_are_nearest_rank_samples():
    stats = _load("stats")
    samples = [i / 1000 for i in range(1, 101)]  # 1 ms .. 100 ms
    summary = stats.summarize(reversed(samples))
    assert (summary.count, summary.p50, summary.p99, summary.max) == (100, 0.05, 0.099, 0.1)
    assert stats.summarize([]).p99 is None


def test_interchangeable_jobs_answer_events_in_time_order():
    stats = _load("stats")
    # Three events, two Jobs created so far: the first Job answers the first event.
    assert stats.ordered_deltas([3.0, 1.0, 2.0], [5.0, 2.5]) == [1.5, 3.0]


@pytest.mark.slow
def _one_level_run(tmp_path: Path, *args: str, timeout: int) -> tuple[dict, dict]:
    """Run control_plane.py with ``args``; its one level and that level's one step."""
    out = subprocess.run(
        [sys.executable, str(BENCH / "control_plane.py"), *args, "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    (path,) = tmp_path.glob("control_plane*.json")
    (level,) = json.loads(path.read_text())["levels"]
    (step,) = level["steps"]
    return level, step


@pytest.mark.platform
def test_a_tiny_run_accounts_for_every_event(tmp_path):
    level, step = _one_level_run(
        tmp_path, "--mode", "job", "--background", "20", "--rates", "2", "--goal-rate", "2",
        "--duration", "3", "--drain", "180", "--no-keda", timeout=540,
    )  # fmt: skip
    assert list(tmp_path.glob("control_plane-2*.json"))
    assert level["background"] == 20 and step["present_at_start"] == 20
    assert step["publish"]["events"] == 6 and step["publish"]["errors"] == 0
    assert step["lost"] == {"editjob": 0, "job": 0, "completion": 0}
    assert step["completion_status"] == {"success": 6}
    for stage in ("event_to_editjob", "event_to_job", "job_finished_to_completion"):
        assert step[stage]["count"] == 6
        assert step[stage]["p50"] <= step[stage]["p99"] <= step[stage]["max"]
    assert 0 < step["event_to_editjob"]["p50"] <= step["event_to_job"]["p50"]
    assert step["operator"]["cpu_seconds"] > 0 and step["operator"]["rss_peak_mb"] > 0


@pytest.mark.platform
def test_the_platform_floor_runs_every_event_to_a_completion_without_an_operator(tmp_path):
    """``--platform-floor``: no operator; the benchmark's minimal one creates each EditJob,
    its status and its Job, and publishes the completion once the Job finished."""
    _, step = _one_level_run(
        tmp_path, "--platform-floor", "--background", "0", "--rates", "2", "--goal-rate", "2",
        "--duration", "3", "--drain", "120", timeout=400,
    )  # fmt: skip
    assert list(tmp_path.glob("control_plane-floor-*.json"))
    assert step["publish"]["events"] == 6 and step["publish"]["errors"] == 0, step
    assert step["lost"] == {"editjob": 0, "job": 0, "completion": 0}, step
    assert step["completion_status"] == {"success": 6}
    assert step["platform_cpu_ms_per_event"] > 0
    assert step["cpu_seconds_by_process"]["kube-apiserver"] > 0
