"""``editflow edits rerun``: run an approval again on purpose.

The bridge never runs an approval twice: a redelivery, a replay or a
republish of a handled approval is a duplicate (see the approval ledger,
:mod:`editflow.events.ledger`). When a person *wants* a second run (the
result was lost, a model was fixed), this command reads the original event
back from the approvals stream and creates ``<editjob>-r<n>``, counted in the
ledger. Kubernetes access as for ``kubectl`` (``KUBECONFIG``, or the service
account in a Pod); NATS and names from ``EDITFLOW_*`` like ``editflow events``.

The command is registered on the ``editflow edits`` group beside ``cancel``
and ``resolve`` (:mod:`editflow.cli.main`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import typer

from editflow.cli.events import NATS_URL, console, load_settings, run
from editflow.core.errors import UpstreamError


def _kube_configuration() -> Any:
    """The operator's credentials, reading ``$KUBECONFIG`` now: the kubernetes client reads it
    once at import, which misses a variable set later in the same process (tests, wrappers)."""
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    from editflow.operator.kube import load_configuration

    path = os.environ.get("KUBECONFIG")
    if os.environ.get("KUBERNETES_SERVICE_HOST") or not path:
        return load_configuration()
    configuration = k8s_client.Configuration()
    k8s_config.load_kube_config(config_file=path, client_configuration=configuration)
    return configuration


def rerun(
    event_id: str = typer.Argument(..., help="the approval's CloudEvent id"),
    as_json: bool = typer.Option(False, "--json", help="print the result as one JSON line"),
    nats_url: str | None = NATS_URL,
) -> None:
    """Re-run an approval on purpose: a new EditJob <name>-r<n> from the original event."""
    from kubernetes.config import ConfigException

    from editflow.core.errors import InvalidInputError
    from editflow.events.connection import connect
    from editflow.events.ledger import ApprovalLedger
    from editflow.events.topology import Topology
    from editflow.operator.bridge import rerun_approval
    from editflow.operator.kube import AsyncKube

    async def main() -> None:
        settings = load_settings(nats_url)
        topology = Topology(settings.events)
        try:
            kube = AsyncKube(_kube_configuration())
        except ConfigException as exc:
            raise InvalidInputError(
                f"no Kubernetes credentials ({exc}); set KUBECONFIG or run in a Pod"
            ) from None
        nc = await connect(settings.nats, name="editflow-cli-rerun", connect_for=10)
        try:
            js = nc.jetstream()
            ledger = await ApprovalLedger.open(js, topology)
            done = await rerun_approval(settings, kube, js, topology, ledger, event_id)
        finally:
            await kube.close()
            await nc.close()
        if as_json:
            typer.echo(json.dumps({
                "event_id": done.event_id, "namespace": done.namespace, "editjob": done.editjob,
                "rerun": done.number, "stream_seq": done.stream_seq,
                "previous_state": done.previous.state, "previous_editjob": done.previous.editjob,
            }, ensure_ascii=False))  # fmt: skip
            return
        previous = done.previous
        was = previous.state + (f" as {previous.editjob}" if previous.editjob else "")
        console.print(f"approval {done.event_id} (stream seq {done.stream_seq}, was {was})")
        typer.echo(
            f"editjob.editflow.io/{done.editjob} created in {done.namespace} (rerun {done.number})"
        )

    async def guarded() -> None:
        try:
            await main()
        except TimeoutError as exc:  # a NATS request that got no answer in time
            raise UpstreamError(f"NATS did not answer in time ({exc!r}); try again") from exc

    run(guarded())
