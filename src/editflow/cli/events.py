"""``editflow events``: provision the bus, publish approval/withdraw events, watch completions.

Connection and names come from the settings (``EDITFLOW_NATS__URL``,
``EDITFLOW_NATS__USER`` …, ``EDITFLOW_EVENTS__*``); ``--nats-url`` overrides
the URL for one call. Every command is a thin shell over
:mod:`editflow.events` (the SDK an OA system uses), so what works here works
from code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import typer
from nats.js.api import DeliverPolicy
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from editflow.core.errors import EditflowError
from editflow.core.settings import Settings
from editflow.events import schemas
from editflow.events.binding import ContentMode
from editflow.events.connection import connect
from editflow.events.models import (
    ApprovalData,
    ApprovalEvent,
    Callback,
    Generation,
    Person,
    ProgressEvent,
    SelectionEvent,
    Template,
    WithdrawEvent,
    approval_event_id,
)
from editflow.events.problems import EventRejected
from editflow.events.sdk import CompletionTimeout, OAClient
from editflow.events.topology import Topology, provision
from editflow.events.validation import Policy, parse_event

app = typer.Typer(help="The event bus: provision it, publish OA events, watch completions.")
console = Console(stderr=True)

NATS_URL = typer.Option(None, "--nats-url", help="override EDITFLOW_NATS__URL")


def load_settings(nats_url: str | None) -> Settings:
    """Fresh settings from the environment (not the process cache), with an optional URL."""
    settings = Settings()
    if nats_url:
        settings = settings.model_copy(
            update={"nats": settings.nats.model_copy(update={"url": nats_url})}
        )
    return settings


def run(coro: Any) -> Any:
    """Run a command's coroutine; editflow errors become a one-line message and exit code 1."""
    try:
        return asyncio.run(coro)
    except EditflowError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, ensure_ascii=False, default=str))


@app.command("provision")
def provision_cmd(nats_url: str | None = NATS_URL) -> None:
    """Create or update the streams and consumers (idempotent: re-running changes nothing)."""

    async def main() -> None:
        settings = load_settings(nats_url)
        nc = await connect(settings.nats, name="editflow-cli")
        try:
            changes = await provision(nc.jetstream(), Topology(settings.events))
        finally:
            await nc.close()
        table = Table(title="event bus")
        for column in ("kind", "name", "action", "differences"):
            table.add_column(column)
        for change in changes:
            table.add_row(change.kind, change.name, change.action, "\n".join(change.differences))
        console.print(table)

    run(main())


def _params(values: list[str]) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r}: expected key=value", param_hint="--param")
        out[key] = value
    return out


def _event_from_file(
    path: Path, source: str, event_id: str | None
) -> ApprovalEvent | WithdrawEvent:
    """A file holds a whole CloudEvent (``specversion`` present) or only an approval's data."""
    raw = path.read_bytes()
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"{path}: not JSON ({exc})", param_hint="--file") from None
    if isinstance(document, dict) and "specversion" in document:
        try:
            event = parse_event(raw, {"content-type": "application/cloudevents+json"})
        except EventRejected as exc:
            raise typer.BadParameter(f"{path}: {exc.message}", param_hint="--file") from None
        if not isinstance(event, ApprovalEvent | WithdrawEvent):
            raise typer.BadParameter(
                f"{path}: {event.type} is not an OA event", param_hint="--file"
            )
        return event
    data = ApprovalData.model_validate(document)
    return ApprovalEvent(
        id=event_id or approval_event_id(source, data.form_id, data.approval_id),
        source=source,
        data=data,
    )


