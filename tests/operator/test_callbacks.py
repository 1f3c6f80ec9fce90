"""HTTPS callbacks are signed, carry the completion id, and are retried until accepted."""

from __future__ import annotations

import hashlib
import hmac
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pydantic import SecretStr

from editflow.core.settings import OperatorSettings
from editflow.devstack.pki import LocalCA
from editflow.operator.callbacks import deliver_callback


def https_receiver(tmp_path: Path, answers: list[int]) -> tuple[str, Path, list[dict]]:
    ca = LocalCA(tmp_path / "pki")
    pair = ca.issue("server", common_name="localhost", ip_addresses=("127.0.0.1",), server=True)
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append({"headers": dict(self.headers), "body": body})
            code = answers.pop(0) if answers else 200
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"https://127.0.0.1:{server.server_address[1]}/hook", ca.cert_path, seen


async def test_a_callback_is_signed_and_retried_until_accepted(tmp_path: Path) -> None:
    url, ca, seen = https_receiver(tmp_path, answers=[503, 500])
    settings = OperatorSettings(
        callback_signing_key=SecretStr("k3y"),
        callback_ca_file=str(ca),
        callback_backoff_seconds=0,
        callback_max_attempts=5,
    )
    body = b'{"type":"io.editflow.completion.v1"}'
    assert await deliver_callback(url, body, "evt-1", settings)
    assert len(seen) == 3  # two failures, then accepted
    expected = "v1=" + hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
    for request in seen:
        assert request["body"] == body
        assert request["headers"]["X-Editflow-Signature"] == expected
        assert request["headers"]["Idempotency-Key"] == "evt-1"


async def test_a_callback_gives_up_after_its_attempts(tmp_path: Path) -> None:
    url, ca, seen = https_receiver(tmp_path, answers=[500] * 10)
    settings = OperatorSettings(
        callback_ca_file=str(ca), callback_backoff_seconds=0, callback_max_attempts=3
    )
    assert not await deliver_callback(url, b"{}", "evt-2", settings)
    assert len(seen) == 3


async def test_an_untrusted_certificate_is_never_accepted(tmp_path: Path) -> None:
    url, _, seen = https_receiver(tmp_path, answers=[])
    settings = OperatorSettings(callback_backoff_seconds=0, callback_max_attempts=2)
    assert not await deliver_callback(url, b"{}", "evt-3", settings)
    assert seen == []


async def test_a_timeout_pages_the_alert_webhook_in_the_chat_robot_format(tmp_path: Path) -> None:
    import asyncio
    import json

    from editflow.core.settings import Settings
    from editflow.operator.decide import Decision
    from editflow.operator.reconciler import Reconciler

    url, ca, seen = https_receiver(tmp_path, answers=[])
    settings = Settings()
    settings.operator.alert_webhook_url = url
    settings.operator.callback_ca_file = str(ca)
    reconciler = Reconciler(settings, kube=None, nats=None, topology=None, s3=None)  # type: ignore[arg-type]
    editjob = {"metadata": {"namespace": "edits", "name": "ej-1", "uid": "u1"}, "status": {}}
    decision = Decision(
        status={
            "phase": "Queued",
            "errorCode": "timeout",
            "attempts": 1,
            "message": "the edit did not finish within 1800s",
        }
    )
    reconciler.alert_if_needed(editjob, decision)
    reconciler.alert_if_needed(editjob, Decision(status={"phase": "Running"}))  # no alert
    await asyncio.gather(*list(reconciler._callbacks.values()))
    assert len(seen) == 1
    body = json.loads(seen[0]["body"])
    assert body["msgtype"] == "text" and "edits/ej-1" in body["text"]["content"]
    assert body["reason"] == "timeout"
