"""The warm-pool key Secret on the real apiserver: created once per namespace, rotated when
due with one previous key kept, and cached (no apiserver request per sealed attempt)."""

from __future__ import annotations

import asyncio
import base64
import uuid

import pytest

from editflow.core.sealing import POOL_KEY_SECRET, parse_keys
from editflow.core.settings import OperatorSettings
from editflow.devstack.kubeapi import KubeClient
from editflow.operator.kube import AsyncKube
from editflow.operator.poolkeys import PoolKeys
from tests.operator.test_leader import configuration

pytestmark = [pytest.mark.platform]


def stored_keys(api: KubeClient, namespace: str) -> list:
    secret = api.get(f"/api/v1/namespaces/{namespace}/secrets/{POOL_KEY_SECRET}")
    return parse_keys(base64.b64decode(secret["data"]["keys"]).decode())


def test_the_pool_key_is_created_once_then_rotated_when_due(stack) -> None:
    api = KubeClient(stack.kubeconfig)
    namespace = f"pk-{uuid.uuid4().hex[:6]}"
    api.post("/api/v1/namespaces", {"metadata": {"name": namespace}})
    clock = [1_000_000.0]

    async def scenario() -> None:
        kube = AsyncKube(configuration(stack))
        try:
            keys = PoolKeys(
                kube, OperatorSettings(warm_key_rotation_seconds=3600), clock=lambda: clock[0]
            )
            first = await keys.sealing_key(namespace)
            assert [k.key for k in stored_keys(api, namespace)] == [first.key]
            clock[0] += 30  # cached: the same key, no new Secret read
            assert (await keys.sealing_key(namespace)) == first
            clock[0] += 3600  # due: a new key first, the old one kept
            await keys.sealing_key(namespace)
            after = stored_keys(api, namespace)
            assert len(after) == 2 and after[1].key == first.key
            # Another operator process (a failover) reads the same keys, creates nothing.
            other = PoolKeys(
                kube, OperatorSettings(warm_key_rotation_seconds=3600), clock=lambda: clock[0]
            )
            await other.sealing_key(namespace)
            assert stored_keys(api, namespace) == after
        finally:
            await kube.close()

    try:
        asyncio.run(scenario())
    finally:
        api.delete(f"/api/v1/namespaces/{namespace}")
        api.close()