@app.command()
def publish(
    file: Path | None = typer.Option(
        None,
        "--file",
        "-f",
        exists=True,
        dir_okay=False,
        help="JSON: a whole CloudEvent, or just the approval data; other flags are then ignored",
    ),
    form_id: str | None = typer.Option(None, help="OA form id"),
    approval_id: str | None = typer.Option(None, help="approval instance id"),
    applicant: str | None = typer.Option(None, help="applicant's OA user id"),
    applicant_name: str | None = typer.Option(None, help="applicant's display name"),
    approver: list[str] = typer.Option([], help="approver user id (repeatable)"),
    image_url: str | None = typer.Option(None, help="http(s):// or s3://bucket/key"),
    image_key: str | None = typer.Option(None, help="object key in the platform bucket"),
    instruction: str | None = typer.Option(None, "--instruction", "--prompt", help="the edit"),
    usage: str = typer.Option("default", help="output profile, e.g. wechat-article"),
    priority: str = typer.Option("normal", help="low | normal | high"),
    template: str | None = typer.Option(None, help="prompt template id"),
    param: list[str] = typer.Option([], help="template parameter key=value (repeatable)"),
    model: str | None = typer.Option(None, help="model registry name"),
    steps: int | None = typer.Option(None, help="inference steps"),
    guidance: float | None = typer.Option(None, help="guidance scale"),
    seed: int | None = typer.Option(None, help="random seed"),
    callback_subject: str | None = typer.Option(None, help="also report to this NATS subject"),
    callback_url: str | None = typer.Option(None, help="also report to this https webhook"),
    event_id: str | None = typer.Option(None, help="event id (default: derived from the ids)"),
    source: str = typer.Option("/editflow/cli", help="CloudEvents source of the OA system"),
    binary: bool = typer.Option(False, "--binary", help="binary content mode (ce-* headers)"),
    wait: float | None = typer.Option(None, help="wait this many seconds for the completion"),
    nats_url: str | None = NATS_URL,
) -> None:
    """Publish an approval event (from flags or --file) and print its id; --wait for the outcome.

    Exit codes with --wait: 0 success, 3 failed or cancelled, 4 needs review, 5 timeout.
    """
    try:
        if file is not None:
            event = _event_from_file(file, source, event_id)
        else:
            missing = [
                flag
                for flag, value in (
                    ("--form-id", form_id), ("--approval-id", approval_id),
                    ("--applicant", applicant), ("--instruction", instruction),
                )
                if not value
            ]  # fmt: skip
            if missing:
                raise typer.BadParameter(f"missing {', '.join(missing)} (or use --file)")
            generation = (
                Generation(steps=steps, guidance_scale=guidance, seed=seed)
                if any(v is not None for v in (steps, guidance, seed))
                else None
            )
            callback = (
                Callback(nats_subject=callback_subject, webhook_url=callback_url)
                if callback_subject or callback_url
                else None
            )
            data = ApprovalData(
                form_id=form_id,
                approval_id=approval_id,
                applicant=Person(id=applicant, name=applicant_name),
                approvers=[Person(id=a) for a in approver],
                image_url=image_url,
                image_key=image_key,
                instruction=instruction,
                usage=usage,
                priority=priority,  # type: ignore[arg-type]
                template=Template(id=template, params=_params(param)) if template else None,
                model=model,
                generation=generation,
                callback=callback,
            )
            event = ApprovalEvent(
                id=event_id or approval_event_id(source, data.form_id, data.approval_id),
                source=source,
                subject=f"{data.form_id}/{data.approval_id}"[:256],
                data=data,
            )
    except ValidationError as exc:
        console.print(f"[red]invalid event:[/red]\n{exc}")
        raise typer.Exit(2) from None
    mode: ContentMode = "binary" if binary else "structured"

    async def main() -> int:
        settings = load_settings(nats_url)
        client = await OAClient.connect(settings, source=source, mode=mode, name="editflow-cli")
        try:
            published = await client.publish(event)
            typer.echo(published)
            if wait is None or not isinstance(event, ApprovalEvent):
                return 0
            try:
                done = await client.wait_for_completion(published, timeout=wait)
            except CompletionTimeout as exc:
                console.print(f"[yellow]{exc.message}[/yellow]")
                return 5
            _print_json(done.model_dump(mode="json", exclude_none=True))
            return {"success": 0, "needs_review": 4}.get(done.data.status, 3)
        finally:
            await client.close()

    code = run(main())
    raise typer.Exit(code)


