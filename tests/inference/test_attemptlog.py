"""A warm attempt's own log lines travel with its failed result (the desk shows them).

The capture itself (editflow.inference.attemptlog) and the warm worker's use of it, with
``execute`` replaced by one that logs and fails, so no model or NATS is needed.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pytest

from editflow.core.errors import ErrorInfo
from editflow.core.settings import Settings
from editflow.events.worker_contract import WorkerResult
from editflow.inference import attemptlog, serve

own = logging.getLogger("editflow.inference.worker")


@pytest.fixture(autouse=True)
def info_level() -> Any:
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)
    yield
    root.setLevel(before)


async def test_only_the_attempts_own_lines_are_kept_short_and_without_tracebacks() -> None:
    started = threading.Event()
    done = threading.Event()

    def elsewhere() -> None:  # another thread, not in the attempt's context
        started.wait(5)
        own.info("another edit's line")
        done.set()

    threading.Thread(target=elsewhere, daemon=True).start()
    with attemptlog.capture() as lines:

        def attempt() -> None:
            started.set()
            done.wait(5)
            for n in range(30):
                own.info("step %d", n, extra={"model": "longcat-image-edit", "skip": None})
            logging.getLogger("urllib3").warning("not ours")
            try:
                raise RuntimeError("secret-in-a-frame")
            except RuntimeError:
                own.exception("x" * 500)

        await serve._in_daemon_thread(attempt)
    own.info("after the attempt")
    assert len(lines) == attemptlog.MAX_LINES
    assert all(len(line) <= attemptlog.MAX_LINE_CHARS for line in lines)
    first = json.loads(lines[0])
    assert first["msg"] == "step 11" and first["model"] == "longcat-image-edit"
    assert first["level"] == "info" and "skip" not in first
    text = "\n".join(lines)
    assert "another edit" not in text and "not ours" not in text and "after" not in text
    assert "secret-in-a-frame" not in text
    assert json.loads(lines[-1])["msg"].endswith("x…")  # shortened, still JSON


def test_a_long_error_gives_way_to_the_prompt_beside_it() -> None:
    record = logging.LogRecord("editflow.inference.worker", logging.WARNING, "x", 0, "edit failed",
                               None, None)  # fmt: skip
    record.error = "[fetch_failed] " + "could not fetch the source " * 10
    record.source = {"url": "http://127.0.0.1:9/unreachable.png"}  # nested: shortened as text
    record.prompt = "make the red square green"
    line = json.loads(attemptlog.line(record))
    assert line["prompt"] == "make the red square green" and line["error"].endswith("…")
    assert len(attemptlog.line(record)) <= attemptlog.MAX_LINE_CHARS


def test_a_long_line_of_short_fields_is_cut_and_rendering_ends() -> None:
    record = logging.LogRecord("editflow.inference.worker", logging.INFO, "x", 0, "edit done",
                               None, None)  # fmt: skip
    for n in range(12):  # twelve fields of 25 characters: none can be shortened usefully
        setattr(record, f"field{n}", "y" * 25)
    assert len(attemptlog.line(record)) == attemptlog.MAX_LINE_CHARS


class FakeMessage:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.acked = False

    async def ack(self) -> None:
        self.acked = True

    async def in_progress(self) -> None:
        pass


class FakeNats:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, payload: bytes) -> None:
        self.published.append((subject, payload))

    async def flush(self) -> None:
        pass


@pytest.mark.parametrize("status", ["failed", "success"])
async def test_a_failed_warm_attempt_sends_its_lines_and_a_success_none(
    monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    def execute(raw: str, *args: Any, **kwargs: Any) -> tuple[WorkerResult, int]:
        own.info("edit started", extra={"model": "longcat-image-edit"})
        own.warning("edit failed", extra={"error": "the source answered 404"})
        error = ErrorInfo("fetch_failed", "404", False) if status == "failed" else None
        result = WorkerResult(
            status=status, edit_id="ej-1", attempt=2, model="longcat-image-edit", error=error
        )
        return result, 0 if error is None else 3

    monkeypatch.setattr(serve, "execute", execute)
    worker = serve.WarmWorker(Settings(), model="longcat-image-edit", namespace="ns-a")
    nc, message = FakeNats(), FakeMessage(b'{"edit_id": "ej-1", "attempt": 2}')
    own.info("before the attempt")
    await worker._handle(nc, message)
    [(subject, payload)] = nc.published
    sent = WorkerResult.model_validate_json(payload)
    assert message.acked and subject.endswith(".ns-a.ej-1")
    if status == "success":
        assert sent.log == []
    else:
        msgs = [json.loads(line)["msg"] for line in sent.log]
        assert msgs == ["edit started", "edit failed"]
        assert json.loads(sent.log[1])["error"] == "the source answered 404"
