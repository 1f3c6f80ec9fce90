"""The work stream's duplicate window covers an attempt's life and follows the operator's
setting on an existing stream (issue 20 §7: a new leader re-publishes running attempts)."""

from __future__ import annotations

import contextlib

import nats
from nats.js.api import StreamConfig

from editflow.core.settings import OperatorSettings
from editflow.events.worker_contract import WORK_STREAM
from editflow.events.workqueue import DEFAULT_DUPLICATE_WINDOW, ensure_work_stream


async def test_the_operator_sets_the_duplicate_window_on_an_existing_stream(nats_server) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(WORK_STREAM)
        await ensure_work_stream(js)  # a worker came first: the default window
        info = await js.stream_info(WORK_STREAM)
        assert info.config.duplicate_window == DEFAULT_DUPLICATE_WINDOW
        await ensure_work_stream(js, duplicate_window=2.0)  # the operator's, on upgrade
        assert (await js.stream_info(WORK_STREAM)).config.duplicate_window == 2.0
        # Within the window a re-published hand-out is dropped.
        subject = "editflow.work.ns-a.m"
        await js.publish(subject, b"1", headers={"Nats-Msg-Id": "ej-a1"})
        again = await js.publish(subject, b"1", headers={"Nats-Msg-Id": "ej-a1"})
        assert again.duplicate
        await ensure_work_stream(js)  # a worker never changes the operator's window
        assert (await js.stream_info(WORK_STREAM)).config.duplicate_window == 2.0
    finally:
        await js.delete_stream(WORK_STREAM)
        await nc.close()


def test_the_default_window_covers_the_deadline_and_the_pending_timeout() -> None:
    op = OperatorSettings(deadline_seconds=1800, pending_timeout_seconds=600)
    assert op.work_duplicate_window == 2400
    assert OperatorSettings(warm_duplicate_window_seconds=5).work_duplicate_window == 5
    assert isinstance(StreamConfig(duplicate_window=op.work_duplicate_window), StreamConfig)
