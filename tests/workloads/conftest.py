"""Shared fixtures: one digits workload and one trained baseline per test session."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tune_prune.workloads.digits import DigitsWorkload


@pytest.fixture(scope="session")
def digits() -> DigitsWorkload:
    return DigitsWorkload()


@pytest.fixture(scope="session")
def digits_baseline(digits: DigitsWorkload) -> nn.Module:
    # Session fixtures run before the suite's autouse one-thread fixture: same reason here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return digits.train_baseline(seed=0)
    finally:
        torch.set_num_threads(threads)
