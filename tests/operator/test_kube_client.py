"""The operator's apiserver client on the wire, against a bare loopback HTTP server: what
reaches the server, and what a dropped connection looks like to the retry paths (the real
apiserver's answers are covered by every platform test)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import pytest
from kubernetes import client as k8s_client

from editflow.operator.kube import AsyncKube, KubeAPIError
from editflow.operator.leader import TRANSIENT

Handler = Callable[[bytes], bytes | None]


async def _serve(handler: Handler) -> tuple[asyncio.Server, AsyncKube]:
    """A server that reads one request head (and its body) per connection and writes what
    ``handler`` returns for it, or closes the connection without a word for ``None``."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + (await reader.readexactly(length) if length else b"")
                answer = handler(request)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    configuration = k8s_client.Configuration(host=f"http://127.0.0.1:{port}")
    return server, AsyncKube(configuration)


def _json(status: int, body: dict) -> bytes:
    raw = json.dumps(body).encode()
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(raw)}\r\n\r\n"
    ).encode() + raw


@pytest.fixture
async def echo() -> AsyncIterator[tuple[AsyncKube, list[bytes]]]:
    seen: list[bytes] = []

    def handler(request: bytes) -> bytes:
        seen.append(request)
        if b" /missing" in request.split(b"\r\n")[0]:
            return _json(404, {"reason": "NotFound", "message": "nothing here"})
        if b" /conflict" in request.split(b"\r\n")[0]:
            return _json(409, {"reason": "AlreadyExists", "message": "taken"})
        return _json(200, {"kind": "Thing", "n": len(seen)})

    server, kube = await _serve(handler)
    yield kube, seen
    await kube.close()
    server.close()


async def test_requests_carry_their_query_body_and_type_and_answers_are_json(
    echo: tuple[AsyncKube, list[bytes]],
) -> None:
    kube, seen = echo
    assert await kube.get("/apis/x/v1/things", watch=False, labelSelector="a=b,c!=d") == {
        "kind": "Thing",
        "n": 1,
    }
    line = seen[0].split(b"\r\n")[0].decode()
    assert line.startswith("GET /apis/x/v1/things?")
    assert "watch=false" in line and "labelSelector=a%3Db,c!%3Dd" in line.replace("%2C", ",")

    await kube.patch("/apis/x/v1/things/t", {"status": {"phase": "Running"}})
    head, _, body = seen[1].partition(b"\r\n\r\n")
    assert head.startswith(b"PATCH /apis/x/v1/things/t HTTP/1.1")
    assert b"content-type: application/merge-patch+json" in head.lower()
    assert json.loads(body) == {"status": {"phase": "Running"}}

    assert await kube.get("/missing") is None
    with pytest.raises(KubeAPIError, match="409 AlreadyExists: taken"):
        await kube.create("/conflict", {"metadata": {"name": "t"}})
    # One kept connection served them all.
    assert len(seen) == 4


async def test_a_dropped_connection_is_an_oserror_every_retry_path_knows() -> None:
    server, kube = await _serve(lambda request: None)
    try:
        with pytest.raises(OSError) as caught:
            await kube.get("/api")
        assert isinstance(caught.value, TRANSIENT)
        assert "apiserver GET /api" in str(caught.value)
    finally:
        await kube.close()
        server.close()
    # Nobody listening: the same kind of error.
    with pytest.raises(OSError):
        await kube.get("/api")
    await kube.close()
