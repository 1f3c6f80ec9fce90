"""Shared fixtures for end-to-end tests: editflow installed on the real local platform.

CRD, Secrets and ConfigMap as the chart creates them (:mod:`editflow.devstack.localmode`),
a tiny LongCat model on the models PVC, a local image server, and ``editflow operator run``
as a process."""

from __future__ import annotations

import asyncio
import io
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from editflow.core.settings import EventsSettings, NatsSettings, OperatorSettings, Settings
from editflow.devstack import localmode
from editflow.devstack.kubeapi import KubeClient
from editflow.devstack.procs import wait_until
from editflow.devstack.stack import LocalStack
from editflow.events.models import Person
from editflow.events.sdk import OAClient
from editflow.operator.crd import editjob_path
from tests import hygiene

NAMESPACE = localmode.NAMESPACE


@dataclass
class Gate:
    """An image URL whose response waits until the test opens the gate (a long edit)."""

    released: threading.Event = field(default_factory=threading.Event)


class ImageHost:
    def __init__(self) -> None:
        buf = io.BytesIO()
        Image.new("RGB", (96, 64), (200, 30, 30)).save(buf, format="PNG")
        self.png = buf.getvalue()
        self.gates: dict[str, Gate] = {}
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_GET(self) -> None:
                name = self.path.strip("/")
                if name.startswith("gate-"):
                    host.gates.setdefault(name, Gate()).released.wait(timeout=120)
                    name = "red.png"
                if name == "red.png":
                    body, ctype = host.png, "image/png"
                elif name == "notes.txt":
                    body, ctype = b"this is not an image", "text/plain"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def gate(self) -> tuple[str, Gate]:
        name = f"gate-{uuid.uuid4().hex[:8]}"
        gate = self.gates.setdefault(name, Gate())
        return self.url(name), gate

    def close(self) -> None:
        for gate in self.gates.values():
            gate.released.set()
        self.server.shutdown()


@pytest.fixture(scope="session")
def image_host() -> Iterator[ImageHost]:
    host = ImageHost()
    yield host
    host.close()


@pytest.fixture(scope="session")
def tiny_model_root(stack: LocalStack) -> Path:
    """The tiny model goes where the process kubelet maps the models PVC, as on a cluster
    where the weights live on a PersistentVolume mounted read-only at /models."""
    root = localmode.models_dir(stack, NAMESPACE)
    localmode.build_tiny_model(root)
    return root


class OperatorHarness(localmode.OperatorProcess):
    """The operator process plus the reads tests make about EditJobs."""

    def __init__(self, stack: LocalStack, api: KubeClient, env: dict[str, str], workdir: Path):
        super().__init__(env, workdir)
        self.stack = stack
        self.api = api

    def editjob(self, name: str) -> dict:
        return self.api.get(editjob_path(NAMESPACE, name))

    def wait_phase(self, name: str, *phases: str, timeout: float = 120) -> dict:
        seen: dict = {}

        def reached() -> bool:
            ej = self.editjob(name)
            seen.update(ej)
            return (ej.get("status") or {}).get("phase") in phases

        try:
            wait_until(reached, timeout=timeout, what=f"editjob {name} to reach {phases}")
        except TimeoutError as exc:
            raise AssertionError(
                f"{exc}; status={seen.get('status')}\noperator log:\n{self.log_tail()}"
            ) from None
        return seen

    def wait_completed(self, name: str, timeout: float = 120) -> dict:
        """Until the outcome's completion event was published and recorded in status."""
        seen: dict = {}

        def recorded() -> bool:
            seen.update(self.editjob(name))
            status = seen.get("status") or {}
            # The outcome is written with the phase, its delivery recorded after (delivery.py).
            return bool(status.get("completionEventId") and status.get("completionPublishedAt"))

        wait_until(recorded, timeout=timeout, what=f"editjob {name} to record its completion")
        return seen


@pytest.fixture(scope="session")
def operator(
    stack: LocalStack, tiny_model_root: Path, tmp_path_factory
) -> Iterator[OperatorHarness]:
    api = KubeClient(stack.kubeconfig)
    localmode.install_crd(api)
    localmode.install_namespace(api, stack, NAMESPACE)
    env = localmode.operator_env(
        stack,
        NAMESPACE,
        resync_seconds="2",
        backoff_seconds="1",
        max_running_per_namespace="1",
    )
    env["EDITFLOW_EVENTS__ACK_WAIT_SECONDS"] = "10"
    harness = OperatorHarness(stack, api, env, tmp_path_factory.mktemp("operator"))
    harness.start()
    hygiene.SESSION.owned.append(harness)  # the session's operator: it may outlive modules
    yield harness
    hygiene.SESSION.owned.remove(harness)
    harness.stop()
    api.close()


