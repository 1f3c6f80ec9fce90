"""``editflow dlq``: list, inspect, replay and delete dead-lettered events.

Every event editflow refused or gave up on is kept in the dead-letter stream
with its original bytes and the reason (see :mod:`editflow.events.dlq`).
After fixing the cause (a signing key rolled out, a bug fixed), ``replay``
republishes the original to its subject and removes the dead letter.
"""

from __future__ import annotations

import json

import typer
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from rich.console import Console
from rich.table import Table

from editflow.cli.events import NATS_URL, load_settings, run
from editflow.events import dlq
from editflow.events.connection import connect
from editflow.events.topology import Topology

app = typer.Typer(help="Dead-lettered events: list, show, replay, delete.")
console = Console(stderr=True)


async def _open(nats_url: str | None) -> tuple[NATS, JetStreamContext, Topology]:
    settings = load_settings(nats_url)
    nc = await connect(settings.nats, name="editflow-cli-dlq")
    return nc, nc.jetstream(), Topology(settings.events)


@app.command("list")
def list_cmd(
    limit: int = typer.Option(100, help="show at most this many (oldest first)"),
    reason: str | None = typer.Option(None, help="only this reason code (prefix match)"),
    as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table"),
    nats_url: str | None = NATS_URL,
) -> None:
    """List dead letters: sequence, time, reason, subject, event id, message."""

    async def main() -> None:
        nc, js, topology = await _open(nats_url)
        try:
            letters = await dlq.list_dead_letters(js, topology, limit=limit)
        finally:
            await nc.close()
        if reason:
            letters = [dl for dl in letters if dl.reason.startswith(reason)]
        if as_json:
            for letter in letters:
                typer.echo(json.dumps(letter.summary(), ensure_ascii=False))
            return
        table = Table(title=f"dead letters in {topology.dlq_stream}")
        for column in ("seq", "time", "reason", "subject", "event id", "message"):
            table.add_column(column, overflow="fold")
        for dl in letters:
            message = dl.message if len(dl.message) <= 120 else dl.message[:117] + "..."
            table.add_row(str(dl.seq), dl.time, dl.reason, dl.subject, dl.event_id or "", message)
        Console(width=200).print(table)

    run(main())


@app.command()
def show(
    seq: int = typer.Argument(..., help="DLQ sequence (from `dlq list`)"),
    nats_url: str | None = NATS_URL,
) -> None:
    """Everything about one dead letter: reason, headers and the original payload."""

    async def main() -> None:
        nc, js, topology = await _open(nats_url)
        try:
            letter = await dlq.get_dead_letter(js, topology, seq)
        except NotFoundError:
            console.print(f"[red]no dead letter {seq}[/red] (replayed, deleted or expired)")
            raise typer.Exit(1) from None
        finally:
            await nc.close()
        try:
            body: object = json.loads(letter.body)
        except (ValueError, UnicodeDecodeError):
            body = letter.body.decode("utf-8", errors="replace")
        typer.echo(
            json.dumps(
                {**letter.summary(), "headers": letter.headers, "payload": body},
                ensure_ascii=False,
                indent=2,
            )
        )

    run(main())


@app.command()
def replay(
    seqs: list[int] = typer.Argument(None, help="DLQ sequences to replay"),
    replay_all: bool = typer.Option(False, "--all", help="replay every dead letter"),
    reason: str | None = typer.Option(None, help="with --all: only this reason (prefix)"),
    nats_url: str | None = NATS_URL,
) -> None:
    """Republish dead letters' originals to their subjects, then remove them from the DLQ."""
    if not seqs and not replay_all:
        raise typer.BadParameter("give DLQ sequences or --all")

    async def main() -> int:
        nc, js, topology = await _open(nats_url)
        failed = 0
        try:
            targets = list(seqs or [])
            if replay_all:
                letters = await dlq.list_dead_letters(js, topology, limit=100_000)
                targets = [dl.seq for dl in letters if not reason or dl.reason.startswith(reason)]
            for seq in targets:
                try:
                    ack = await dlq.replay(js, topology, seq)
                except (NotFoundError, ValueError) as exc:
                    console.print(f"[red]{seq}: not replayed:[/red] {exc}")
                    failed += 1
                    continue
                typer.echo(f"{seq} -> {ack.stream} seq {ack.seq}")
        finally:
            await nc.close()
        return 1 if failed else 0

    raise typer.Exit(run(main()))


@app.command()
def delete(
    seqs: list[int] = typer.Argument(..., help="DLQ sequences to delete for good"),
    yes: bool = typer.Option(False, "--yes", help="do not ask"),
    nats_url: str | None = NATS_URL,
) -> None:
    """Delete dead letters that need no replay (the decision is logged by the caller)."""
    if not yes:
        typer.confirm(f"delete {len(seqs)} dead letter(s) for good?", abort=True)

    async def main() -> None:
        nc, js, topology = await _open(nats_url)
        try:
            for seq in seqs:
                await dlq.delete_dead_letter(js, topology, seq)
                typer.echo(f"deleted {seq}")
        finally:
            await nc.close()

    run(main())
