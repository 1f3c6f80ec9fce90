"""What decides an image's tag: the content hash of the build context, and the requirement lists."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from editflow.devstack import images
from editflow.devstack.buildah import ImageBuildError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def context(tmp_path: Path) -> Path:
    """A minimal build context: every file the hash reads, one source file per folder."""
    for name in images.CONTEXT_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"{name}\n")
    for top in images.CONTEXT_DIRS:
        (tmp_path / top).mkdir()
        (tmp_path / top / "module.py").write_text("x = 1\n")
    return tmp_path


def test_the_same_context_gives_the_same_hash(context: Path):
    assert images.content_hash(context) == images.content_hash(context)


def test_a_changed_source_line_gives_a_new_hash(context: Path):
    before = images.content_hash(context)
    (context / "operator" / "module.py").write_text("x = 2\n")
    assert images.content_hash(context) != before


def test_a_new_source_file_gives_a_new_hash(context: Path):
    before = images.content_hash(context)
    (context / "gateway" / "extra.py").write_text("")
    assert images.content_hash(context) != before


def test_constraints_and_the_dockerfile_are_part_of_the_hash(context: Path):
    for name in ("constraints.txt", "Dockerfile", ".dockerignore"):
        before = images.content_hash(context)
        (context / name).write_text("changed\n")
        assert images.content_hash(context) != before, name


def test_an_executable_bit_is_part_of_the_hash(context: Path):
    before = images.content_hash(context)
    (context / "images" / "pip-install.sh").chmod(0o755)
    assert images.content_hash(context) != before


def test_bytecode_and_files_outside_the_context_do_not_change_the_hash(context: Path):
    before = images.content_hash(context)
    (context / "src" / "__pycache__").mkdir()
    (context / "src" / "__pycache__" / "module.cpython-311.pyc").write_bytes(b"\0")
    (context / "tests").mkdir()
    (context / "tests" / "test_x.py").write_text("")
    (context / "images" / "wheelhouse" / "worker").mkdir(parents=True)
    (context / "images" / "wheelhouse" / "worker" / "torch.whl").write_bytes(b"big")
    assert images.content_hash(context) == before


def test_the_requirement_lists_come_from_pyproject():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for layer, expected in (
        ("control-plane", pyproject["project"]["dependencies"]),
        ("inference", pyproject["project"]["optional-dependencies"]["inference"]),
    ):
        printed = subprocess.run(
            [
                sys.executable,
                str(REPO / "images" / "requirements.py"),
                str(REPO / "pyproject.toml"),
                layer,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
        assert [line for line in printed if line] == expected
    # The control plane's list never names torch: the operator image stays small.
    assert not any(line.startswith("torch") for line in pyproject["project"]["dependencies"])


def test_an_unknown_requirement_layer_is_refused_with_the_choices():
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "images" / "requirements.py"),
            str(REPO / "pyproject.toml"),
            "gpu",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "control-plane|inference" in result.stderr


def test_an_unknown_target_is_refused_with_the_dockerfile_targets():
    with pytest.raises(ImageBuildError, match="choose from control-plane, worker"):
        images.build(["operator"])


def test_every_target_is_a_stage_of_the_dockerfile():
    stages = {
        line.split()[-1]
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.startswith("FROM ") and " AS " in line
    }
    assert set(images.TARGETS) <= stages
