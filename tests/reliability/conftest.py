"""Fixtures of the reliability tests: a cheap digits baseline cache, shared per session."""

from __future__ import annotations

from pathlib import Path

import pytest

#: A cheap baseline (1 epoch; tests/search uses 3): seconds to train on one core.
WORKLOAD_OPTIONS = {"baseline_epochs": 1.0}


@pytest.fixture(scope="session")
def rel_baseline_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tune_prune.workloads import get_workload, load_or_train_baseline

    cache = tmp_path_factory.mktemp("rel_baseline_cache")
    load_or_train_baseline(get_workload("digits", **WORKLOAD_OPTIONS), 0, cache)
    return cache
