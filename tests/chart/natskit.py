"""A nats-server run from the chart's own rendered configuration, and connections as its users.

Shared by the chart's role tests (``tests/chart/test_nats_roles.py``) and the tenant tests
(``tests/security/``): both start the server the chart would run (the bundled server's
ConfigMap, passwords from the chart's Secret through the environment variables it names),
so what they refuse is what a production install refuses.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS

from editflow.core.settings import NatsSettings
from editflow.devstack import installer
from editflow.devstack.procs import ManagedProcess, free_port, port_is_open, wait_until
from tests.chart.chartkit import NAMESPACE, documents, find, render_text


@dataclass
class Role:
    """A connection as one NATS user, with the errors the server sent it."""

    nc: NATS
    errors: list[str] = field(default_factory=list)

    @property
    def js(self) -> Any:
        return self.nc.jetstream(timeout=3)

    async def refused(self, what: str) -> bool:
        """Whether the server answered a permissions violation naming ``what``."""
        await self.nc.flush()
        for _ in range(50):
            # nats-py lower-cases the server's -ERR line.
            if any(
                "permissions violation" in e.lower() and what.lower() in e.lower()
                for e in self.errors
            ):
                return True
            await asyncio.sleep(0.1)
        return False


def secret_value(
    objs: list[dict[str, Any]], name: str, key: str, namespace: str = NAMESPACE
) -> str:
    return base64.b64decode(find(objs, "Secret", name, namespace)["data"][key]).decode()


def start_nats(
    tmp_path: Path, config: str, env: dict[str, str], files: dict[str, str]
) -> Iterator[str]:
    """Run ``config`` (the chart's ``nats.conf``, its ``files`` beside it) on free loopback
    ports; yields the URL and stops the server afterwards."""
    port, monitor = free_port(), free_port()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    conf = tmp_path / "nats.conf"
    conf.write_text(config.replace("port: 4222", f"listen: 127.0.0.1:{port}", 1).replace(
        "http_port: 8222", f"http: 127.0.0.1:{monitor}", 1
    ))  # fmt: skip
    proc = ManagedProcess(
        "nats-roles", [str(installer.binary("nats-server")), "-c", str(conf)],
        log_path=tmp_path / "nats.log", env=env,
    )  # fmt: skip
    proc.start()
    try:
        wait_until(
            lambda: proc.ensure_running() or port_is_open(port), timeout=15, what="nats-server"
        )
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.stop()


def bundled_server(tmp_path: Path, values: dict[str, Any]) -> Iterator[tuple[str, list[dict]]]:
    """The bundled NATS server as the chart renders it with ``values``: yields its URL and the
    rendered objects (for the passwords in the chart's Secrets)."""
    values = {**values, "nats": {**values.get("nats", {}), "bundled": {"enabled": True}}}
    objs = documents(render_text(tmp_path, values).stdout)
    data = find(objs, "ConfigMap", "editflow-nats-config", NAMESPACE)["data"]
    config = data["nats.conf"].replace("store_dir: /data", f"store_dir: {tmp_path / 'js'}")
    env = {"POD_NAME": "editflow-nats-0"}
    (nats_container,) = find(objs, "StatefulSet", "editflow-nats", NAMESPACE)["spec"]["template"][
        "spec"
    ]["containers"]
    for var in nats_container["env"]:
        ref = (var.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            env[var["name"]] = secret_value(objs, ref["name"], ref["key"])
    files = {"authorization.conf": data["authorization.conf"]}
    for url in start_nats(tmp_path, config, env, files):
        yield url, objs


async def connect_as(url: str, user: str, password: str) -> Role:
    """Connect as editflow does (events/connection.py): replies under the user's own inbox
    prefix, the only inboxes the chart lets a user subscribe to."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(
        url,
        user=user,
        password=password,
        error_cb=on_error,
        allow_reconnect=False,
        inbox_prefix=NatsSettings(user=user).effective_inbox_prefix,
    )
    return Role(nc, errors)
