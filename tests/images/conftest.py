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

#: Set to 0 to leave the worker image out (cold it is the CUDA torch wheels, minutes: see
#: charts/editflow/README.md, "Images"). `make test` builds it: the demo runs in it anyway.
WORKER_ENV = "EDITFLOW_TEST_WORKER_IMAGE"


def worker_image_wanted() -> bool:
    """Whether this session builds and runs the worker image (the default)."""
    return os.environ.get(WORKER_ENV, "1") != "0"


#: The repository under test, wherever pytest was started from.
REPO = Path(__file__).resolve().parents[2]


#: The first test that asks for an image pays for its build: cold, the worker image takes
#: about 8 minutes to build and 3 to push (charts/editflow/README.md, "Images"), past the
#: suite's 600 s per test, which counts fixture setup. Those tests get this limit instead.
BUILD_TIMEOUT_SECONDS = 1800
_BUILDING_FIXTURES = {"control_plane", "worker", "published"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _BUILDING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.timeout(BUILD_TIMEOUT_SECONDS))


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
    if not worker_image_wanted():
        pytest.skip(f"{WORKER_ENV}=0 leaves the worker image out (multi-GB, minutes cold)")
    (built,) = images.build(["worker"], report=build_log.append, repo=REPO)
    return built