def stored_completions(nats_url: str, events: EventsSettings) -> list[dict]:
    """Every completion CloudEvent on the completions stream (a throw-away consumer reads it;
    the progress and selection events the stream also holds are left out)."""
    import asyncio
    import json

    import nats

    async def read() -> list[dict]:
        nc = await nats.connect(nats_url)
        try:
            sub = await nc.jetstream().pull_subscribe(
                f"{events.completion_subject_prefix}.>", stream=events.completions_stream
            )
            out: list[dict] = []
            while True:
                try:
                    msgs = await sub.fetch(200, timeout=1)
                except (nats.errors.TimeoutError, TimeoutError):  # nats-py raises either
                    return out
                for msg in msgs:
                    event = json.loads(msg.data)
                    # The stream also holds progress and selection events: completions only.
                    if event.get("type") == "io.editflow.completion.v1":
                        out.append(event)
                    await msg.ack()
        finally:
            await nc.close()

    return asyncio.run(read())


def worker_command(script: Path) -> str:
    """EDITFLOW_OPERATOR__WORKER_COMMAND running ``script`` as the worker, as JSON.

    The process kubelet maps a Pod's mount paths (its ``/tmp`` emptyDir) onto host
    directories, also in the command line, so a script inside a checkout under ``/tmp`` (a CI
    clone, say) would be looked for inside the Pod's /tmp. The script is copied under the
    cache instead, and ``python`` is the image's (the virtualenv's) interpreter.
    """
    import json
    import shutil

    target = Path.home() / ".cache" / "editflow" / "test-workers" / script.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(script, target)
    return json.dumps(["python", str(target)])


def scratch_namespace(stack: LocalStack, prefix: str) -> Iterator[str]:
    """A fresh namespace (the CRDs installed) for one test module; deleted afterwards."""
    api = KubeClient(stack.kubeconfig)
    localmode.install_crd(api)
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    api.post("/api/v1/namespaces", {"metadata": {"name": name}})
    try:
        yield name
    finally:
        api.delete(f"/api/v1/namespaces/{name}")
        api.close()


def bridge_settings(
    stack: LocalStack, namespace: str, *, events: dict[str, Any], **operator: Any
) -> Settings:
    """Settings of a bridge under test: the stack's NATS, event names of its own (the
    session's NATS is shared), ``events`` timings over those of tests/events/conftest.py."""
    from tests.events.conftest import events_settings

    return Settings(
        namespace=namespace,
        nats=NatsSettings(url=stack.nats_url),
        events=events_settings(**events),
        operator=OperatorSettings(**operator),
    )


#: A literal public address: the bridge's SSRF guard resolves host names, and there is no DNS here.
PUBLIC_IMAGE_URL = "https://93.184.215.14/poster.png"


async def publish_approvals(
    settings: Settings,
    ids: list[str],
    *,
    source: str,
    image_url: str = PUBLIC_IMAGE_URL,
    interval: float = 0.0,
    at_once: bool = False,
    **fields: Any,
) -> None:
    """One approval event per id through the OA SDK, as an OA system sends them: one after
    the other (``interval`` seconds apart), or all at once (``at_once``: a burst).

    The form and approval ids derive from the event id, so each id is one approval; extra
    ``fields`` go to :meth:`OAClient.submit_approval` (``generation=...``)."""
    async with await OAClient.connect(settings, source=source) as client:

        async def one(event_id: str) -> None:
            await client.submit_approval(
                form_id=f"F-{event_id[:8]}",
                approval_id=f"A-{event_id[:8]}",
                applicant=Person(id="u-1", name="Li Lei"),
                image_url=image_url,
                instruction="把背景换成海边日落",
                event_id=event_id,
                **fields,
            )

        if at_once:
            await asyncio.gather(*(one(event_id) for event_id in ids))
            return
        for event_id in ids:
            await one(event_id)
            if interval:
                await asyncio.sleep(interval)
