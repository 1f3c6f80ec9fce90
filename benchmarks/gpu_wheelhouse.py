"""Build the small wheelhouse ``benchmarks/gpu_longcat.py`` needs on a lent GPU machine.

That machine's image has its own Python (3.12) and torch (2.11, with torchvision, numpy,
pillow, safetensors, tokenizers, accelerate, huggingface_hub 1.33, transformers 5.17), no
diffusers, torchao or pydantic, and nothing can be fetched there; at most 64 MiB travels
with the working tree. So this downloads, at this repository's pins (``constraints.txt``),
only what is missing there or older than what editflow is tested with, as binary wheels for
that Python, plus a wheel of editflow itself:

    .venv/bin/python benchmarks/gpu_wheelhouse.py            # -> benchmarks/wheelhouse/

and prints its size (25.6 MiB when written). On the machine, one device-tool call with
``carry: ["benchmarks/wheelhouse"]`` and ``timeout_s: 570`` (a call may run 10 minutes and
the machine's start counts against its 15; the script's budget leaves room for the install
and the cold start)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target \\
        /tmp/site benchmarks/wheelhouse/*.whl && export PYTHONPATH=/tmp/site && \\
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_longcat.py --budget-s 480 \\
        --out $OUT/gpu_longcat.jsonl

The results come back under ``$OUT`` row by row, also from a run cut off at its limit.

``--no-deps --target`` keeps the image's torch and everything else it has: the carried
packages only shadow their own names on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "wheelhouse"
#: What the benchmark imports that the GPU image lacks (or has older than our pins).
PACKAGES = (
    "diffusers",
    "transformers",
    "torchao",
    "pydantic",
    "pydantic_core",
    "pydantic-settings",
    "annotated-types",
    "typing-inspection",
    "typing_extensions",
    "python-dotenv",
    "importlib_metadata",
    "zipp",
)
#: pip matches manylinux tags exactly: every one a wheel of ours may carry.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip
LIMIT_BYTES = 64 * 2**20


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-")


def pins(constraints: Path = REPO / "constraints.txt") -> dict[str, str]:
    """``name==version`` of each of :data:`PACKAGES`, from ``constraints.txt``."""
    pinned = {}
    for line in constraints.read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep:
            pinned[_canonical(name.strip())] = version.strip()
    missing = [p for p in PACKAGES if _canonical(p) not in pinned]
    if missing:
        raise SystemExit(f"constraints.txt pins none of: {', '.join(missing)}")
    return {p: pinned[_canonical(p)] for p in PACKAGES}


def build(out: Path, python_version: str) -> int:
    """Fill ``out`` (emptied first); returns its size in bytes."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--python-version", python_version, "--implementation", "cp", *platforms,
         "-d", str(out), *(f"{name}=={version}" for name, version in pins().items())],
        check=True,
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(out), str(REPO)],
        check=True,
    )  # fmt: skip
    return sum(path.stat().st_size for path in out.glob("*.whl"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--python-version", default="3.12", help="the GPU image's Python")
    args = parser.parse_args()
    size = build(args.out, args.python_version)
    for wheel in sorted(args.out.glob("*.whl")):
        print(f"{wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
    print(f"{size / 2**20:7.2f} MiB in all (limit {LIMIT_BYTES / 2**20:.0f} MiB)  -> {args.out}")
    return 0 if size <= LIMIT_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())
