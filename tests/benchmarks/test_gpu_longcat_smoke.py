"""``benchmarks/gpu_longcat.py`` keeps working where there is no GPU: the CPU smoke run of
the tiny model goes through every acceleration in priority order and writes a row for each,
FP8 skipped with the reason; a budget too small for the rest skips it in writing; and the
wheelhouse for a lent GPU asks for every package at this repository's pins."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def smoke(tmp_path: Path, *extra: str) -> list[dict[str, Any]]:
    out = tmp_path / "rows.jsonl"
    # Turbo only: the standard variant's two guidance passes are the same code, twice
    # (tests/inference/test_accelerations.py runs every cache hook with CFG).
    command = [sys.executable, str(BENCH / "gpu_longcat.py"), "--size", "tiny", "--device",
               "cpu", "--variants", "turbo", "--out", str(out), *extra]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_the_cpu_smoke_run_covers_every_acceleration_in_priority_order(tmp_path: Path) -> None:
    rows = smoke(tmp_path)
    assert rows[0]["kind"] == "run" and rows[0]["compile_backend"] == "eager"
    cases = [(r["case"], r["kind"]) for r in rows if "case" in r]
    assert cases == [
        ("eager", "measurement"),
        ("compile", "measurement"),
        ("fp8", "skipped"),
        ("first_block", "measurement"),
        ("taylorseer", "measurement"),
        ("magcache", "measurement"),
    ]
    by_case = {r["case"]: r for r in rows if "case" in r}
    assert by_case["eager"]["accelerations"] == [] and by_case["eager"]["seconds_per_edit"] > 0
    assert by_case["compile"]["accelerations"] == ["compile:regional"]
    assert "FP8 runs only on a CUDA GPU" in by_case["fp8"]["reason"]
    for name in ("first_block", "taylorseer", "magcache"):
        row = by_case[name]
        assert row["accelerations"][0].startswith(f"cache:{name}(")
        # Random weights: the hooks ran, their speed is not reported.
        assert "seconds_per_edit" not in row and row["figures"].startswith("withheld")
    assert len(by_case["magcache"]["mag_ratios"]) == by_case["magcache"]["steps"]
    cold = next(r for r in rows if r["kind"] == "cold_start")
    assert cold["process_to_device_seconds"] > 0, cold
    goals = rows[-1]
    assert goals["kind"] == "goals" and goals["turbo"]["seconds"] is not None
    assert not any(goal["met"] for goal in (goals["turbo"], goals["cold_start"]))  # tiny model


def test_a_budget_too_small_skips_the_rest_and_says_so(tmp_path: Path) -> None:
    rows = smoke(tmp_path, "--budget-s", "1", "--no-cold-start")
    kinds = {r["case"]: r for r in rows if "case" in r}
    assert kinds["eager"]["kind"] == "measurement"  # the baseline always runs
    skipped = [r for r in rows if r["kind"] == "skipped"]
    assert {r["case"] for r in skipped} == {"compile", "fp8", "first_block", "taylorseer",
                                            "magcache"}  # fmt: skip
    assert all(r["reason"].startswith("budget: needs ~") for r in skipped)
    assert rows[-1]["kind"] == "goals" and rows[-1]["cold_start"]["seconds"] is None


def test_the_wheelhouse_asks_for_each_package_at_the_repository_s_pin() -> None:
    spec = importlib.util.spec_from_file_location("gpu_wheelhouse", BENCH / "gpu_wheelhouse.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pins = module.pins()
    assert set(pins) == set(module.PACKAGES)
    # What travels is what runs here (torchao is the optional fp8 extra, pinned all the same).
    for name in ("diffusers", "transformers", "pydantic", "pydantic-settings"):
        assert pins[name] == importlib.metadata.version(name), name
    assert pins["torchao"]
