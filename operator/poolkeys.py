"""Each namespace's warm-pool key: the Secret its warm workers open sealed credentials with.

See :mod:`editflow.core.sealing` for why and how. The operator is the key's only writer: it
creates ``editflow-warm-key`` in a watched namespace the first time it seals for it, and
rotates it (a new key first in the list, one previous key kept) once the newest key is
older than ``operator.warm_key_rotation_seconds``. Writes use the Secret's
``resourceVersion``, so two operator processes (a failover) cannot lose each other's key.
The keys are cached for a minute: sealing costs no apiserver request per attempt.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from typing import Any

from editflow.core.sealing import (
    POOL_KEY_FIELD,
    POOL_KEY_SECRET,
    PoolKey,
    format_keys,
    new_pool_key,
    parse_keys,
    sealing_key,
)
from editflow.core.settings import OperatorSettings
from editflow.operator.kube import AsyncKube, KubeAPIError
from editflow.operator.names import MANAGED_BY

log = logging.getLogger(__name__)

#: How long keys read from the Secret are used before it is read again.
CACHE_SECONDS = 60.0
#: Keys kept: the newest and the one before (messages sealed just before a rotation).
KEPT_KEYS = 2


def _secret_path(namespace: str, name: str | None = None) -> str:
    base = f"/api/v1/namespaces/{namespace}/secrets"
    return f"{base}/{name}" if name else base


def _decode(secret: dict[str, Any]) -> list[PoolKey]:
    raw = (secret.get("data") or {}).get(POOL_KEY_FIELD) or ""
    return parse_keys(base64.b64decode(raw).decode("utf-8", "replace"))


def _data(keys: list[PoolKey]) -> dict[str, str]:
    return {POOL_KEY_FIELD: base64.b64encode(format_keys(keys).encode()).decode()}


class PoolKeys:
    def __init__(
        self, kube: AsyncKube, op: OperatorSettings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.kube = kube
        self.op = op
        self.clock = clock
        self._cache: dict[str, tuple[list[PoolKey], float]] = {}

    async def sealing_key(self, namespace: str) -> PoolKey:
        """The key to seal this namespace's next attempt with (created or rotated if due)."""
        cached = self._cache.get(namespace)
        now = self.clock()
        if cached is None or now - cached[1] > CACHE_SECONDS:
            keys = await self._load(namespace)
            self._cache[namespace] = (keys, now)
        else:
            keys = cached[0]
        return sealing_key(keys, now)

    async def _load(self, namespace: str) -> list[PoolKey]:
        secret = await self.kube.get(_secret_path(namespace, POOL_KEY_SECRET))
        now = self.clock()
        if secret is None:
            keys = [new_pool_key(now)]
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {
                    "name": POOL_KEY_SECRET,
                    "labels": {**MANAGED_BY, "app.kubernetes.io/component": "warm-pool-key"},
                },
                "data": _data(keys),
            }
            try:
                await self.kube.create(_secret_path(namespace), body)
            except KubeAPIError as exc:
                if exc.status != 409:  # another operator process created it first
                    raise
                return await self._load(namespace)
            log.info("warm pool key created", extra={"namespace": namespace})
            return keys
        keys = _decode(secret)
        if keys and now - keys[0].created < self.op.warm_key_rotation_seconds:
            return keys
        rotated = [new_pool_key(now), *keys][:KEPT_KEYS]
        patch = {
            "metadata": {"resourceVersion": secret["metadata"]["resourceVersion"]},
            "data": _data(rotated),
        }
        try:
            await self.kube.patch(_secret_path(namespace, POOL_KEY_SECRET), patch)
        except KubeAPIError as exc:
            if exc.status != 409:  # rotated by another process meanwhile: read theirs
                raise
            return await self._load(namespace)
        log.info("warm pool key rotated", extra={"namespace": namespace})
        return rotated
