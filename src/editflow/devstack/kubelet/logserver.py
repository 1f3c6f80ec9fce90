"""The kubelet's HTTPS endpoint: ``/healthz`` and ``/containerLogs`` for ``kubectl logs``.

The apiserver proxies ``kubectl logs`` to the node's daemon endpoint with its
kubelet client certificate; this server accepts log requests only from
clients whose certificate the cluster CA signed (health needs none).
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

LogLocator = Callable[[str, str, str], tuple[Path, Callable[[], bool]] | None]
"""locate(namespace, pod, container) -> (log file, still_running) or None."""


def _tail(data: bytes, lines: int) -> bytes:
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:]) if lines >= 0 else data


def make_server(
    port: int,
    *,
    cert: Path,
    key: Path,
    client_ca: Path,
    locate: LogLocator,
    healthy: Callable[[], bool],
) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: object) -> None:
            return  # access logs would drown the agent's own log

        def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/healthz":
                ok = healthy()
                self._send(200 if ok else 503, b"ok" if ok else b"unhealthy")
                return
            parts = url.path.strip("/").split("/")
            if len(parts) != 4 or parts[0] != "containerLogs":
                self._send(404, b"not found")
                return
            if not self.connection.getpeercert():  # type: ignore[attr-defined]
                self._send(401, b"client certificate required")
                return
            found = locate(parts[1], parts[2], parts[3])
            if found is None:
                self._send(404, f"no logs for {parts[1]}/{parts[2]}/{parts[3]}".encode())
                return
            path, running = found
            query = parse_qs(url.query)
            tail = int(query.get("tailLines", ["-1"])[0])
            follow = query.get("follow", ["false"])[0] == "true"
            data = path.read_bytes() if path.exists() else b""
            if not follow:
                self._send(200, _tail(data, tail))
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(_tail(data, tail))
            offset = len(data)
            while running():
                time.sleep(0.2)
                with path.open("rb") as fh:
                    fh.seek(offset)
                    chunk = fh.read()
                if chunk:
                    offset += len(chunk)
                    self.wfile.write(chunk)
                    self.wfile.flush()
            with path.open("rb") as fh:
                fh.seek(offset)
                self.wfile.write(fh.read())

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(str(client_ca))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="kubelet-http", daemon=True).start()
    return server
