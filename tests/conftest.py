"""Suite-wide fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core CPU: one intra-op thread is far faster than oversubscribing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_ray(monkeypatch):
    """Any attempt to start or use Ray (hence any trial) fails the test: for checks that
    must reject a config before anything runs."""
    import ray
    from ray import tune

    def boom(*a, **k):
        raise AssertionError("Ray was started / a Tuner was built before validation")

    monkeypatch.setattr(ray, "init", boom)
    monkeypatch.setattr(tune, "Tuner", boom)
