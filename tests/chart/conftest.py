"""Fixtures of the Helm chart tests (helpers live in ``tests.chart.chartkit``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.chart.chartkit import documents, render_text


@pytest.fixture
def render(tmp_path: Path) -> Callable[..., list[dict[str, Any]]]:
    """render(values, *helm_args) -> the rendered objects."""

    def run(values: dict[str, Any], *extra: str, **kwargs: Any) -> list[dict[str, Any]]:
        return documents(render_text(tmp_path, values, *extra, **kwargs).stdout)

    return run
