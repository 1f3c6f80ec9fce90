"""``editflow worker``: the GPU worker's command line (the operator contract).

``run`` is what each attempt's Job executes; ``serve`` is the warm worker;
``tiny-model`` builds a random-weight model directory for tests. torch and
diffusers are imported inside the commands only: ``editflow`` itself starts in
the control plane, where they are not installed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

app = typer.Typer(
    help="The GPU worker: fetch, preprocess, edit, upload, report.", no_args_is_help=True
)


def _settings():  # noqa: ANN202 - keeps pydantic-settings import inside the command
    from editflow.core.logging import configure_logging
    from editflow.core.settings import Settings

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return settings


@app.command()
def run(
    request: str = typer.Option(
        None, "--request", help="WorkerRequest JSON (or @path to a file with it)."
    ),
    termination_log: str = typer.Option(
        None,
        "--termination-log",
        envvar="EDITFLOW_WORKER__TERMINATION_LOG",
        help="Termination message path (default /dev/termination-log).",
    ),
) -> None:
    """Run one edit; print the WorkerResult JSON last; exit with its ExitCode."""
    raw = request
    if raw is None:
        raw = sys.stdin.read()
    elif raw.startswith("@"):
        raw = Path(raw[1:]).read_text(encoding="utf-8")
    from editflow.inference import report
    from editflow.inference.worker import execute, pod_name

    settings = _settings()
    result, code = execute(raw, settings, termination_log=termination_log, worker=pod_name())
    report.print_last_line(result)
    # A streamed load fills the node cache behind it: let that finish, so the next Pod on
    # this node loads from local files (the result is already out).
    from editflow.inference.streamload import wait_for_cache_fills

    wait_for_cache_fills()
    # Leave without interpreter teardown: a background weight load that a failed input
    # made pointless may still be running, and the exit code is the contract.
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@app.command()
def serve(
    model: str = typer.Option(
        None, "--model", help="Model to keep loaded (default: the registry's default)."
    ),
    http_port: int = typer.Option(
        None, "--http-port", help="Port of /healthz, /readyz and /metrics (0: any free port)."
    ),
    namespace: str = typer.Option(
        None,
        "--namespace",
        help="Namespace whose work queue to serve (default: EDITFLOW_NAMESPACE).",
    ),
    idle_seconds: float = typer.Option(
        None,
        "--idle-seconds",
        min=0,
        help="Exit 0 after this long without work; 0: never "
        "(default: EDITFLOW_WORKER__IDLE_SECONDS, 300).",
    ),
) -> None:
    """Warm mode: keep the pipeline loaded and take requests from the JetStream work queue."""
    import asyncio

    from editflow.inference.registry import DEFAULT_MODEL
    from editflow.inference.serve import WarmWorker

    settings = _settings()
    if idle_seconds is not None:
        settings.worker.idle_seconds = idle_seconds
    try:
        worker = WarmWorker(
            settings,
            model=model or DEFAULT_MODEL,
            http_port=settings.worker.http_port if http_port is None else http_port,
            namespace=namespace,
        )
    except ValueError as exc:  # a namespace or model that cannot name a work subject
        raise typer.BadParameter(str(exc)) from None
    code = asyncio.run(worker.run())
    if worker.abandoned:
        # An edit thread is still running native code: leave without finalising it.
        import logging

        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    raise typer.Exit(code)


@app.command()
def prestage(
    node: str = typer.Option(
        ..., "--node", envvar="NODE_NAME", help="This node's name (the Pod's spec.nodeName)."
    ),
    interval_seconds: float = typer.Option(
        900, "--interval-seconds", min=1, help="Seconds between passes (SIGHUP: a pass now)."
    ),
    service_account_dir: Path = typer.Option(
        Path("/var/run/secrets/kubernetes.io/serviceaccount"),
        "--service-account-dir",
        help="The mounted ServiceAccount token and CA (to label the node).",
    ),
    once: bool = typer.Option(False, "--once", help="One pass, then exit (1 if a model failed)."),
) -> None:
    """Staged node: fill this node's weights cache for the configured models, label the node,
    and stay (re-checking every --interval-seconds): the prestage DaemonSet's command."""
    from editflow.cli.prestage import prestage_forever

    raise typer.Exit(prestage_forever(node, interval_seconds, service_account_dir, once=once))


@app.command("tiny-model")
def tiny_model(
    model: str = typer.Option("longcat-image-edit", "--model", help="Registry model name."),
    out: Path = typer.Option(..., "--out", help="Directory to save the pipeline into."),
) -> None:
    """Build a tiny random-weight model offline and save it with save_pretrained.

    Point a worker at it with EDITFLOW_WORKER__MODELS_ROOT=<parent of --out> when
    --out ends in the model's name (the worker looks for <root>/<model>).
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    from editflow.inference.tiny import save_tiny_model

    try:
        path = save_tiny_model(model, out)
    except KeyError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    hint = {"model": model, "path": str(path.resolve())}
    if path.name == model:
        hint["EDITFLOW_WORKER__MODELS_ROOT"] = str(path.resolve().parent)
    typer.echo(json.dumps(hint))


@app.command("models", hidden=True)
def models() -> None:
    """Deprecated alias of ``editflow models list`` (kept for one release)."""
    from editflow.cli.models import list_

    typer.echo("`editflow worker models` is deprecated: use `editflow models list`", err=True)
    list_(prefix=None, to_dir=None)


@app.command("publish-weights", hidden=True)
def publish_weights(
    model_dir: Path = typer.Argument(..., help="A saved pipeline directory."),
    prefix: str = typer.Option(..., "--prefix", help="S3 prefix, e.g. models/longcat-image-edit"),
) -> None:
    """Deprecated alias of ``editflow models push`` (kept for one release): ``--prefix``
    named the model's own prefix, so its last part is the model's name."""
    from editflow.cli.models import push

    parent, _, name = prefix.strip("/").rpartition("/")
    typer.echo(
        f"`editflow worker publish-weights` is deprecated: use "
        f"`editflow models push {model_dir} --name {name} --prefix {parent or '.'}`",
        err=True,
    )
    push(directory=model_dir, name=name, prefix=parent or None, to_dir=None, max_rate=0)
