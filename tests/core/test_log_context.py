"""log_context: the fields of the edit in hand on every line, in tasks and threads alike."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import threading

from editflow.core.logging import ContextFilter, JsonFormatter, log_context


def _capture() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    logger = logging.getLogger(f"test.log_context.{id(stream)}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_fields_apply_inside_the_block_only_and_a_records_own_extra_wins() -> None:
    log, stream = _capture()
    log.info("before")
    with log_context(edit_id="e-1", attempt=2):
        log.info("inside")
        log.info("explicit", extra={"attempt": 3})
        with log_context(step="upload"):
            log.info("nested")
    log.info("after")
    before, inside, explicit, nested, after = _lines(stream)
    assert "edit_id" not in before and "edit_id" not in after
    assert (inside["edit_id"], inside["attempt"]) == ("e-1", 2)
    assert explicit["attempt"] == 3
    assert (nested["edit_id"], nested["step"]) == ("e-1", "upload")


def test_concurrent_tasks_keep_their_own_fields_and_a_copied_context_reaches_a_thread() -> None:
    log, stream = _capture()

    async def edit(name: str) -> None:
        with log_context(edit_id=name):
            await asyncio.sleep(0.01)
            log.info("task line")
            context = contextvars.copy_context()
            thread = threading.Thread(target=lambda: context.run(log.info, "thread line"))
            thread.start()
            thread.join()

    async def both() -> None:
        await asyncio.gather(edit("a"), edit("b"))

    asyncio.run(both())
    lines = _lines(stream)
    assert sorted((line["msg"], line["edit_id"]) for line in lines) == [
        ("task line", "a"),
        ("task line", "b"),
        ("thread line", "a"),
        ("thread line", "b"),
    ]
