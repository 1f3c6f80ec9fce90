"""The local registry: real CNCF distribution on loopback; two instances share one storage."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from editflow.devstack.procs import port_is_open
from editflow.devstack.registry import LocalRegistry
from tests.devstack.testimage import REPOSITORY, push_busybox

pytestmark = [pytest.mark.platform]


def digest_of(reference: str) -> str:
    out = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{reference}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return str(json.loads(out)["Digest"])


def test_an_image_pushed_to_one_registry_is_served_by_another_on_the_same_storage(
    tmp_path: Path,
) -> None:
    storage = tmp_path / "storage"
    first = LocalRegistry(tmp_path / "a", storage=storage)
    second = LocalRegistry(tmp_path / "b", storage=storage)
    first.start()
    try:
        second.start()
        try:
            assert first.health().healthy and second.health().version == "v3.1.2"
            pushed = push_busybox(first.address, tmp_path / "image")
            tag = pushed.rsplit(":", 1)[1]
            assert REPOSITORY in second.repositories()
            served = f"{second.address}/{REPOSITORY}:{tag}"
            assert digest_of(served) == digest_of(pushed)
            # Both write: pushing the same image through the second is harmless.
            assert push_busybox(second.address, tmp_path / "image2") == served
        finally:
            second.stop()
    finally:
        first.stop()
    assert not port_is_open(first.port) and not port_is_open(second.port)
