"""Print the requirement lines one image layer installs, read from ``pyproject.toml``.

Why a script and not a copy of the lists: ``pyproject.toml`` stays the one place where
editflow's dependencies are named. The Dockerfile runs this in a small stage, so that the
dependency layers (and the multi-GB torch layer above all) depend only on the lists and on
``constraints.txt``, never on editflow's own sources: a code change rebuilds one small layer.
The host runs it too, to build the wheelhouse (``editflow dev images``).

Usage: ``python3 images/requirements.py pyproject.toml control-plane|inference``
Only the standard library: it runs on the base image's bare Python.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

# What each dependency layer installs: the control plane's required dependencies, or
# one optional extra of pyproject.toml (the worker layer adds `inference` on top).
LAYERS = ("control-plane", "inference")


def requirement_lines(pyproject: dict, layer: str) -> list[str]:
    """The requirement specifiers of ``layer``, in pyproject order."""
    project = pyproject["project"]
    if layer == "control-plane":
        return list(project["dependencies"])
    extras = project.get("optional-dependencies", {})
    if layer not in extras:
        raise KeyError(
            f"layer {layer!r}: pyproject.toml has no optional-dependencies.{layer} "
            f"(known layers: {', '.join(LAYERS)})"
        )
    return list(extras[layer])


def main(argv: list[str]) -> int:
    """Print the lines of one layer; exit 2 with a usage message on bad arguments."""
    if len(argv) != 2 or argv[1] not in LAYERS:
        print(f"usage: requirements.py PYPROJECT {{{'|'.join(LAYERS)}}}", file=sys.stderr)
        return 2
    pyproject = tomllib.loads(Path(argv[0]).read_text(encoding="utf-8"))
    print("\n".join(requirement_lines(pyproject, argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
