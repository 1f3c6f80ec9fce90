"""The health endpoint of a replica that waits for the Lease (a standby).

kopf serves the operator's ``/healthz`` only once kopf runs, and kopf runs only on the
leader. A standby still needs its liveness and readiness probes to pass, or the kubelet
would restart it forever and a rollout would never finish; so while it waits, this tiny
server answers on the same port. The operator closes it before kopf binds that port.

It is a few lines of asyncio rather than a web framework: two fixed answers, no routing,
and nothing the control plane's image does not already have.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Protocol


class ElectorView(Protocol):
    """What the endpoint reports (a :class:`~editflow.operator.leader.LeaderElector`)."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def leader_identity(self) -> str | None: ...


#: Longest request head we read; probes send a few hundred bytes.
MAX_HEAD = 8192
#: A client that sends no complete request within this many seconds is dropped.
READ_TIMEOUT = 5.0


@dataclass
class StandbyHealthServer:
    """A running endpoint; ``port`` is the bound one (useful with port 0)."""

    server: asyncio.Server
    port: int

    async def close(self) -> None:
        """Stop listening and wait until the port is free for kopf."""
        self.server.close()
        await self.server.wait_closed()


def _response(status: str, payload: dict[str, object]) -> bytes:
    body = json.dumps(payload).encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


async def serve_standby_health(
    port: int,
    elector: ElectorView,
    host: str = "0.0.0.0",  # noqa: S104 - a Pod's probe port
) -> StandbyHealthServer:
    """Answer ``GET /healthz`` with 200 and ``{"role", "leader"}``; anything else with 404."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            path = request_line[1].split("?", 1)[0] if len(request_line) >= 2 else ""
            if request_line[:1] == ["GET"] and path == "/healthz":
                role = "leader" if elector.is_leader else "standby"
                answer = _response("200 OK", {"role": role, "leader": elector.leader_identity})
            else:
                answer = _response("404 Not Found", {"error": "only GET /healthz is served"})
            writer.write(answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass  # a half request or a closed probe connection: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port, limit=MAX_HEAD, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    return StandbyHealthServer(server=server, port=bound)
