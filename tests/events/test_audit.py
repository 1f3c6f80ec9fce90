"""The audit stream against a real JetStream: records, exactly once, read back by the CLI."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from editflow.cli.audit import since_time
from editflow.cli.main import app
from editflow.core.settings import Settings
from editflow.events.audit import AuditRecord, publish_audit, read_audit, usage_rows
from tests.events.test_cli import _env


def record(n: int, **fields: Any) -> AuditRecord:
    values: dict[str, Any] = {
        "completion_event_id": f"c-{n}",
        "approval_event_id": f"a-{n}",
        "form_id": f"F-{n}",
        "approval_id": "AP-1",
        "namespace": "edits",
        "editjob": f"ej-{n}",
        "status": "success",
        "prompt": "把背景换成海边",
        "source": "uploads/edits/a.png",
        "gpu_seconds": 10.0,
        "attempts": 1,
        "applicant": "u-1",
        "department": "marketing",
        "usage": "wechat-article",
        "model": "longcat-image-edit",
    }
    values.update(fields)
    return AuditRecord(**values)


async def _cli(settings: Settings, *args: str) -> Any:
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, app, list(args), env=_env(settings))


async def test_records_are_kept_once_and_read_back_since_a_time(js, topology, settings) -> None:
    began = datetime.now(UTC) - timedelta(seconds=5)
    first = await publish_audit(js, topology, record(1))
    again = await publish_audit(js, topology, record(1))  # the outbox retrying after a crash
    assert again.duplicate and again.seq == first.seq
    await publish_audit(js, topology, record(2, namespace="design", department="design"))
    await publish_audit(
        js, topology, record(3, status="failed", gpu_seconds=4.0, error_code="model_failed")
    )
    records = [r async for r in read_audit(js, topology, since=began)]
    assert [r.completion_event_id for r in records] == ["c-1", "c-2", "c-3"]
    later = datetime.now(UTC) + timedelta(minutes=1)
    assert [r async for r in read_audit(js, topology, since=later)] == []

    exported = await _cli(settings, "audit", "export", "--since", "1h")
    assert exported.exit_code == 0, exported.output
    lines = [json.loads(line) for line in exported.stdout.splitlines() if line.startswith("{")]
    assert [line["editjob"] for line in lines] == ["ej-1", "ej-2", "ej-3"]
    assert lines[0]["department"] == "marketing" and lines[0]["prompt"] == "把背景换成海边"

    as_csv = await _cli(
        settings, "usage", "report", "--since", "1h", "--by", "department", "--format", "csv"
    )
    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    by_department = {row["department"]: row for row in rows}
    assert by_department["marketing"]["edits"] == "2"
    assert by_department["marketing"]["failed"] == "1"
    assert float(by_department["marketing"]["gpu_seconds"]) == 14.0
    assert by_department["design"]["succeeded"] == "1"

    as_json = await _cli(settings, "usage", "report", "--since", "1h", "--by", "namespace",
                         "--format", "json")  # fmt: skip
    assert {row["namespace"]: row["edits"] for row in json.loads(as_json.stdout)} == {
        "edits": 2,
        "design": 1,
    }
    table = await _cli(settings, "usage", "report", "--since", "1h")
    assert table.exit_code == 0 and "marketing" in table.output


async def test_bad_options_name_what_is_expected(settings) -> None:
    by = await _cli(settings, "usage", "report", "--by", "colour")
    assert by.exit_code == 2 and "department" in by.output
    since = await _cli(settings, "audit", "export", "--since", "last week")
    assert since.exit_code == 2 and "7d" in since.output


def test_usage_rows_group_and_sort_by_gpu_seconds() -> None:
    rows = usage_rows(
        [
            record(1, department=None, gpu_seconds=1.0),
            record(2, department="sales", gpu_seconds=5.0, status="needs_review"),
            record(3, department="sales", gpu_seconds=2.5, status="cancelled"),
        ],
        "department",
    )
    assert [row["department"] for row in rows] == ["sales", "(none)"]
    assert rows[0] == {
        "department": "sales",
        "edits": 2,
        "succeeded": 0,
        "failed": 0,
        "needs_review": 1,
        "cancelled": 1,
        "gpu_seconds": 7.5,
    }
    with pytest.raises(ValueError, match="cannot group by"):
        usage_rows([], "colour")


def test_since_takes_durations_and_iso_times() -> None:
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert since_time("7d", now) == now - timedelta(days=7)
    assert since_time("90m", now) == now - timedelta(minutes=90)
    assert since_time("2026-11-30T08:00:00", now) == datetime(2026, 11, 30, 8, tzinfo=UTC)


def test_the_audit_names_follow_the_completions_unless_set() -> None:
    """An installation that renames its streams to share a NATS account (as the tests do)
    gets its own audit stream: a shared one would be fought over (storage, subjects)."""
    from editflow.core.settings import EventsSettings
    from editflow.events.topology import Topology

    default = Topology(EventsSettings())
    assert (default.audit_stream, default.audit_subject_prefix) == (
        "EDITFLOW_AUDIT",
        "editflow.audit",
    )
    renamed = Topology(
        EventsSettings(
            completions_stream="T1_COMPLETIONS", completion_subject_prefix="t1.completions"
        )
    )
    assert (renamed.audit_stream, renamed.audit_subject_prefix) == ("T1_AUDIT", "t1.audit")
    assert renamed.audit_subject("edits") == "t1.audit.edits"
    explicit = Topology(EventsSettings(audit_stream="A", audit_subject_prefix="corp.audit"))
    assert (explicit.audit_stream, explicit.audit_subject_prefix) == ("A", "corp.audit")
    subjects = {stream.name: stream.subjects for stream in default.streams()}
    assert subjects["EDITFLOW_AUDIT"] == ["editflow.audit.>"]
