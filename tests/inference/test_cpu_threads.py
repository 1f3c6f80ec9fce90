"""The worker's torch threads on the CPU: the setting, else the Pod's CPU limit."""

from __future__ import annotations

import torch

from editflow.core.settings import WorkerSettings
from editflow.inference.pipeline import cpu_limit, limit_cpu_threads


def test_the_setting_wins_and_an_accelerator_is_left_alone() -> None:
    before = torch.get_num_threads()
    try:
        assert limit_cpu_threads("cpu", WorkerSettings(cpu_threads=1)) == 1
        assert torch.get_num_threads() == 1
        assert limit_cpu_threads("cuda:0", WorkerSettings(cpu_threads=1)) is None
        assert limit_cpu_threads("cpu", WorkerSettings()) == cpu_limit() >= 1
    finally:
        torch.set_num_threads(before)
