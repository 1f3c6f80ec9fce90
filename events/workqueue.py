"""The warm workers' JetStream work queue: one stream, one durable consumer per pool.

Only the operator calls these, before it starts a pool's first worker (a worker's NATS
identity may pull from its namespace's consumers and create nothing: issue 20 §2). The
consumer's bounds are the operator's to set (``ack_wait``: how long a silent worker
holds an edit before it goes to another; ``max_deliver``: one more than the deliveries
an edit may use, so the worker that receives the extra delivery can report the edit
as poison instead of JetStream silently stopping).
"""

from __future__ import annotations

from typing import Any

from editflow.events.worker_contract import WORK_STREAM, WORK_SUBJECT_PREFIX, work_consumer

#: The duplicate window of a stream created without one (tools and tests); the operator
#: always passes its own (``duplicate_window``), on every start, upgrades included.
DEFAULT_DUPLICATE_WINDOW = 600.0


async def ensure_work_stream(js: Any, *, duplicate_window: float | None = None) -> None:
    """Create the work-queue stream if it is missing (idempotent).

    ``duplicate_window`` (the operator's): a hand-out is published with its attempt as
    ``Nats-Msg-Id``, and JetStream drops a second publish of it only within this window. A
    new leader re-publishes running attempts, so the window must cover an attempt's whole
    life (deadline plus pending timeout, issue 20 §7); an existing stream with another
    window is updated to it.
    """
    from nats.js.api import RetentionPolicy, StreamConfig
    from nats.js.errors import NotFoundError

    try:
        info = await js.stream_info(WORK_STREAM)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=WORK_STREAM,
                subjects=[f"{WORK_SUBJECT_PREFIX}.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                duplicate_window=duplicate_window or DEFAULT_DUPLICATE_WINDOW,
            )
        )
        return
    current = info.config.duplicate_window or 0
    if duplicate_window is not None and abs(current - duplicate_window) > 0.001:
        info.config.duplicate_window = duplicate_window
        await js.update_stream(info.config)


def work_consumer_config(
    namespace: str, model: str, *, ack_wait: float, max_deliveries: int
) -> Any:
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    from editflow.events.worker_contract import work_subject

    return ConsumerConfig(
        durable_name=work_consumer(namespace, model),
        filter_subject=work_subject(namespace, model),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait,
        max_deliver=max_deliveries + 1,
        max_ack_pending=-1,
    )


async def ensure_work_consumer(
    js: Any,
    namespace: str,
    model: str,
    *,
    ack_wait: float,
    max_deliveries: int,
    duplicate_window: float | None = None,
) -> None:
    """The pool's durable consumer, created with these bounds when it does not exist."""
    from nats.js.errors import NotFoundError

    await ensure_work_stream(js, duplicate_window=duplicate_window)
    try:
        await js.consumer_info(WORK_STREAM, work_consumer(namespace, model))
    except NotFoundError:
        config = work_consumer_config(
            namespace, model, ack_wait=ack_wait, max_deliveries=max_deliveries
        )
        await js.add_consumer(WORK_STREAM, config=config)