@app.command()
def withdraw(
    form_id: str = typer.Option(..., help="OA form id"),
    approval_id: str = typer.Option(..., help="approval instance id"),
    approval_event_id_: str | None = typer.Option(
        None, "--approval-event-id", help="the approval event to cancel (default: all of it)"
    ),
    reason: str | None = typer.Option(None, help="why it was withdrawn"),
    source: str = typer.Option("/editflow/cli", help="CloudEvents source of the OA system"),
    nats_url: str | None = NATS_URL,
) -> None:
    """Publish a withdraw event: the edit is cancelled and completes as ``cancelled``."""

    async def main() -> None:
        client = await OAClient.connect(load_settings(nats_url), source=source, name="editflow-cli")
        try:
            typer.echo(
                await client.withdraw(
                    form_id=form_id,
                    approval_id=approval_id,
                    approval_event_id=approval_event_id_,
                    reason=reason,
                )
            )
        finally:
            await client.close()

    run(main())


@app.command()
def watch(
    replay_all: bool = typer.Option(
        False, "--all", help="start from the oldest stored completion instead of new ones"
    ),
    reviews: bool = typer.Option(False, help="also print manual-review events"),
    progress: bool = typer.Option(
        False, help="also print progress (queued, running) and selection events"
    ),
    count: int | None = typer.Option(None, help="exit after this many events"),
    timeout: float | None = typer.Option(None, help="exit after this many idle seconds"),
    nats_url: str | None = NATS_URL,
) -> None:
    """Print completion events as JSON lines as they arrive (read from the completions stream)."""

    async def main() -> None:
        settings = load_settings(nats_url)
        topology = Topology(settings.events)
        policy = Policy(max_event_bytes=settings.events.max_event_bytes)
        nc = await connect(settings.nats, name="editflow-cli-watch")
        js = nc.jetstream()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def on_message(msg: Any) -> None:
            await queue.put(msg)

        deliver = DeliverPolicy.ALL if replay_all else DeliverPolicy.NEW
        subjects = [topology.completions_wildcard] + (
            [topology.reviews_wildcard] if reviews else []
        )
        subs = [
            await js.subscribe(
                subject,
                stream=topology.completions_stream,
                cb=on_message,
                ordered_consumer=True,
                deliver_policy=deliver,
            )
            for subject in subjects
        ]
        seen = 0
        try:
            while count is None or seen < count:
                try:
                    msg = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    break
                try:
                    event = parse_event(msg.data, msg.headers, subject=msg.subject, policy=policy)
                except EventRejected as exc:
                    console.print(f"[red]invalid event on {msg.subject}:[/red] {exc.message}")
                    continue
                if not progress and isinstance(event, ProgressEvent | SelectionEvent):
                    continue  # the same stream; only completions (and reviews) unless asked
                _print_json(event.model_dump(mode="json", exclude_none=True))
                sys.stdout.flush()
                seen += 1
        finally:
            for sub in subs:
                await sub.unsubscribe()
            await nc.close()

    with contextlib.suppress(KeyboardInterrupt):
        run(main())


@app.command("schemas")
def schemas_cmd(
    write: bool = typer.Option(False, "--write", help="write the files instead of checking"),
    directory: Path = typer.Option(schemas.SCHEMA_DIR, "--dir", help="where the schemas live"),
) -> None:
    """Check (default) or regenerate the JSON Schemas in docs/schemas from the models."""
    if write:
        for path in schemas.write(directory):
            typer.echo(path)
        return
    stale = schemas.stale(directory)
    if stale:
        console.print(f"[red]out of date:[/red] {', '.join(stale)}; run with --write")
        raise typer.Exit(1)
    console.print("schemas are up to date")
