"""What the KEDA peer's warm Deployment runs: a long-lived worker taking approvals one by one.

The warm-mode counterpart of :mod:`controlplane.keda_consumer` (one Job per message). KEDA
scales the Deployment that runs this from zero on its consumer's lag (a ScaledObject), and
the worker then stays up and pulls: this is how KEDA users run a queue of GPU work on warm
Pods. A message counts as *handed out* the moment this worker has fetched it; the worker
says so on ``HANDED_SUBJECT`` (core NATS, carrying the message's ``Nats-Msg-Id``, which
the OA SDK sets to the event id) and acks it. It does no work: what is timed is the path
from the event to a worker, as in editflow's warm-mode phase.

Environment: ``NATS_URL``, ``STREAM``, ``CONSUMER`` (a durable pull consumer the benchmark
created), ``HANDED_SUBJECT``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import nats
from nats.errors import TimeoutError as NatsTimeout


async def serve(url: str, stream: str, consumer: str, handed_subject: str) -> None:
    """Fetch one message at a time (a long poll: it returns the moment one arrives)."""
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=-1)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        sub = await nc.jetstream().pull_subscribe_bind(consumer, stream)
        print(f"pulling from {stream}/{consumer}", flush=True)
        while not stop.is_set():
            try:
                msgs = await sub.fetch(1, timeout=1)
            except NatsTimeout:
                continue
            for msg in msgs:
                event_id = (msg.headers or {}).get("Nats-Msg-Id", "")
                await nc.publish(handed_subject, event_id.encode())
                await msg.ack()
    finally:
        await nc.close()  # not drain(): it would wait out an open long poll


def main() -> int:
    env = os.environ
    asyncio.run(serve(env["NATS_URL"], env["STREAM"], env["CONSUMER"], env["HANDED_SUBJECT"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
