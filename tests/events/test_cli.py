"""``editflow events`` and ``editflow dlq`` against a real JetStream.

The CLI runs in a worker thread (it owns its own event loop, as from a
shell) while the stand-in operator runs on the test's loop.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from typer.testing import CliRunner

from editflow.cli.main import app
from editflow.core.settings import Settings
from editflow.events.consumer import run_consumer
from editflow.events.dlq import list_dead_letters
from editflow.events.models import ApprovalEvent, EditJobRef
from editflow.events.outcomes import completion_event, publish_completion


def _env(settings: Settings) -> dict[str, str]:
    env = {"EDITFLOW_NATS__URL": settings.nats.url}
    for name, value in settings.events.model_dump(exclude_none=True).items():
        env[f"EDITFLOW_EVENTS__{name.upper()}"] = (
            json.dumps(value) if isinstance(value, list) else str(value)
        )
    return env


async def _cli(settings: Settings, *args: str) -> Any:
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, app, list(args), env=_env(settings))


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture
async def operator(js, topology):
    """Completes every approval with success."""

    async def handler(event, delivery):
        if isinstance(event, ApprovalEvent):
            done = completion_event(
                editjob=EditJobRef(namespace="default", name=f"edit-{event.data.form_id}", uid="u"),
                approval_event_id=event.id, form_id=event.data.form_id,
                approval_id=event.data.approval_id, status="success",
                result_url="https://minio.example.com/r.png", result_key="r.png", attempts=1,
            )  # fmt: skip
            await publish_completion(js, topology, done)

    stop = asyncio.Event()
    task = asyncio.create_task(
        run_consumer(js, handler, topology=topology, stop=stop, fetch_timeout=0.3)
    )
    yield
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_provision_is_idempotent(settings):
    first = await _cli(settings, "events", "provision")
    assert first.exit_code == 0, first.output
    assert "created" in first.output
    again = await _cli(settings, "events", "provision")
    assert again.exit_code == 0 and "created" not in again.output and "unchanged" in again.output


async def test_publish_from_flags_and_wait_for_the_outcome(settings, js, operator):
    result = await _cli(
        settings, "events", "publish", "--form-id", "F-cli", "--approval-id", "AP-9",
        "--applicant", "u42", "--approver", "m1", "--image-url", "https://oa.example.com/a.png",
        "--prompt", "把背景换成办公室", "--steps", "20", "--seed", "7", "--wait", "30",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    event_id = result.stdout.splitlines()[0]
    (completion,) = _json_lines(result.stdout)
    assert completion["data"]["approval_event_id"] == event_id
    assert completion["data"]["status"] == "success"

    watched = await _cli(settings, "events", "watch", "--all", "--count", "1", "--timeout", "10")
    assert watched.exit_code == 0, watched.output
    (seen,) = _json_lines(watched.stdout)
    assert seen["id"] == completion["id"]


async def test_publish_from_a_file_in_binary_mode(settings, js, topology, tmp_path):
    data = {
        "form_id": "F-file", "approval_id": "AP-1", "applicant": {"id": "u1"},
        "image_key": "inputs/F-file.png", "instruction": "remove the watermark",
    }  # fmt: skip
    path = tmp_path / "approval.json"
    path.write_text(json.dumps(data))
    result = await _cli(settings, "events", "publish", "--file", str(path), "--binary")
    assert result.exit_code == 0, result.output
    stored = await js.get_last_msg(topology.approvals_stream, topology.approval_subject)
    assert stored.headers["ce-id"] == result.stdout.strip()


async def test_publish_refuses_an_invalid_event_without_sending_it(settings, js, topology):
    result = await _cli(
        settings, "events", "publish", "--form-id", "F", "--approval-id", "A",
        "--applicant", "u", "--image-url", "file:///etc/passwd", "--prompt", "x",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "scheme 'file' is not allowed" in result.output
    assert (await js.stream_info(topology.approvals_stream)).state.messages == 0


async def test_dlq_list_show_replay(settings, js, topology, eventually):
    await js.publish(
        topology.approval_subject, b'{"specversion": "9.9"}', headers={"Nats-Msg-Id": "bad-1"}
    )
    stop = asyncio.Event()

    async def handler(event, delivery):
        raise AssertionError("an invalid event reached the handler")

    task = asyncio.create_task(
        run_consumer(js, handler, topology=topology, stop=stop, fetch_timeout=0.3)
    )
    try:
        await eventually(lambda: list_dead_letters(js, topology), what="the dead letter")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)

    listed = await _cli(settings, "dlq", "list", "--json")
    assert listed.exit_code == 0, listed.output
    (entry,) = _json_lines(listed.stdout)
    assert entry["reason"] == "invalid_event.unsupported_specversion"
    assert entry["event_id"] == "bad-1"
    table = await _cli(settings, "dlq", "list")
    assert "unsupported_specversion" in table.stdout

    shown = await _cli(settings, "dlq", "show", str(entry["seq"]))
    assert shown.exit_code == 0, shown.output
    detail = json.loads(shown.stdout)
    assert detail["payload"] == {"specversion": "9.9"}
    assert "9.9" in detail["message"]

    replayed = await _cli(settings, "dlq", "replay", str(entry["seq"]))
    assert replayed.exit_code == 0, replayed.output
    assert await list_dead_letters(js, topology) == []
    copy = await js.get_last_msg(topology.approvals_stream, topology.approval_subject)
    assert copy.data == b'{"specversion": "9.9"}'
    missing = await _cli(settings, "dlq", "show", str(entry["seq"]))
    assert missing.exit_code == 1


async def test_schemas_command_reports_the_docs_up_to_date(settings):
    result = await _cli(settings, "events", "schemas")
    assert result.exit_code == 0, result.output
