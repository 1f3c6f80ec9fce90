"""``editflow review export``: what the designer's desk taught, for the template owners.

Reads the audit stream (:mod:`editflow.events.audit`) from ``--since`` on and keeps the desk's
lessons (issue 22, "the loop closes"): samples and gate-flagged edits a reviewer marked
``poor``, any verdict that came with a better instruction, and re-runs with a corrected
instruction. Each becomes one JSON line with the instruction the applicant wrote beside the
one a designer would have used, which template owners turn into better templates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from editflow.cli.audit import SINCE, _records, since_time, write_lines
from editflow.cli.events import NATS_URL, run
from editflow.events.audit import AuditRecord

review = typer.Typer(help="The designer's desk: what reviewers found.", no_args_is_help=True)


def lesson(record: AuditRecord) -> dict[str, Any] | None:
    """The JSON line of a review record worth a template owner's time, else ``None``."""
    if record.kind != "review":
        return None
    if record.review_action == "verdict":
        if record.review_verdict != "poor" and not record.better_instruction:
            return None
        kind, corrected = "verdict", record.better_instruction
    elif record.review_action == "rerun" and record.review_instruction:
        kind, corrected = "corrected_instruction", record.review_instruction
    else:
        return None
    return {
        "kind": kind,
        "verdict": record.review_verdict,
        "namespace": record.namespace,
        "editjob": record.editjob,
        "time": record.finished_at.isoformat() if record.finished_at else None,
        "instruction": record.prompt,
        "better_instruction": corrected,
        "usage": record.usage,
        "model": record.model,
        "department": record.department,
        "source": record.source,
        "result_key": record.result_key,
        "reviewer": record.reviewer,
        "reviewer_name": record.reviewer_name,
    }


@review.command("export")
def export(
    since: str = SINCE,
    output: Path = typer.Option(None, "--output", "-o", help="file to write (default: stdout)"),
    nats_url: str | None = NATS_URL,
) -> None:
    """Poor samples and corrected instructions since --since as JSON Lines."""
    start = since_time(since)
    records = run(_records(nats_url, start, progress=output is not None))
    lessons = [found for record in records if (found := lesson(record)) is not None]
    lines = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in lessons)
    write_lines(lines, output, f"{len(lessons)} review lessons since {start:%Y-%m-%d %H:%M}")
