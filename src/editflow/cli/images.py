"""``editflow dev images`` (``make images``): build the chart's images with buildah, push them."""

from __future__ import annotations

import sys
import time

import typer
from rich.console import Console
from rich.table import Table

from editflow.devstack import images as image_builds
from editflow.devstack.buildah import ImageBuildError

console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


def _report(line: str) -> None:
    # Build output is full of brackets ("[2/6] STEP ..."), which are not rich markup.
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def _table(built: list[image_builds.BuiltImage], title: str) -> Table:
    table = Table(title=title)
    for col in ("target", "names", "tag", "size", "build s", "state"):
        table.add_column(col)
    for image in built:
        table.add_row(
            image.target,
            ", ".join(f"editflow/{name}" for name in image.names),
            image.tag,
            f"{image.size_bytes / 1e6:.0f} MB",
            f"{image.build_seconds:.0f}",
            "cached" if image.cached else "built",
        )
    return table


def images(
    target: list[str] = typer.Option(
        None, "--target", help="Dockerfile target to build (repeatable; default: all)"
    ),
    push: bool = typer.Option(True, help="push to the local registry (or --registry)"),
    registry: str = typer.Option(
        "", help="push to this registry (HOST:PORT, plain HTTP) instead of the local one"
    ),
    compression: str = typer.Option(
        "zstd", help="layer compression for the push: zstd (fast) or gzip (any client)"
    ),
    show: bool = typer.Option(
        False, "--list", help="print what the last builds recorded, build nothing"
    ),
) -> None:
    """Build editflow/operator, editflow/gateway and editflow/worker (cached by content hash)."""
    if show:
        console.print(_table(list(image_builds.recorded().values()), "recorded images"))
        return
    if compression not in ("gzip", "zstd"):
        console.print(f"[red]--compression {compression!r}: choose gzip or zstd[/red]")
        raise typer.Exit(2)
    began = time.monotonic()
    try:
        built = image_builds.build(target or tuple(image_builds.TARGETS), report=_report)
        if push and registry:
            for image in built:
                image_builds.push(image, registry, report=_report, compression=compression)
        elif push:
            with image_builds.local_registry(_report) as address:
                _report(f"local registry on {address} (storage under the editflow cache)")
                for image in built:
                    image_builds.push(image, address, report=_report, compression=compression)
    except ImageBuildError as exc:
        console.print(f"[red]images failed:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(_table(built, f"images in {time.monotonic() - began:.1f}s"))
