"""Logs a person can read under load: no line per HTTP request or per object at info.

The one logger setup (``editflow.core.logging.configure_logging``) is run in
this process, and real clients make real calls to a real gateway process:
the operator's Kubernetes client (httpx) and a plain httpx client. Their
request lines must not reach the log at INFO, and must at DEBUG (so the test
sees them when they are there).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from kubernetes import client as k8s_client

from editflow.core.logging import PER_REQUEST_LOGGERS, configure_logging
from editflow.devstack.stack import LocalStack
from editflow.operator.kube import AsyncKube
from tests.gateway.servers import GatewayServer, isolated_events, running_gateway

pytestmark = [pytest.mark.platform, pytest.mark.slow]

BURST = 25


@pytest.fixture(scope="module")
def gateway(nats_minio: LocalStack, tmp_path_factory) -> Iterator[GatewayServer]:
    env = isolated_events()  # with its own streams: no operator provisions them here
    with running_gateway(nats_minio, tmp_path_factory.mktemp("logs"), **env) as server:
        yield server


@pytest.fixture
def logging_setup() -> Iterator[None]:
    """Leave the process's logging as it was (the handler writes to pytest's captured stderr)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in PER_REQUEST_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, was in levels.items():
        logging.getLogger(name).setLevel(was)


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def burst(gateway: GatewayServer) -> None:
    """BURST calls through the operator's apiserver client and BURST through plain httpx."""
    configuration = k8s_client.Configuration()
    configuration.host = gateway.url  # any HTTP server answering JSON will do
    configuration.verify_ssl = False
    kube = AsyncKube(configuration)
    try:
        for _ in range(BURST):
            assert await kube.get("/healthz") == {"status": "ok"}
    finally:
        await kube.close()
    with httpx.Client(base_url=gateway.url) as http:
        for _ in range(BURST):
            assert http.get("/v1/info").status_code == 200


async def test_a_burst_of_client_calls_logs_no_request_lines(
    gateway: GatewayServer, logging_setup: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", "json")
    await burst(gateway)
    logging.getLogger("editflow.test").info("burst done")
    lines = records(capsys.readouterr().err)
    assert [r["msg"] for r in lines] == ["burst done"], lines[:5]

    configure_logging("DEBUG", "json")
    await burst(gateway)
    debug = records(capsys.readouterr().err)
    # The operator's client (aiohttp) says its own line per request; plain httpx says its own.
    kube_lines = [r for r in debug if r["logger"] == "editflow.operator.kube"]
    assert len(kube_lines) == BURST and kube_lines[0]["msg"] == "apiserver request"
    assert kube_lines[0]["method"] == "GET" and kube_lines[0]["path"] == "/healthz"
    httpx_lines = [r for r in debug if r["logger"] == "httpx"]
    assert len(httpx_lines) == BURST
    assert httpx_lines[0]["msg"].startswith("HTTP Request: GET")


def test_kopf_object_chatter_is_below_info_but_its_warnings_show(
    logging_setup: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", "json")
    kopf_objects = logging.getLogger("kopf.objects")
    kopf_objects.info("Handler 'editjob_event' succeeded.")
    logging.getLogger("kopf.activities.startup").info("Activity 'startup' succeeded.")
    kopf_objects.warning("Patching failed with inconsistencies")
    assert [r["msg"] for r in records(capsys.readouterr().err)] == [
        "Patching failed with inconsistencies"
    ]


def test_the_gateway_writes_no_access_log_line_per_request(gateway: GatewayServer) -> None:
    start = gateway.log_length()
    with httpx.Client(base_url=gateway.url, headers=gateway.auth) as http:
        for _ in range(BURST):
            assert http.get("/v1/edits/nothing-here").status_code == 404
    loggers = [r["logger"] for r in gateway.log_lines(start)]
    assert "uvicorn.access" not in loggers and len(loggers) < BURST, loggers
