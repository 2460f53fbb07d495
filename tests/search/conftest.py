"""Shared fixtures of the search tests: one cheap digits baseline cache per session."""

from __future__ import annotations

from pathlib import Path

import pytest

#: A cheap baseline (a few epochs) keeps the search tests within their time budget.
WORKLOAD_OPTIONS = {"baseline_epochs": 3.0}


@pytest.fixture(scope="session")
def baseline_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tune_prune.workloads import get_workload, load_or_train_baseline

    cache = tmp_path_factory.mktemp("baseline_cache")
    load_or_train_baseline(get_workload("digits", **WORKLOAD_OPTIONS), 0, cache)
    return cache
