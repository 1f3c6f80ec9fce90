"""`make demo`'s main job runs end to end and leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = [pytest.mark.platform, pytest.mark.slow]


def test_the_demo_turns_an_approval_into_an_edited_image(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "editflow.cli.main", "demo", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        # TMPDIR puts the demo's stack under tmp_path, so leftovers can be found below.
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "TMPDIR": str(tmp_path)},
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Succeeded" in run.stdout and "nothing left running" in run.stdout
    source = Image.open(out / "input.png")
    result = Image.open(out / "result.png")
    assert result.size == source.size  # the product promises the input's size back
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""
