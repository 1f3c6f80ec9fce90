"""A small dict-in, dict-out Kubernetes REST client for the local platform's own agents.

The process kubelet talks to the apiserver the way the real kubelet does
(list+watch, bind, status subresource, precondition deletes). Plain JSON
dicts keep that code close to the API reference, and bounded watch timeouts
keep a dropped connection from silently stopping the agent.
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

JSON = dict[str, Any]


class KubeError(Exception):
    """A non-2xx answer from the apiserver, with its Status reason and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def _ssl_context(kubeconfig: Path) -> tuple[str, ssl.SSLContext]:
    cfg = yaml.safe_load(kubeconfig.read_text())
    ctx_name = cfg["current-context"]
    context = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
    cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == context["cluster"])
    user = next(u["user"] for u in cfg["users"] if u["name"] == context["user"])
    ssl_ctx = ssl.create_default_context(
        cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
    )
    if "client-certificate-data" in user:
        # ssl wants files for the client pair; they live only as long as the load.
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp) / "c.crt", Path(tmp) / "c.key"
            cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
            key.write_bytes(base64.b64decode(user["client-key-data"]))
            ssl_ctx.load_cert_chain(str(cert), str(key))
    return cluster["server"], ssl_ctx


class KubeClient:
    """Synchronous JSON client bound to one kubeconfig."""

    def __init__(self, kubeconfig: Path, *, timeout: float = 30.0) -> None:
        server, ctx = _ssl_context(kubeconfig)
        self.server = server
        self._http = httpx.Client(base_url=server, verify=ctx, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _check(self, resp: httpx.Response) -> JSON:
        if resp.status_code >= 400:
            try:
                body = resp.json()
                raise KubeError(resp.status_code, body.get("reason", ""), body.get("message", ""))
            except ValueError:
                raise KubeError(resp.status_code, "", resp.text) from None
        return resp.json() if resp.content else {}

    def get(self, path: str, **params: Any) -> JSON:
        return self._check(self._http.get(path, params=params or None))

    def post(self, path: str, body: JSON) -> JSON:
        return self._check(self._http.post(path, json=body))

    def put(self, path: str, body: JSON) -> JSON:
        return self._check(self._http.put(path, json=body))

    def patch(self, path: str, body: JSON, *, kind: str = "merge") -> JSON:
        content_type = {
            "merge": "application/merge-patch+json",
            "strategic": "application/strategic-merge-patch+json",
            "json": "application/json-patch+json",
        }[kind]
        return self._check(
            self._http.patch(path, content=json.dumps(body), headers={"Content-Type": content_type})
        )

    def delete(self, path: str, body: JSON | None = None) -> JSON:
        return self._check(self._http.request("DELETE", path, json=body))

    def watch(
        self, path: str, *, resource_version: str, timeout_seconds: int = 30, **params: Any
    ) -> Iterator[JSON]:
        """Yield watch events until the server closes the (bounded) watch."""
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(timeout_seconds),
            "allowWatchBookmarks": "true",
            **params,
        }
        with self._http.stream(
            "GET", path, params=query, timeout=httpx.Timeout(timeout_seconds + 15)
        ) as resp:
            if resp.status_code >= 400:
                resp.read()
                self._check(resp)
            for line in resp.iter_lines():
                if line.strip():
                    yield json.loads(line)
