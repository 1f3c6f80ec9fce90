"""A counting proxy in front of the apiserver: every request a client makes, recorded.

Scale is part of the operator's correctness: "a reconcile's cost does not grow
with the number of EditJobs" is only true if nobody lists the namespace on
the way. The proxy listens on plain HTTP on loopback, forwards each request
to the real kube-apiserver over TLS with the admin client certificate, streams
the answer back (watches included) and records (method, path, watch?) per
request. Point a client at :meth:`CountingProxy.write_kubeconfig` and count.
Tests and ``benchmarks/`` use it; nothing in the product does.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "upgrade",
        "host",
    }
)


@dataclass(frozen=True)
class Request:
    at: float
    method: str
    path: str
    watch: bool
    status: int
    body: bytes = b""  # the request body (first 2 KiB): tells whose write a PATCH was

    @property
    def is_list(self) -> bool:
        """A collection read that is not a watch (what must not happen per reconcile)."""
        return self.method == "GET" and not self.watch and parse_path(self.path)[2] is None


def parse_path(path: str) -> tuple[str | None, str | None, str | None, str | None]:
    """(namespace, plural, name, subresource) of a REST path; Nones where absent."""
    parts = path.strip("/").split("/")
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    namespace = None
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) != 2:
        namespace, rest = rest[1], rest[2:]
    plural = rest[0] if rest else None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    return namespace, plural, name, sub


class CountingProxy:
    """Plain-HTTP loopback proxy to ``upstream`` (https) with a client certificate."""

    def __init__(self, upstream: str, context: ssl.SSLContext) -> None:
        self.upstream = upstream.rstrip("/")
        self.context = context
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- counting ------------------------------------------------------------------
    def since(self, moment: float) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.at >= moment]

    def summary(self, moment: float = 0.0) -> Counter[str]:
        """``"GET /apis/..."``-style counts, with object names collapsed to ``{name}``."""
        counts: Counter[str] = Counter()
        for r in self.since(moment):
            kind = "WATCH" if r.watch else ("LIST" if r.is_list else r.method)
            counts[f"{kind} {_shape(r.path)}"] += 1
        return counts

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> CountingProxy:
        self._thread = threading.Thread(target=self._serve, name="counting-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the counting proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> CountingProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "proxy", "cluster": {"server": self.url}}],
            "users": [{"name": "proxy", "user": {}}],
            "contexts": [
                {
                    "name": "proxy",
                    "context": {"cluster": "proxy", "user": "proxy", "namespace": namespace},
                }
            ],
            "current-context": "proxy",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # -- serving -------------------------------------------------------------------
    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        session_holder: dict[str, aiohttp.ClientSession] = {}

        async def setup() -> None:
            connector = aiohttp.TCPConnector(ssl=self.context, limit=0)
            session_holder["s"] = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)
            )
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handler(session_holder))
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self._ready.set()

        loop.run_until_complete(setup())
        try:
            loop.run_forever()
        finally:

            async def teardown() -> None:
                await session_holder["s"].close()
                if self._runner is not None:
                    await self._runner.cleanup()
                # Watches still streaming when the proxy stops: end their handlers here, or
                # closing the loop prints "Task was destroyed but it is pending!" for each.
                rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in rest:
                    task.cancel()
                await asyncio.gather(*rest, return_exceptions=True)

            loop.run_until_complete(teardown())
            loop.close()

    def _handler(self, holder: dict[str, aiohttp.ClientSession]):  # noqa: ANN202
        async def handle(request: web.Request) -> web.StreamResponse:
            session = holder["s"]
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
            watch = request.query.get("watch") in ("true", "1")
            url = self.upstream + request.path_qs
            async with session.request(
                request.method, url, data=body or None, headers=headers
            ) as upstream:
                self._record(request.method, request.path, watch, upstream.status, body)
                response = web.StreamResponse(status=upstream.status)
                for key, value in upstream.headers.items():
                    if key.lower() not in HOP_BY_HOP:
                        response.headers[key] = value
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response

        return handle

    def _record(self, method: str, path: str, watch: bool, status: int, body: bytes) -> None:
        request = Request(time.monotonic(), method, path, watch, status, body[:2048])
        with self._lock:
            self.requests.append(request)


def _shape(path: str) -> str:
    """``plural`` / ``plural/{name}`` / ``plural/{name}/sub``: names collapsed for counting."""
    _, plural, name, sub = parse_path(path)
    shape = str(plural)
    if name is not None:
        shape += "/{name}"
    if sub is not None:
        shape += f"/{sub}"
    return shape
