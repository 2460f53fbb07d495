"""User-workload factories for the registry and cache tests (imported via 'module:factory')."""

from __future__ import annotations

import os
import time
from typing import Any

from torch import nn

from tune_prune.workloads.digits import DigitsWorkload

NOT_CALLABLE = 3


class CountingDigits(DigitsWorkload):
    """A fast digits workload that appends a line to ``marker`` each time it trains."""

    name = "counting-digits"

    def __init__(self, marker: str | None = None, delay: float = 0.0, **overrides: Any) -> None:
        overrides.setdefault("baseline_epochs", 1.0)
        super().__init__(**overrides)
        self.marker = marker
        self.delay = delay
        self.trainings = 0

    def train_baseline(self, seed: int = 0) -> nn.Module:
        self.trainings += 1
        if self.marker:
            with open(self.marker, "a") as fh:
                fh.write(f"{os.getpid()}\n")
        time.sleep(self.delay)  # widen the race window for the concurrency test
        return super().train_baseline(seed)


def make(**overrides: Any) -> CountingDigits:
    return CountingDigits(**overrides)


def broken(**overrides: Any) -> CountingDigits:
    raise RuntimeError("factory exploded")


def not_a_workload(**overrides: Any) -> object:
    return object()


def child_load(cache_dir: str, marker: str) -> float:
    """Run in a separate process: get the baseline and return a weight checksum."""
    import torch

    from tune_prune.workloads import load_or_train_baseline

    torch.set_num_threads(1)  # two children share the CPU
    workload = CountingDigits(marker=marker, delay=1.0)
    model = load_or_train_baseline(workload, 0, cache_dir)
    return float(sum(p.detach().double().sum() for p in model.parameters()))
