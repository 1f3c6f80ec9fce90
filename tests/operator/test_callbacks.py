"""HTTPS callbacks are signed, carry the completion id, are retried until accepted, and are
not a way in: the SSRF guard refuses loopback/private/metadata targets unless allow-listed,
pins the connection to the checked address, and never follows a redirect.

The receivers are real HTTPS servers on loopback, so every test that expects a delivery
allow-lists loopback explicitly (``LOOPBACK``); DNS answers are simulated through the
guard's resolver seam (the sandbox has no DNS), never by patching httpx.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import SecretStr

from editflow.core.settings import OperatorSettings
from editflow.core.urlguard import IPAddress, LookupFailed
from editflow.devstack.pki import LocalCA
from editflow.operator import metrics
from editflow.operator.callbacks import deliver_callback, webhook_guard, webhook_refusal

#: The test receivers listen on loopback: deliveries to them must be allow-listed.
LOOPBACK = ["127.0.0.1/32"]


def https_receiver(
    tmp_path: Path,
    answers: list[int],
    *,
    dns_names: tuple[str, ...] = (),
    redirect_to: str | None = None,
) -> tuple[str, Path, list[dict]]:
    ca = LocalCA(tmp_path / "pki")
    pair = ca.issue(
        "server",
        common_name=dns_names[0] if dns_names else "localhost",
        dns_names=dns_names,
        ip_addresses=() if dns_names else ("127.0.0.1",),
        server=True,
    )
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append({"headers": dict(self.headers), "body": body})
            code = answers.pop(0) if answers else 200
            self.send_response(code)
            if redirect_to is not None:
                self.send_header("Location", redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"https://127.0.0.1:{server.server_address[1]}/hook", ca.cert_path, seen


async def test_a_callback_is_signed_and_sent_once_per_call(tmp_path: Path) -> None:
    """One POST per call: retrying is the outbox's policy alone (Deliverer, with its backoff
    kept in the outbox object), so a refusal by the receiver is one request, not a burst."""
    url, ca, seen = https_receiver(tmp_path, answers=[503])
    settings = OperatorSettings(
        callback_signing_key=SecretStr("k3y"),
        callback_ca_file=str(ca),
        callback_allow_cidrs=LOOPBACK,
        callback_max_attempts=5,
    )
    body = b'{"type":"io.editflow.completion.v1"}'
    assert not await deliver_callback(url, body, "evt-1", settings)
    assert len(seen) == 1
    assert await deliver_callback(url, body, "evt-1", settings)
    assert len(seen) == 2
    expected = "v1=" + hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
    for request in seen:
        assert request["body"] == body
        assert request["headers"]["X-Editflow-Signature"] == expected
        assert request["headers"]["Idempotency-Key"] == "evt-1"


async def test_an_untrusted_certificate_is_never_accepted(tmp_path: Path) -> None:
    url, _, seen = https_receiver(tmp_path, answers=[])
    settings = OperatorSettings(callback_allow_cidrs=LOOPBACK)
    assert not await deliver_callback(url, b"{}", "evt-3", settings)
    assert seen == []


async def test_a_timeout_pages_the_alert_webhook_from_the_outbox_in_the_chat_robot_format(
    tmp_path: Path, stack
) -> None:
    """The alert goes into the outbox (a real EditOutcome), the deliverer POSTs it once,
    retrying a refusal by the receiver with backoff, then removes it."""
    import asyncio
    import json
    from datetime import UTC, datetime

    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    from editflow.core.settings import Settings
    from editflow.devstack import localmode
    from editflow.devstack.kubeapi import KubeClient
    from editflow.operator.decide import Decision
    from editflow.operator.informer import Store
    from editflow.operator.kube import AsyncKube
    from editflow.operator.outbox import Deliverer, Outbox

    api = KubeClient(stack.kubeconfig)
    localmode.install_crd(api)
    api.post("/api/v1/namespaces", {"metadata": {"name": "outbox-alerts"}})
    url, ca, seen = https_receiver(tmp_path, answers=[503])
    settings = Settings()
    settings.operator.alert_webhook_url = url
    settings.operator.callback_ca_file = str(ca)
    settings.operator.callback_allow_cidrs = LOOPBACK
    settings.operator.callback_backoff_seconds = 0.0
    cfg = k8s_client.Configuration()
    k8s_config.load_kube_config(config_file=str(stack.kubeconfig), client_configuration=cfg)
    kube = AsyncKube(cfg)
    store = Store()
    outbox = Outbox(settings.operator, kube, store=store, now=lambda: datetime.now(UTC))
    deliverer = Deliverer(settings.operator, kube, outbox, nats=None, topology=None)  # type: ignore[arg-type]
    editjob = {
        "metadata": {"namespace": "outbox-alerts", "name": "ej-1", "uid": "u1"},
        "status": {},
    }
    decision = Decision(
        status={
            "phase": "Queued",
            "errorCode": "timeout",
            "attempts": 1,
            "message": "the edit did not finish within 1800s",
        }
    )
    try:
        outbox.alert_if_needed(editjob, decision)
        outbox.alert_if_needed(editjob, Decision(status={"phase": "Running"}))  # no alert
        await asyncio.gather(*list(outbox._alerts))
        assert len(store) == 1, "one alert in the outbox"
        for _ in range(2):  # refused with 503 once, then accepted
            (item,) = store.items.values()
            await deliverer.deliver(item)
        assert len(store) == 0
        listed = api.get("/apis/editflow.io/v1alpha1/namespaces/outbox-alerts/editoutcomes")
        assert listed["items"] == [], "a delivered outcome leaves the outbox"
        assert len(seen) == 2
        body = json.loads(seen[-1]["body"])
        assert body["msgtype"] == "text" and "outbox-alerts/ej-1" in body["text"]["content"]
        assert body["reason"] == "timeout"
    finally:
        await kube.close()
        api.delete("/api/v1/namespaces/outbox-alerts")
        api.close()


# -- callbacks are not a way in -----------------------------------------------------------


def refused_count() -> float:
    return metrics.CALLBACKS.labels("refused")._value.get()


async def test_a_loopback_callback_is_refused_unless_allow_listed(tmp_path: Path) -> None:
    url, ca, seen = https_receiver(tmp_path, answers=[])
    settings = OperatorSettings(callback_ca_file=str(ca))
    before = refused_count()
    assert not await deliver_callback(url, b"{}", "evt-loop", settings)
    assert seen == []  # not one byte reached the receiver
    assert refused_count() == before + 1
    # The same receiver, allow-listed on purpose, gets it.
    settings.callback_allow_cidrs = LOOPBACK
    assert await deliver_callback(url, b"{}", "evt-loop", settings)
    assert len(seen) == 1


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/latest/meta-data/",  # cloud metadata
        "https://10.0.0.5/hook",  # private
        "https://[::ffff:127.0.0.1]/hook",  # loopback in IPv6 clothing
        "https://[fd00::1]/hook",  # unique local
        "https://100.64.0.1/hook",  # CGNAT
    ],
)
async def test_private_and_metadata_callbacks_are_refused(url: str, caplog) -> None:
    settings = OperatorSettings()
    before = refused_count()
    with caplog.at_level(logging.WARNING, "editflow.operator.callbacks"):
        assert not await deliver_callback(url, b"{}", "evt-priv", settings)
    assert refused_count() == before + 1
    (line,) = [r for r in caplog.records if "refused" in r.getMessage()]
    assert "spec.callback.webhookUrl" in line.getMessage()


async def test_a_name_that_resolves_to_loopback_is_refused(tmp_path: Path) -> None:
    url, ca, seen = https_receiver(tmp_path, answers=[], dns_names=("hook.oa.test",))
    port = url.rsplit(":", 1)[1].split("/")[0]

    async def resolve(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]

    settings = OperatorSettings(callback_ca_file=str(ca))
    guard = webhook_guard(settings, resolve=resolve)
    assert not await deliver_callback(
        f"https://hook.oa.test:{port}/hook", b"{}", "evt-name", settings, guard=guard
    )
    assert seen == []


async def test_the_connection_is_pinned_to_the_checked_address(tmp_path: Path) -> None:
    """DNS rebinding: an attempt connects to the address its check resolved, and the receiver
    sees the name in Host and TLS (its certificate names only hook.oa.test); the next
    attempt is checked afresh, so a name that moved to the metadata address is refused."""
    url, ca, seen = https_receiver(tmp_path, answers=[503], dns_names=("hook.oa.test",))
    port = url.rsplit(":", 1)[1].split("/")[0]
    answers = [["127.0.0.1"], ["169.254.169.254"]]
    lookups: list[str] = []

    async def rebinding(host: str, port: int) -> list[IPAddress]:
        lookups.append(host)
        return [ipaddress.ip_address(a) for a in answers.pop(0)]

    settings = OperatorSettings(
        callback_ca_file=str(ca),
        callback_allow_cidrs=LOOPBACK,
        dns_cache_seconds=0,  # no cache: every attempt resolves again
    )
    guard = webhook_guard(settings, resolve=rebinding)
    target = f"https://hook.oa.test:{port}/hook"
    assert not await deliver_callback(target, b"{}", "evt-pin", settings, guard=guard)  # 503
    assert lookups == ["hook.oa.test"] and len(seen) == 1
    assert {r["headers"]["Host"] for r in seen} == {f"hook.oa.test:{port}"}
    before = refused_count()
    assert not await deliver_callback(target, b"{}", "evt-pin", settings, guard=guard)
    assert len(seen) == 1 and refused_count() == before + 1  # moved to metadata: refused


async def test_a_temporary_dns_failure_is_a_failure_to_retry_not_a_refusal(tmp_path: Path) -> None:
    url, ca, seen = https_receiver(tmp_path, answers=[], dns_names=("hook.oa.test",))
    port = url.rsplit(":", 1)[1].split("/")[0]
    failures = [LookupFailed("SERVFAIL (simulated)")]

    async def flaky(host: str, port: int) -> list[IPAddress]:
        if failures:
            raise failures.pop()
        return [ipaddress.ip_address("127.0.0.1")]

    settings = OperatorSettings(
        callback_ca_file=str(ca), callback_allow_cidrs=LOOPBACK, dns_cache_seconds=0
    )
    guard = webhook_guard(settings, resolve=flaky)
    target = f"https://hook.oa.test:{port}/hook"
    before = refused_count()
    assert not await deliver_callback(target, b"{}", "evt-dns", settings, guard=guard)
    assert refused_count() == before and seen == []
    assert await deliver_callback(target, b"{}", "evt-dns", settings, guard=guard)
    assert len(seen) == 1


def plain_receiver(host: str) -> tuple[str, list[str], ThreadingHTTPServer]:
    """An http server on ``host`` that records every request it gets."""
    got: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return

        def do_POST(self) -> None:
            got.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST

    server = ThreadingHTTPServer((host, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://{host}:{server.server_address[1]}/stolen", got, server


async def test_a_redirect_to_a_refused_address_is_not_followed(tmp_path: Path) -> None:
    inner, got, server = plain_receiver("127.0.0.2")  # loopback, not allow-listed
    try:
        url, ca, seen = https_receiver(tmp_path, answers=[302], redirect_to=inner)
        settings = OperatorSettings(
            callback_ca_file=str(ca),
            callback_allow_cidrs=LOOPBACK,  # 127.0.0.1 only
        )
        assert not await deliver_callback(url, b"{}", "evt-redirect", settings)
        assert len(seen) == 1  # the allowed receiver was asked...
        assert got == []  # ...and the address it pointed at never
    finally:
        server.shutdown()
        server.server_close()


async def test_the_alert_webhook_goes_through_the_same_guard(tmp_path: Path, caplog) -> None:
    from editflow.core.settings import Settings
    from editflow.operator.callbacks import deliver_callback
    from editflow.operator.decide import Decision
    from editflow.operator.outcomes import alert_if_needed_body

    url, ca, seen = https_receiver(tmp_path, answers=[])
    settings = Settings()
    settings.operator.alert_webhook_url = url
    settings.operator.callback_ca_file = str(ca)  # trusted, but loopback is not allow-listed
    editjob = {"metadata": {"namespace": "edits", "name": "ej-2", "uid": "u2"}, "status": {}}
    alert = alert_if_needed_body(editjob, Decision(status={"phase": "NeedsReview", "attempts": 3}))
    assert alert is not None
    key, body = alert
    with caplog.at_level(logging.WARNING, "editflow.operator.callbacks"):
        delivered = await deliver_callback(
            url, body, key, settings.operator, content_type="application/json"
        )
    assert delivered is False and seen == []
    assert any("operator.alert_webhook_url" in r.getMessage() for r in caplog.records)


async def test_a_caller_that_retries_itself_can_tell_a_refusal_from_a_failure() -> None:
    settings = OperatorSettings(alert_webhook_url="https://169.254.169.254/robot")
    refusal = await webhook_refusal("https://10.0.0.5/hook", settings)
    assert refusal is not None and refusal.field == "spec.callback.webhookUrl"
    alert = await webhook_refusal("https://169.254.169.254/robot", settings)
    assert alert is not None and alert.field == "operator.alert_webhook_url"
    assert await webhook_refusal("https://93.184.215.14/hook", settings) is None
