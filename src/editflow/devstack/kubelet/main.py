"""Run the process kubelet as its own process (``editflow dev kubelet``).

A separate process, like the real kubelet: it can crash or be restarted
without taking the Pods it runs along, and the stack supervises it like any
other server.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from urllib.parse import urlsplit

from editflow.devstack.kubeapi import KubeClient
from editflow.devstack.kubelet import runtime
from editflow.devstack.kubelet.agent import ProcessKubelet
from editflow.devstack.kubelet.config import KubeletConfig
from editflow.devstack.kubelet.logserver import make_server
from editflow.devstack.kubelet.podspec import pod_dir_for


def run(
    *,
    kubeconfig: Path,
    config: KubeletConfig,
    port: int,
    cert: Path,
    key: Path,
    client_ca: Path,
    kill_pods_on_exit: bool = True,
) -> None:
    client = KubeClient(kubeconfig)
    api_port = urlsplit(client.server).port
    agent = ProcessKubelet(client, config, api_port=api_port, kubelet_port=port)

    def locate(namespace: str, name: str, container: str):  # noqa: ANN202
        with agent.lock:
            pod = next(
                (
                    p
                    for p in agent.cache.values()
                    if p["metadata"]["namespace"] == namespace and p["metadata"]["name"] == name
                ),
                None,
            )
        if pod is None:
            return None
        pod_dir = pod_dir_for(config.root, pod)
        return (
            pod_dir / "logs" / f"{container}.log",
            lambda: isinstance(runtime.observe(pod_dir, container), runtime.Running),
        )

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    agent.start()
    server = make_server(
        port, cert=cert, key=key, client_ca=client_ca, locate=locate, healthy=agent.healthy
    )
    logging.getLogger("editflow.kubelet").info("process kubelet ready on port %d", port)
    try:
        stop.wait()
    finally:
        server.shutdown()
        agent.shutdown(kill_pods=kill_pods_on_exit)
        client.close()
