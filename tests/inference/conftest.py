"""Fixtures for the worker: tiny models (built once), a loopback image server, settings.

The image server listens on 127.0.0.1 only; tests that fetch from it
allow-list exactly that address, the way an operator would allow-list an
internal image host. Nothing here sends traffic to a non-loopback address.
"""

from __future__ import annotations

import io
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from editflow.core.settings import S3Settings, Settings, WorkerSettings
from editflow.devstack.stack import LocalStack


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/<model>`` for every listed model, saved with ``save_pretrained``."""
    from editflow.inference.registry import REGISTRY
    from editflow.inference.tiny import TINY_BUILDERS, save_tiny_model

    root = tmp_path_factory.mktemp("models")
    built: dict[object, Path] = {}
    for name in REGISTRY:
        builder = TINY_BUILDERS[name]
        if builder in built:  # same pipeline class and builder (the Turbo preset): copy
            shutil.copytree(built[builder], root / name)
            continue
        built[builder] = save_tiny_model(name, root / name)
    return root


def png_bytes(
    size: tuple[int, int] = (96, 64), color: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    chunked: bool = False


@dataclass
class ImageServer:
    """A loopback HTTP server whose routes tests set; it records each request's Host header."""

    port: int
    routes: dict[str, Route]
    seen: list[tuple[str, str | None]]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    routes: dict[str, Route] = {}
    seen: list[tuple[str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Host")))
            route = routes.get(self.path, Route(b"not found", 404))
            if route.delay:
                time.sleep(route.delay)
            self.send_response(route.status)
            for name, value in route.headers.items():
                self.send_header(name, value)
            if route.chunked:
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                for start in range(0, len(route.body), 4096):
                    piece = route.body[start : start + 4096]
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
                return
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            self.wfile.write(route.body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ImageServer(server.server_address[1], routes, seen)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def s3(stack: LocalStack) -> S3Settings:
    """The session platform's MinIO (``stack`` from ``tests/conftest.py``)."""
    return stack.s3_settings()


@pytest.fixture(scope="session")
def nats_url(stack: LocalStack) -> str:
    """The session platform's NATS JetStream."""
    return stack.nats_url


@pytest.fixture
def worker_settings(s3: S3Settings, tiny_models_root: Path, tmp_path: Path) -> Settings:
    """Settings a worker in a Job would read, pointed at the session's MinIO and tiny models."""
    return Settings(
        s3=s3,
        worker=WorkerSettings(
            models_root=str(tiny_models_root),
            cache_dir=str(tmp_path / "cache"),
            device="cpu",
            allow_cidrs=["127.0.0.1/32"],
            termination_log=str(tmp_path / "termination-log"),
        ),
    )


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a Job's container would get, for ``editflow worker`` subprocesses."""
    import json
    import os

    s3, worker = settings.s3, settings.worker
    env = {key: value for key, value in os.environ.items() if not key.startswith("EDITFLOW_")}
    env.update(
        EDITFLOW_S3__ENDPOINT=s3.endpoint,
        EDITFLOW_S3__ACCESS_KEY=s3.access_key.get_secret_value(),
        EDITFLOW_S3__SECRET_KEY=s3.secret_key.get_secret_value(),
        EDITFLOW_S3__BUCKET=s3.bucket,
        EDITFLOW_WORKER__MODELS_ROOT=worker.models_root,
        EDITFLOW_WORKER__CACHE_DIR=worker.cache_dir,
        EDITFLOW_WORKER__DEVICE="cpu",
        EDITFLOW_WORKER__ALLOW_CIDRS=json.dumps(worker.allow_cidrs),
        EDITFLOW_LOG_FORMAT="json",
    )
    env.update(extra)
    return env
