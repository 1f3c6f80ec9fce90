"""When each fault-suite test began, fixture setup included, as pytest-timeout counts it.

The drain wait of a run ends a reserve before the test's timeout, so the run fails with its
diagnosis table instead of being cut off (issue 19); both are counted from this moment.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.reliability.diagnosis import TEST_STARTED


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    item.stash[TEST_STARTED] = time.monotonic()
    return (yield)
