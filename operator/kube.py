"""The operator's async Kubernetes client: JSON dicts over httpx.

Credentials come from the official client's loaders (in-cluster service
account, else ``$KUBECONFIG`` / ``~/.kube/config``), so the operator runs the
same way in a Pod and on a laptop. Service-account tokens rotate: the token
is re-read through the loader's refresh hook before requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.config import incluster_config

JSON = dict[str, Any]


class KubeAPIError(Exception):
    """A non-2xx answer from the apiserver, with its Status reason and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


#: Where the service-account token, CA and namespace are mounted. Overridable because the
#: process kubelet (local mode) can only map a mount path that appears in the environment.
SERVICEACCOUNT_DIR_ENV = "EDITFLOW_SERVICEACCOUNT_DIR"
DEFAULT_SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def load_configuration() -> k8s_client.Configuration:
    """In a Pod: the mounted service account; elsewhere: ``$KUBECONFIG`` / ``~/.kube/config``."""
    configuration = k8s_client.Configuration()
    sa_dir = Path(os.environ.get(SERVICEACCOUNT_DIR_ENV, DEFAULT_SERVICEACCOUNT_DIR))
    if os.environ.get("KUBERNETES_SERVICE_HOST") and (sa_dir / "token").exists():
        loader = incluster_config.InClusterConfigLoader(
            token_filename=str(sa_dir / "token"), cert_filename=str(sa_dir / "ca.crt")
        )
        loader.load_and_set(configuration)
    else:
        k8s_config.load_kube_config(client_configuration=configuration)
    return configuration


def auth_headers(configuration: k8s_client.Configuration) -> dict[str, str]:
    """The headers the official client would send (bearer tokens, refreshed when due)."""
    headers: dict[str, str] = {}
    for auth in configuration.auth_settings().values():
        if auth.get("in") == "header" and auth.get("value"):
            headers[auth["key"]] = auth["value"]
    return headers


#: Connections (and requests at once) for requests other than watches; see AsyncKube.
REQUEST_CONNECTIONS = 8


class AsyncKube:
    """Minimal async REST client (get/list/create/patch/delete) bound to one cluster."""

    def __init__(self, configuration: k8s_client.Configuration | None = None) -> None:
        self.configuration = configuration or load_configuration()
        cfg = self.configuration
        context = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.verify_ssl else False
        if isinstance(context, ssl.SSLContext) and cfg.cert_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file)
        # Requests and watches get a pool each. httpcore's pool walks every connection on
        # each request it queues and each it releases (an idle one costs a socket poll and
        # anyio's attribute lookups): with watches and 24 request connections in one pool,
        # that walk was a fifth of the operator's CPU at 50 edits/s. So requests get a few
        # connections, kept alive (fresh TLS handshakes cost more still), and wait for one in
        # an asyncio semaphore, where waiting is free, rather than in httpcore's queue.
        self._slots = asyncio.Semaphore(REQUEST_CONNECTIONS)
        limits = httpx.Limits(
            max_connections=REQUEST_CONNECTIONS,
            max_keepalive_connections=REQUEST_CONNECTIONS,
            keepalive_expiry=60.0,
        )
        self._http = httpx.AsyncClient(
            base_url=cfg.host, verify=context, timeout=30.0, limits=limits
        )
        # One connection per open watch (each holds its own for minutes).
        self._watch_http = httpx.AsyncClient(
            base_url=cfg.host,
            verify=context,
            timeout=30.0,
            limits=httpx.Limits(max_connections=None, keepalive_expiry=60.0),
        )

    async def close(self) -> None:
        await self._http.aclose()
        await self._watch_http.aclose()

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", **auth_headers(self.configuration)}
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        content_type: str | None = None,
    ) -> JSON:
        content = json.dumps(body) if body is not None else None
        ctype = content_type or ("application/json" if body is not None else None)
        async with self._slots:
            resp = await self._http.request(
                method, path, content=content, params=params, headers=self._headers(ctype)
            )
        if resp.status_code >= 400:
            try:
                data = resp.json()
                raise KubeAPIError(
                    resp.status_code, data.get("reason", ""), data.get("message", "")
                )
            except ValueError:
                raise KubeAPIError(resp.status_code, "", resp.text) from None
        return resp.json() if resp.content else {}

    async def text(self, path: str, **params: Any) -> str:
        """GET a plain-text resource (a Pod's ``/log``)."""
        async with self._slots:
            resp = await self._http.get(
                path, params=params or None, headers={**self._headers(), "Accept": "*/*"}
            )
        if resp.status_code >= 400:
            raise KubeAPIError(resp.status_code, "", resp.text.strip()[:500])
        return resp.text

    async def get(self, path: str, **params: Any) -> JSON | None:
        """GET, with ``None`` for 404 (absent is a normal answer for a controller)."""
        try:
            return await self._call("GET", path, params=params or None)
        except KubeAPIError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, path: str, **params: Any) -> list[JSON]:
        """Every item of a collection, fetched in pages (``limit``/``continue``)."""
        items, _ = await self.list_pages(path, **params)
        return items

    async def list_pages(
        self, path: str, *, page_size: int = 500, **params: Any
    ) -> tuple[list[JSON], str]:
        """(items, the collection's resourceVersion), one bounded page per request.

        Pages keep each apiserver response (and our memory spike) small with
        70,000 EditJobs; the resourceVersion is where a watch resumes.
        """
        items: list[JSON] = []
        token = ""
        while True:
            query = {**params, "limit": page_size}
            if token:
                query["continue"] = token
            data = await self._call("GET", path, params=query)
            items.extend(data.get("items") or [])
            meta = data.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                return items, str(meta.get("resourceVersion") or "")

    async def watch(
        self, path: str, *, resource_version: str, timeout_seconds: int, **params: Any
    ) -> AsyncIterator[JSON]:
        """Stream watch events (``{"type", "object"}``) from ``resource_version``.

        The server ends the stream after ``timeout_seconds``; bookmarks keep the
        resume point fresh so a reconnect rarely needs a full re-list. A 410
        (resourceVersion too old) arrives as an ``ERROR`` event or status.
        """
        query = {
            **params,
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds,
        }
        timeout = httpx.Timeout(10.0, read=timeout_seconds + 15.0)
        async with self._watch_http.stream(
            "GET", path, params=query, headers=self._headers(), timeout=timeout
        ) as resp:
            if resp.status_code >= 400:
                body = await resp.aread()
                try:
                    data = json.loads(body)
                    raise KubeAPIError(
                        resp.status_code, data.get("reason", ""), data.get("message", "")
                    )
                except ValueError:
                    text = body.decode(errors="replace")
                    raise KubeAPIError(resp.status_code, "", text) from None
            async for line in resp.aiter_lines():
                if line.strip():
                    yield json.loads(line)

    async def create(self, path: str, body: JSON) -> JSON:
        return await self._call("POST", path, body=body)

    async def patch(self, path: str, body: JSON, *, kind: str = "merge") -> JSON:
        ctype = {
            "merge": "application/merge-patch+json",
            "json": "application/json-patch+json",
            "strategic": "application/strategic-merge-patch+json",
        }[kind]
        return await self._call("PATCH", path, body=body, content_type=ctype)

    async def delete(self, path: str, *, propagation: str = "Background") -> bool:
        """DELETE; ``False`` when it was already gone."""
        try:
            await self._call("DELETE", path, body={"propagationPolicy": propagation})
        except KubeAPIError as exc:
            if exc.status == 404:
                return False
            raise
        return True
