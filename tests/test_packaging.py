"""The distribution maps every component folder under ``editflow`` and never shadows the stdlib."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = (
    "editflow",
    "editflow.core.errors",
    "editflow.core.settings",
    "editflow.core.logging",
    "editflow.core.s3",
    "editflow.cli.main",
    "editflow.devstack.stack",
    "editflow.events",
    "editflow.operator",
    "editflow.inference",
    "editflow.gateway",
)

PROBE = (
    "import importlib, json, operator, sys\n"
    "mods = {m: (getattr(importlib.import_module(m), '__file__', None) or "
    "list(importlib.import_module(m).__path__)[0]) for m in sys.argv[1:]}\n"
    "mods['<stdlib operator>'] = operator.__file__\n"
    "print(json.dumps(mods))\n"
)


def _probe(python_args: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict:
    import json

    out = subprocess.run(
        [sys.executable, *python_args, "-c", PROBE, *SUBPACKAGES],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_editable_install_maps_every_component_folder(tmp_path: Path) -> None:
    found = _probe([], cwd=tmp_path)
    assert found["editflow.operator"].startswith(str(REPO_ROOT / "build")) or found[
        "editflow.operator"
    ].startswith(str(REPO_ROOT / "operator"))
    assert Path(found["editflow.events"]).resolve() == REPO_ROOT / "events" / "__init__.py"
    assert Path(found["editflow.gateway"]).resolve() == REPO_ROOT / "gateway" / "__init__.py"
    assert Path(found["<stdlib operator>"]).parent == Path(sysconfig.get_paths()["stdlib"])


def test_stdlib_operator_wins_even_from_the_repository_root() -> None:
    # `python -c` puts the cwd first on sys.path: a regular package called
    # `operator` there would break collections/functools for everything.
    found = _probe([], cwd=REPO_ROOT)
    assert Path(found["<stdlib operator>"]).parent == Path(sysconfig.get_paths()["stdlib"])
    out = subprocess.run(
        [sys.executable, "-c", "import torch, collections; print('ok')"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_built_wheel_imports_every_subpackage(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("editflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not any(n.startswith(("operator/", "events/", "inference/", "gateway/")) for n in names)
    assert "editflow/devstack/gomods/kubernetes/go.mod" in names
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    # -S: no site processing, so the editable install's .pth is not active and
    # only the wheel's copy of editflow can be found (dependencies come from
    # the venv's site-packages, added by hand).
    site_packages = sysconfig.get_paths()["purelib"]
    found = _probe(["-S"], cwd=tmp_path, env={"PYTHONPATH": f"{target}:{site_packages}"})
    for module, location in found.items():
        if module.startswith("editflow"):
            assert location.startswith(str(target)), (module, location)
    assert Path(found["<stdlib operator>"]).parent == Path(sysconfig.get_paths()["stdlib"])
