"""The usages with an output profile are the contract's (the operator labels metrics by them
without importing the worker's code, and the gateway offers them)."""

from __future__ import annotations

from editflow.events.worker_contract import USAGE_NAMES
from editflow.gateway.templates import USAGES
from editflow.inference.profiles import USAGE_PROFILES


def test_every_profiled_usage_is_in_the_contract_and_offered_by_the_gateway() -> None:
    assert set(USAGE_PROFILES) == set(USAGE_NAMES)
    assert {usage for usage, _ in USAGES} == {"default", *USAGE_NAMES}
