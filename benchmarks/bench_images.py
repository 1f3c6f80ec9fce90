"""Image build figures: cold, warm and after-a-code-change builds and pushes; sizes; start-up.

Cold means an empty editflow cache (``EDITFLOW_CACHE_DIR`` in a temp dir: no base tarball,
no build storage, no registry storage) and a copy of the build context with an empty
wheelhouse, so every step of ``make images`` runs: mmdebstrap, the host's pip, buildah,
skopeo. Only the platform binaries (the registry) are borrowed from the real cache.
Warm is the same call again; "code change" edits one source file of the copy.

Start-up runs the image's command under runc (read-only root, as the chart runs it):
``editflow --help`` in the control-plane image, ``import torch, diffusers`` in the worker.

    .venv/bin/python benchmarks/bench_images.py [--worker] [--repeats 5]

``--worker`` adds the worker target (cold: about 8 minutes and 6.4 GB on 2 cores).
Prints a table and writes ``benchmarks/results/bench_images-<utc>.json``. Run as root.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.images.ocirun, the runc runner of the image tests

from editflow.devstack import images, paths  # noqa: E402
from editflow.devstack.buildah import ImageStorage  # noqa: E402
from tests.images.ocirun import run_in_image  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def frozen_context(into: Path) -> Path:
    """The build context without its wheelhouse, as a fresh clone has it."""
    for name in images.CONTEXT_FILES:
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, into / name)
    for top in images.CONTEXT_DIRS:
        shutil.copytree(REPO / top, into / top, ignore=shutil.ignore_patterns("__pycache__"))
    return into


def timed_publish(
    targets: list[str], context: Path
) -> tuple[float, float, list[images.BuiltImage]]:
    """Seconds to build, seconds to push, and what was built."""
    quiet = lambda line: None  # noqa: E731
    began = time.monotonic()
    built = images.build(targets, repo=context, report=quiet)
    built_at = time.monotonic()
    with images.local_registry(quiet) as address:
        for image in built:
            images.push(image, address, report=quiet)
    return built_at - began, time.monotonic() - built_at, built


def startup(storage: ImageStorage, image: str, argv: list[str], repeats: int) -> float:
    """Median seconds from `runc run` to exit of one command in the image."""
    samples = []
    for _ in range(repeats):
        ran = run_in_image(storage, image, argv[1:], entrypoint=argv[:1], timeout=300)
        samples.append(ran.seconds)
        if ran.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed in {image}: {ran.stderr[-500:]}")
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help="also build the worker target")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    targets = ["control-plane", "worker"] if args.worker else ["control-plane"]
    real_platform = paths.cache_root() / "platform"
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="editflow-bench-images-") as scratch:
        cache = Path(scratch) / "cache"
        cache.mkdir()
        (cache / "platform").symlink_to(real_platform)
        os.environ["EDITFLOW_CACHE_DIR"] = str(cache)
        context = frozen_context(Path(scratch) / "context")
        for phase in ("cold", "warm", "code change"):
            if phase == "code change":
                module = context / "src" / "editflow" / "__init__.py"
                module.write_text(module.read_text() + "\n# benchmark: one changed line\n")
            build_s, push_s, built = timed_publish(targets, context)
            for image in built:
                rows.append(
                    {
                        "phase": phase,
                        "target": image.target,
                        "build_s": round(build_s, 1),
                        "push_s": round(push_s, 1),
                        "size_mb": round(image.size_bytes / 1e6),
                        "cached": image.cached,
                    }
                )
        storage = ImageStorage.default()
        start = {
            "control-plane editflow --help": startup(
                storage, built[0].local(), ["editflow", "--help"], args.repeats
            )
        }
        if args.worker:
            start["worker import torch, diffusers"] = startup(
                storage,
                built[1].local(),
                ["python", "-c", "import torch, diffusers"],
                args.repeats,
            )
        registry_mb = sum(f.stat().st_size for f in (cache / "registry").rglob("*") if f.is_file())
        for image in built:
            storage.buildah("rmi", "--force", *(image.local(name) for name in image.names))
        storage.buildah("rmi", "--all", "--force", check=False)
        shutil.rmtree(storage.runroot, ignore_errors=True)
    print(f"{'phase':<12} {'target':<14} {'build s':>8} {'push s':>7} {'size MB':>8}")
    for row in rows:
        print(
            f"{row['phase']:<12} {row['target']:<14} {row['build_s']:>8} {row['push_s']:>7} "
            f"{row['size_mb']:>8}"
        )
    for what, seconds in start.items():
        print(f"start-up (runc, median of {args.repeats}): {what}: {seconds:.2f} s")
    print(f"registry storage after the pushes: {registry_mb / 1e6:.0f} MB")
    RESULTS.mkdir(exist_ok=True)
    report = {
        "when": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average": os.getloadavg(),
        "builds": rows,
        "startup_s": start,
        "registry_mb": round(registry_mb / 1e6),
    }
    path = RESULTS / f"bench_images-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
