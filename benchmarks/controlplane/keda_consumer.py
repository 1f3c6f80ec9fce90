"""What each Job of the benchmark's KEDA ScaledJob runs: take one message, ack it, exit.

A ScaledJob is meant to be used this way (one Job per unit of work): KEDA's
NATS JetStream scaler counts the consumer's ``num_pending + num_ack_pending``
and creates Jobs until running Jobs match that lag, so each Job must remove
its message or KEDA would keep creating Jobs for the same backlog.

Environment: ``NATS_URL``, ``STREAM``, ``CONSUMER`` (a durable pull consumer
the benchmark created for this ScaledJob).
"""

from __future__ import annotations

import asyncio
import os
import sys

import nats
from nats.errors import TimeoutError as NatsTimeout


async def take_one(url: str, stream: str, consumer: str) -> bool:
    """Fetch and ack one message; False when none came (KEDA made one Job too many)."""
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=3)
    try:
        sub = await nc.jetstream().pull_subscribe_bind(consumer, stream)
        try:
            msgs = await sub.fetch(1, timeout=5)
        except NatsTimeout:
            return False
        for msg in msgs:
            await msg.ack_sync()
        return bool(msgs)
    finally:
        await nc.close()


def main() -> int:
    env = os.environ
    took = asyncio.run(take_one(env["NATS_URL"], env["STREAM"], env["CONSUMER"]))
    print("took one message" if took else "no message waiting", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
