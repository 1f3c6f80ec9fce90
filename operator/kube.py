"""The operator's async Kubernetes client: JSON dicts over aiohttp (requests) and httpx
(watches).

Credentials come from the official client's loaders (in-cluster service
account, else ``$KUBECONFIG`` / ``~/.kube/config``), so the operator runs the
same way in a Pod and on a laptop. Service-account tokens rotate: the token
is re-read through the loader's refresh hook before requests.

Why two HTTP clients. Requests (get, list, create, patch, delete: several per edit, 250 a
second at 50 edits/s) go through aiohttp, whose HTTP parser is C: in the warm control-plane
benchmark the operator's CPU per event was 0.68x of the same requests through httpx, whose
pure-Python stack (httpcore, h11, anyio) was most of what a request cost. Watches are a
handful of long-lived streams, read line by line, and stay on httpx, whose line iterator has
no line-length limit (aiohttp's stream reader refuses lines over its read buffer). A transport
failure of a request surfaces as an ``OSError`` (``ConnectionError``, ``TimeoutError``), as
httpx's do through the callers' ``except`` clauses, so that every retry path treats both alike.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.config import incluster_config

JSON = dict[str, Any]

log = logging.getLogger(__name__)


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
        # Requests get a few connections, kept alive (fresh TLS handshakes cost more), and
        # wait for one in an asyncio semaphore, where waiting is free. The session is made
        # on first use: aiohttp binds it to the running event loop.
        self._slots = asyncio.Semaphore(REQUEST_CONNECTIONS)
        self._base = cfg.host.rstrip("/")
        self._ssl: ssl.SSLContext | bool = context
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        # One connection per open watch (each holds its own for minutes).
        self._watch_http = httpx.AsyncClient(
            base_url=cfg.host,
            verify=context,
            timeout=30.0,
            limits=httpx.Limits(max_connections=None, keepalive_expiry=60.0),
        )

    def _requests(self) -> aiohttp.ClientSession:
        """The request session of the running loop (a client used from a second
        ``asyncio.run``, as the CLI and tests do, gets a session of its own)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session_loop = loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=REQUEST_CONNECTIONS, ssl=self._ssl, keepalive_timeout=60.0
                ),
                timeout=aiohttp.ClientTimeout(total=30.0),
                # The apiserver's JSON only; no cookies, no proxy settings from the env.
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=True,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self._watch_http.aclose()

    async def _send(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        headers: dict[str, str],
        content: str | None = None,
    ) -> tuple[int, bytes]:
        """One request: (status, body). Transport failures become ``OSError`` (module doc)."""
        query = None
        if params:  # aiohttp takes str/int/float only; httpx wrote booleans as true/false
            query = {
                k: ("true" if v else "false") if isinstance(v, bool) else v
                for k, v in params.items()
                if v is not None
            }
        try:
            async with (
                self._slots,
                self._requests().request(
                    method, self._base + path, params=query, data=content, headers=headers
                ) as resp,
            ):
                payload = await resp.read()
        except aiohttp.ClientError as exc:
            if isinstance(exc, OSError):
                raise
            raise ConnectionError(f"apiserver {method} {path}: {exc!r}") from exc
        if log.isEnabledFor(logging.DEBUG):  # what httpx's request line said, at DEBUG only
            log.debug(
                "apiserver request", extra={"method": method, "path": path, "status": resp.status}
            )
        return resp.status, payload

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
        status, payload = await self._send(method, path, params, self._headers(ctype), content)
        if status >= 400:
            try:
                data = json.loads(payload)
                raise KubeAPIError(status, data.get("reason", ""), data.get("message", ""))
            except (ValueError, AttributeError):
                raise KubeAPIError(status, "", payload.decode(errors="replace")) from None
        return json.loads(payload) if payload else {}

    async def text(self, path: str, **params: Any) -> str:
        """GET a plain-text resource (a Pod's ``/log``)."""
        status, payload = await self._send(
            "GET", path, params or None, {**self._headers(), "Accept": "*/*"}
        )
        text = payload.decode(errors="replace")
        if status >= 400:
            raise KubeAPIError(status, "", text.strip()[:500])
        return text

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
