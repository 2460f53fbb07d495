"""Sampling the define-by-run space in tests (shared by test_space and test_channel_options)."""

from __future__ import annotations

from typing import Any

import optuna

from tune_prune.search.space import define_space


def sample_space(cfg: Any, n: int) -> list[tuple[dict, dict]]:
    """(raw Optuna params, normalised config) of n trials asked of a seeded random sampler."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    out = []
    for _ in range(n):
        trial = study.ask()
        config = define_space(trial, cfg)
        out.append((dict(trial.params), config))
        study.tell(trial, 0.5)
    return out
