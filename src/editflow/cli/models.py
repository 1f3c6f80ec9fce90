"""``editflow models``: the operator's tool for model weights (push, list, verify, rm).

Weights go to the S3 prefix the workers download from (``EDITFLOW_S3__*`` and
``--prefix``, by default ``EDITFLOW_WORKER__WEIGHTS_S3_PREFIX`` or ``models``), or with
``--to-dir`` into a directory workers mount as their models root (a PVC). The layout and
its manifest are :mod:`editflow.inference.modelstore`'s; the snapshot check before an
upload is :mod:`editflow.inference.snapshot`'s. None of this imports torch.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

app = typer.Typer(
    help="Publish, list, verify and remove model weights (S3 prefix or PVC directory).",
    no_args_is_help=True,
)
console = Console(stderr=True, soft_wrap=True)  # messages whole, never cut at 80 columns

PREFIX_HELP = (
    "S3 prefix of the published models (default: EDITFLOW_WORKER__WEIGHTS_S3_PREFIX, else "
    "'models'; the chart's models.s3Prefix)"
)
TO_DIR_HELP = "a directory (a mounted PVC) instead of S3: models go to DIR/<name>/"


def _store(prefix: str | None, to_dir: Path | None):  # noqa: ANN202 - a Store
    from editflow.core.settings import Settings
    from editflow.inference.modelstore import DirStore, S3Store

    if to_dir is not None:
        return DirStore(to_dir)
    from editflow.core.s3 import s3_client

    settings = Settings()
    bucket = settings.worker.weights_s3_bucket or settings.s3.bucket
    chosen = prefix or settings.worker.weights_s3_prefix or "models"
    return S3Store(s3_client(settings.s3), bucket, chosen)


def _bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    raise typer.Exit(2)


@app.command()
def push(
    directory: Path = typer.Argument(..., help="a pipeline saved by save_pretrained (safetensors)"),
    name: str = typer.Option(
        ..., "--name", help="the registry model it is, e.g. longcat-image-edit"
    ),
    prefix: str = typer.Option(None, "--prefix", help=PREFIX_HELP),
    to_dir: Path = typer.Option(None, "--to-dir", help=TO_DIR_HELP),
    max_rate: float = typer.Option(
        0, "--max-rate", help="upload at most this many MB/s (0: as fast as the link goes)"
    ),
) -> None:
    """Validate a snapshot, then publish it with its manifest; an interrupted push resumes."""
    from editflow.inference.modelstore import push as push_model
    from editflow.inference.modelstore import total_bytes
    from editflow.inference.snapshot import SnapshotError, validate_snapshot

    try:
        snapshot = validate_snapshot(directory, name)
    except SnapshotError as exc:
        _fail(f"{directory} is not a loadable snapshot of {name}: {exc.message}")
    store = _store(prefix, to_dir)
    size = total_bytes(snapshot)
    with _bar() as bar:
        hashing = bar.add_task("hashing  ", total=size)
        sending = bar.add_task("uploading", total=size)
        report = push_model(
            snapshot,
            store,
            hashing=lambda n: bar.advance(hashing, n),
            sending=lambda n: bar.advance(sending, n),
            rate=max_rate * 1e6 if max_rate > 0 else None,
        )
    kept = f", {len(report.kept)} already there" if report.kept else ""
    console.print(
        f"published {name} to {store.describe(name)}: version {report.version}, "
        f"{len(report.uploaded)} files uploaded ({_size(report.bytes_sent)}){kept}"
    )


@app.command("list")
def list_(
    prefix: str = typer.Option(None, "--prefix", help=PREFIX_HELP),
    to_dir: Path = typer.Option(None, "--to-dir", help=TO_DIR_HELP),
) -> None:
    """The registry's models and what is published for each (and anything else published)."""
    from editflow.inference.modelstore import list_models
    from editflow.inference.registry import REGISTRY

    store = _store(prefix, to_dir)
    published = {p.name: p for p in list_models(store)}
    table = Table(title=f"models in {store.describe('').rstrip('/')}")
    for column in ("model", "pipeline", "published", "files", "size", "version"):
        table.add_column(column)
    for name in [*REGISTRY, *sorted(set(published) - set(REGISTRY))]:
        spec = REGISTRY.get(name)
        found = published.get(name)
        state = "no" if found is None else "yes" if found.complete else "unfinished push"
        table.add_row(
            name,
            spec.pipeline_class if spec else "(not in the registry)",
            state,
            str(found.files) if found and found.complete else "",
            _size(found.size) if found and found.complete else "",
            found.version if found else "",
        )
    # A table is cut to the terminal's width; piped (a script, CI) it keeps every column.
    Console(width=None if console.is_terminal else 160).print(table)


@app.command()
def verify(
    name: str = typer.Argument(..., help="a published model"),
    prefix: str = typer.Option(None, "--prefix", help=PREFIX_HELP),
    to_dir: Path = typer.Option(None, "--to-dir", help=TO_DIR_HELP),
) -> None:
    """Hash every published file of NAME again and compare with its manifest (exit 1 if any
    differs)."""
    from editflow.inference.modelstore import ModelStoreError, read_manifest
    from editflow.inference.modelstore import verify as verify_model

    store = _store(prefix, to_dir)
    try:
        size = sum(int(m["size"]) for m in read_manifest(store, name)["files"].values())
    except ModelStoreError as exc:
        _fail(exc.message)
    with _bar() as bar:
        task = bar.add_task("verifying", total=size)
        bad = verify_model(store, name, lambda n: bar.advance(task, n))
    if bad:
        for line in bad:
            console.print(f"[red]mismatch[/red] {line}", highlight=False)
        console.print(
            f"{name}: {len(bad)} file(s) differ from the manifest; push the snapshot again "
            f"(`editflow models push DIR --name {name}`) to repair it"
        )
        raise typer.Exit(1)
    console.print(f"{name}: every file matches its manifest ({_size(size)})")


@app.command("rm")
def rm(
    name: str = typer.Argument(..., help="a published model"),
    prefix: str = typer.Option(None, "--prefix", help=PREFIX_HELP),
    to_dir: Path = typer.Option(None, "--to-dir", help=TO_DIR_HELP),
) -> None:
    """Unpublish NAME: its manifest first (no worker starts a download), then its files.
    Workers that already cached it keep their copy until the cache evicts it."""
    from editflow.inference.modelstore import ModelStoreError, remove

    store = _store(prefix, to_dir)
    try:
        count = remove(store, name)
    except ModelStoreError as exc:
        _fail(exc.message)
    console.print(f"removed {name} from {store.describe(name)} ({count} objects)")
