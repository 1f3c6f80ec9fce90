"""Startup, liveness and readiness probes, with the kubelet's timing and thresholds.

A :class:`ProbeTracker` belongs to one container *instance* (a restart gets a
new one) and holds the kubelet's rules:

- nothing runs before ``initialDelaySeconds``; each probe then runs every
  ``periodSeconds`` with ``timeoutSeconds``;
- the startup probe runs first and alone; liveness and readiness start once it
  has succeeded (``started``); without one a running container is started;
- ``successThreshold`` consecutive successes make a probe pass,
  ``failureThreshold`` consecutive failures make it fail;
- a failing startup or liveness probe asks for the container to be killed (the
  agent restarts it per ``restartPolicy``); a failing readiness probe only
  makes it not ready. Without a readiness probe a started container is ready.

Checks (:func:`check`): ``httpGet`` (2xx/3xx passes), ``tcpSocket`` (a
connection passes) and ``exec`` (exit 0 passes). For a container in its own
network namespace the socket is opened inside that namespace, so the probe
reaches the Pod's own ``127.0.0.1`` as the kubelet reaches the Pod's IP.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("startupProbe", "livenessProbe", "readinessProbe")

Connect = Callable[[int, float], socket.socket]
"""connect(port, timeout) -> a connected socket to the container's 127.0.0.1:port."""

Exec = Callable[[list[str], float], tuple[int, str]]
"""exec(command, timeout) -> (exit code, output) inside the container."""


@dataclass
class _Counter:
    due: float
    successes: int = 0
    failures: int = 0
    passed: bool = False
    failed: bool = False
    last_message: str = ""


@dataclass
class ProbeTracker:
    """Probe results of one running container instance."""

    spec: dict[str, Any]  # the container spec (probes, ports)
    started_mono: float = field(default_factory=time.monotonic)
    counters: dict[str, _Counter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind in KINDS:
            probe = self.spec.get(kind)
            if probe:
                delay = float(probe.get("initialDelaySeconds", 0))
                self.counters[kind] = _Counter(due=self.started_mono + delay)

    @property
    def started(self) -> bool:
        counter = self.counters.get("startupProbe")
        return counter is None or counter.passed

    @property
    def ready(self) -> bool:
        if not self.started:
            return False
        counter = self.counters.get("readinessProbe")
        return counter is None or (counter.passed and not counter.failed)

    def kill_reason(self) -> str | None:
        """Why the container must be restarted, in the kubelet's words, or None."""
        startup = self.counters.get("startupProbe")
        if startup is not None and startup.failed:
            return f"failed startup probe, will be restarted ({startup.last_message})"
        liveness = self.counters.get("livenessProbe")
        if liveness is not None and liveness.failed:
            return f"failed liveness probe, will be restarted ({liveness.last_message})"
        return None

    def due(self, now: float) -> list[str]:
        """The probes to run now (the startup probe alone until it passes)."""
        if not self.started:
            counter = self.counters["startupProbe"]
            return ["startupProbe"] if now >= counter.due and not counter.failed else []
        return [
            kind
            for kind in ("livenessProbe", "readinessProbe")
            if kind in self.counters and now >= self.counters[kind].due
        ]

    def record(self, kind: str, ok: bool, message: str, now: float) -> bool:
        """Count one result; True when the probe's verdict changed (status must be written)."""
        probe = self.spec[kind]
        counter = self.counters[kind]
        counter.due = now + float(probe.get("periodSeconds", 10))
        before = (counter.passed, counter.failed)
        if ok:
            counter.successes += 1
            counter.failures = 0
            if counter.successes >= int(probe.get("successThreshold", 1)):
                counter.passed, counter.failed = True, False
        else:
            counter.failures += 1
            counter.successes = 0
            counter.last_message = message
            if counter.failures >= int(probe.get("failureThreshold", 3)):
                counter.failed = True
                if kind == "readinessProbe":
                    counter.passed = False
        return (counter.passed, counter.failed) != before


def resolve_port(port: int | str, container: dict[str, Any]) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for item in container.get("ports") or []:
        if item.get("name") == port:
            return int(item["containerPort"])
    raise ValueError(f"probe port {port!r} is not a named port of container {container['name']}")


class _Connection(http.client.HTTPConnection):
    def __init__(self, sock: socket.socket, host: str, timeout: float) -> None:
        super().__init__(host, timeout=timeout)
        self._given = sock

    def connect(self) -> None:
        self.sock = self._given


def check(
    probe: dict[str, Any], container: dict[str, Any], connect: Connect, run: Exec
) -> tuple[bool, str]:
    """Run one probe once: (passed, message for the Unhealthy event)."""
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "exec" in probe:
            code, output = run(list(probe["exec"]["command"]), timeout)
            return code == 0, output.strip() or f"command exited with {code}"
        if "tcpSocket" in probe:
            port = resolve_port(probe["tcpSocket"]["port"], container)
            connect(port, timeout).close()
            return True, ""
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = resolve_port(get["port"], container)
            sock = connect(port, timeout)
            if get.get("scheme", "HTTP").upper() == "HTTPS":
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE  # the kubelet does not verify probe certificates
                sock = ctx.wrap_socket(sock)
            conn = _Connection(sock, f"127.0.0.1:{port}", timeout)
            headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
            headers.setdefault("User-Agent", "kube-probe/1.34")
            try:
                conn.request("GET", get.get("path", "/"), headers=headers)
                status = conn.getresponse().status
            finally:
                conn.close()
            if 200 <= status < 400:
                return True, ""
            return False, f"HTTP probe failed with statuscode: {status}"
        return False, f"unsupported probe handler {sorted(k for k in probe if k.islower())}"
    except subprocess.TimeoutExpired:
        return False, f"command timed out after {timeout:g}s"
    except (OSError, ValueError, http.client.HTTPException) as exc:  # timeouts are OSErrors
        return False, str(exc) or type(exc).__name__


def connector(netns: Path | None) -> Connect:
    """How probes reach the container's 127.0.0.1: inside its namespace, or on the host."""
    if netns is None:
        return lambda port, timeout: socket.create_connection(("127.0.0.1", port), timeout)
    from editflow.devstack.kubelet.netbridge import connect_in

    return lambda port, timeout: connect_in(netns, port, timeout)
