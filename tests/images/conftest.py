"""Fixtures of the image tests: the images are built for real, once per session.

The build is the one ``make images`` runs (:func:`editflow.devstack.images.build`), so
a warm session only checks the content hash (well under a second) and a cold one
builds the control-plane image in about two minutes. Building needs root (buildah's
overlay storage and chroot isolation, runc); as another user the tests are skipped with
that reason, never faked.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from editflow.devstack import images
from editflow.devstack.buildah import ImageStorage

#: Set to 1 to build and test the worker image too (cold: the CUDA torch wheels, see
#: charts/editflow/README.md, "Images"); `make test` leaves it out.
WORKER_ENV = "EDITFLOW_TEST_WORKER_IMAGE"
#: The repository under test, wherever pytest was started from.
REPO = Path(__file__).resolve().parents[2]


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("building and running images needs root (buildah overlay storage, runc)")


@pytest.fixture(scope="session")
def storage() -> ImageStorage:
    return ImageStorage.default()


@pytest.fixture(scope="session")
def build_log() -> list[str]:
    """Every progress line the session's builds reported (tests read what was skipped)."""
    return []


@pytest.fixture(scope="session")
def control_plane(build_log: list[str]) -> images.BuiltImage:
    _require_root()
    (built,) = images.build(["control-plane"], report=build_log.append, repo=REPO)
    return built


@pytest.fixture(scope="session")
def worker(build_log: list[str]) -> images.BuiltImage:
    _require_root()
    if os.environ.get(WORKER_ENV) != "1":
        pytest.skip(f"the worker image is built only with {WORKER_ENV}=1 (multi-GB, minutes cold)")
    (built,) = images.build(["worker"], report=build_log.append, repo=REPO)
    return built
