"""Shared fixtures: one real local platform per test session.

The stack is started by the project's own launcher on loopback, free ports
and a temp dir, and stopped (with every process it started) at the end, even
when tests fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from editflow.devstack import installer, paths
from editflow.devstack.stack import LocalStack
from tests import hygiene

REPO_ROOT = Path(__file__).resolve().parent.parent

# The operator harness (image host, tiny model on the models PVC, `editflow operator run`)
# is shared by the operator, gateway and demo tests; the hygiene plugin fails a module that
# leaves operators, workers or running Pods behind on the shared platform.
pytest_plugins = ["tests.harness", "tests.hygiene"]


def pytest_report_header(config: pytest.Config) -> str:
    """Free disk where the suite writes most (images, platform, temp folders): a run on a
    full disk died 30 minutes in with ENOSPC (issue 19), so every run says it up front."""
    places = {"cache": paths.cache_root(), "tmp": Path(tempfile.gettempdir()), "repo": REPO_ROOT}
    parts = []
    for name, place in places.items():
        while not place.exists():
            place = place.parent
        parts.append(f"{name} {shutil.disk_usage(place).free / 2**30:.0f} GiB")
    return "free disk: " + ", ".join(parts)


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    # The host-command image mapping: editflow's images run as the installed `editflow`.
    with LocalStack(host_images=True) as running:
        hygiene.SESSION.stack = running
        try:
            yield running
        finally:
            hygiene.SESSION.stack = None


@pytest.fixture(scope="session")
def kubectl(stack: LocalStack):
    """Run the pinned kubectl against the session's control plane."""
    binary = str(installer.binary("kubectl"))

    def run(*args: str, check: bool = True, input: str | None = None, token: str | None = None):
        argv = [binary, f"--kubeconfig={stack.kubeconfig}"]
        if token is not None:
            # A bare token user: same server and CA, no client certificate.
            argv = [
                binary,
                f"--server={stack.apiserver.url}",
                f"--certificate-authority={stack.apiserver.ca.cert_path}",
                f"--token={token}",
            ]
        result = subprocess.run(
            [*argv, *args],
            capture_output=True,
            text=True,
            input=input,
            env={**os.environ, "KUBECONFIG": "/dev/null"},
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    return run
