"""``editflow``: the single entry point for every component (``editflow dev ...`` and more)."""

from __future__ import annotations

from pathlib import Path

import typer

from editflow import __version__
from editflow.cli import audit as audit_cli
from editflow.cli import dev
from editflow.cli import dlq as dlq_cli
from editflow.cli import edits as edits_cli
from editflow.cli import events as events_cli
from editflow.cli import gateway as gateway_cli
from editflow.cli import models as models_cli
from editflow.cli import operator as operator_cli
from editflow.cli import review as review_cli
from editflow.cli import worker as worker_cli

app = typer.Typer(
    name="editflow",
    help="OA-approved image edits as Kubernetes GPU Jobs.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(dev.app, name="dev")
app.add_typer(events_cli.app, name="events")
app.add_typer(dlq_cli.app, name="dlq")
app.add_typer(worker_cli.app, name="worker")
app.add_typer(models_cli.app, name="models")
app.add_typer(operator_cli.app, name="operator")
operator_cli.edits.command()(edits_cli.rerun)  # beside cancel/resolve: one `edits` group
app.add_typer(operator_cli.edits, name="edits")
app.add_typer(gateway_cli.app, name="gateway")
app.add_typer(audit_cli.audit, name="audit")
app.add_typer(audit_cli.usage, name="usage")
app.add_typer(review_cli.review, name="review")


@app.command()
def version() -> None:
    """Print the editflow version."""
    typer.echo(__version__)


@app.command()
def demo(
    output: Path = typer.Option(Path("demo-output"), help="where input.png and the result go"),
    host_images: bool = typer.Option(
        False,
        help="run the operator and workers from this virtualenv instead of editflow's images "
        "(no image build)",
    ),
) -> None:
    """The main job on the embedded local stack: an OA approval becomes an edited image.

    Builds editflow's images (cached by content hash), starts the local platform with
    its registry, `helm install`s the chart with those images, publishes an approval
    event, follows the EditJob, downloads the result, and tears everything down.
    """
    from editflow.devstack.demo import run_demo

    run_demo(output, host_images=host_images)


if __name__ == "__main__":
    app()
