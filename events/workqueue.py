"""The warm workers' JetStream work queue: one stream, one durable consumer per pool.

Both sides call these: the operator before it hands out the first attempt of a pool,
a worker before it pulls. Whoever comes first creates; the other finds them. The
consumer's bounds are the operator's to set (``ack_wait``: how long a silent worker
holds an edit before it goes to another; ``max_deliver``: one more than the deliveries
an edit may use, so the worker that receives the extra delivery can report the edit
as poison instead of JetStream silently stopping).
"""

from __future__ import annotations

from typing import Any

from editflow.events.worker_contract import WORK_STREAM, WORK_SUBJECT_PREFIX, work_consumer


async def ensure_work_stream(js: Any) -> None:
    """Create the work-queue stream if it is missing (idempotent)."""
    from nats.js.api import RetentionPolicy, StreamConfig
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(WORK_STREAM)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=WORK_STREAM,
                subjects=[f"{WORK_SUBJECT_PREFIX}.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                duplicate_window=600,
            )
        )


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
    js: Any, namespace: str, model: str, *, ack_wait: float, max_deliveries: int
) -> None:
    """The pool's durable consumer, created with these bounds when it does not exist."""
    from nats.js.errors import NotFoundError

    await ensure_work_stream(js)
    try:
        await js.consumer_info(WORK_STREAM, work_consumer(namespace, model))
    except NotFoundError:
        config = work_consumer_config(
            namespace, model, ack_wait=ack_wait, max_deliveries=max_deliveries
        )
        await js.add_consumer(WORK_STREAM, config=config)
