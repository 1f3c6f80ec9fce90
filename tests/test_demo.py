"""`make demo`'s main job runs end to end and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = [pytest.mark.platform, pytest.mark.slow]


def _from_images() -> bool:
    """`make demo` runs editflow from its images; without root, or with the worker image left
    out (EDITFLOW_TEST_WORKER_IMAGE=0, see tests/images/conftest.py), the test asks for
    host processes instead."""
    return os.geteuid() == 0 and os.environ.get("EDITFLOW_TEST_WORKER_IMAGE", "1") != "0"


def test_the_demo_turns_an_approval_into_an_edited_image(tmp_path: Path) -> None:
    out = tmp_path / "out"
    images = _from_images()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "editflow.cli.main",
            "demo",
            "--output",
            str(out),
            *([] if images else ["--host-images"]),
        ],
        capture_output=True,
        text=True,
        # Cold, the images are built first (minutes; charts/editflow/README.md, "Images").
        timeout=1500,
        # TMPDIR puts the demo's stack under tmp_path, so leftovers can be found below.
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "TMPDIR": str(tmp_path)},
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Succeeded" in run.stdout and "nothing left running" in run.stdout
    # editflow ran from its images: the operator Pod in the control-plane image.
    assert ("Ready in its image" in run.stdout) is images
    # The quality gate ran in the worker and its verdict reached the EditJob (advisory):
    # the instruction is about the background, a global kind of edit.
    assert "(global edit, advisory)" in run.stdout
    source = Image.open(out / "input.png")
    # wechat-article's usage profile promises a JPEG: the result keeps the worker's format.
    (result_path,) = out.glob("result.*")
    assert result_path.suffix == ".jpg"
    result = Image.open(result_path)
    assert result.size == source.size  # the product promises the input's size back
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""
