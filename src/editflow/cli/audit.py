"""``editflow audit export`` and ``editflow usage report``: the audit stream, read back.

Both read the audit stream (:mod:`editflow.events.audit`) from ``--since`` on, with the
NATS settings every ``editflow events`` command uses (``EDITFLOW_NATS__*``).
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer
from rich.table import Table

from editflow.cli.events import NATS_URL, console, load_settings, run

audit = typer.Typer(help="The audit log: one record per finished edit.", no_args_is_help=True)
usage = typer.Typer(help="GPU use by department, applicant, usage or model.", no_args_is_help=True)

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def since_time(value: str, now: datetime | None = None) -> datetime:
    """``7d``, ``12h``, ``30m``, ``2w``, or an ISO time: where the read starts."""
    now = now or datetime.now(UTC)
    match = _DURATION.match(value.strip())
    if match:
        return now - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r}: expected a duration like 7d, 12h, 30m, 2w or an ISO time",
            param_hint="--since",
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


SINCE = typer.Option("7d", "--since", help="how far back: 7d, 12h, 30m, 2w or an ISO time")


async def _records(nats_url: str | None, since: datetime, progress: bool) -> list:
    from editflow.events.audit import read_audit
    from editflow.events.connection import connect
    from editflow.events.topology import Topology

    settings = load_settings(nats_url)
    topology = Topology(settings.events)
    nc = await connect(settings.nats, name="editflow-cli-audit")
    records = []
    try:
        with console.status("reading the audit stream", spinner="dots") as status:
            async for record in read_audit(nc.jetstream(), topology, since=since):
                records.append(record)
                if progress and len(records) % 500 == 0:
                    status.update(f"reading the audit stream: {len(records)} records")
    finally:
        await nc.close()
    return records


@audit.command("export")
def export(
    since: str = SINCE,
    output: Path = typer.Option(None, "--output", "-o", help="file to write (default: stdout)"),
    nats_url: str | None = NATS_URL,
) -> None:
    """Every audit record since --since as JSON Lines (one finished edit per line)."""
    start = since_time(since)
    records = run(_records(nats_url, start, progress=output is not None))
    lines = "".join(record.model_dump_json() + "\n" for record in records)
    write_lines(lines, output, f"{len(records)} audit records since {start:%Y-%m-%d %H:%M}")


def write_lines(lines: str, output: Path | None, what: str) -> None:
    """JSON Lines to stdout, or to ``output`` with one line saying what was written."""
    if output is None:
        sys.stdout.write(lines)
    else:
        output.write_text(lines, encoding="utf-8")
        console.print(f"wrote {what}: {output}")


@usage.command("report")
def report(
    since: str = SINCE,
    by: str = typer.Option(
        "department", "--by", help="department, applicant, usage, model, cost_center or namespace"
    ),
    fmt: str = typer.Option("table", "--format", help="table, csv or json"),
    output: Path = typer.Option(None, "--output", "-o", help="write the CSV or JSON here"),
    nats_url: str | None = NATS_URL,
) -> None:
    """Edits, outcomes and GPU-seconds per department (or applicant, usage, model) since --since."""
    from editflow.events.audit import GROUPS, usage_rows

    if by not in GROUPS:
        raise typer.BadParameter(f"expected one of {', '.join(GROUPS)}", param_hint="--by")
    if fmt not in ("table", "csv", "json"):
        raise typer.BadParameter("expected table, csv or json", param_hint="--format")
    start = since_time(since)
    rows = usage_rows(run(_records(nats_url, start, progress=True)), by)
    columns = [by, "edits", "succeeded", "failed", "needs_review", "cancelled", "gpu_seconds"]
    if fmt == "table":
        table = Table(title=f"GPU use by {by} since {start:%Y-%m-%d %H:%M} UTC")
        for column in columns:
            table.add_column(column, justify="left" if column == by else "right")
        for row in rows:
            cells = (f"{row[c]:.1f}" if c == "gpu_seconds" else str(row[c]) for c in columns)
            table.add_row(*cells)
        console.print(table)
        text = None
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    else:
        text = json.dumps(rows, ensure_ascii=False, indent=1) + "\n"
    if text is not None:
        if output is None:
            sys.stdout.write(text)
        else:
            output.write_text(text)
            console.print(f"wrote {len(rows)} rows to {output}")
