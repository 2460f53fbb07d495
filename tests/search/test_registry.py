"""The search's registry: every list and branch of the search derives from it."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from torch import nn

from tune_prune.pruning.pruners.registry import PRUNERS
from tune_prune.search import build
from tune_prune.search.config import SearchConfig
from tune_prune.search.registry import (
    DEFAULT_PRUNERS,
    GENERATOR_NAMES,
    GENERATORS,
    PRUNER_MODES,
    SEARCHABLE_PRUNERS,
    STATS_PRUNERS,
    generator_spec,
    needs_trainer,
)
from tune_prune.search.space import define_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))


def _trial(name: str, n: int = 4) -> dict:
    trial = {"generator": name, "total_iteration": n, "curve_exponent": 2.0,
             "sa_start_temperature": 50.0, "sa_stop_temperature": 10.0, "sa_cool_down_rate": 0.8,
             "sa_perturbation_magnitude": 0.2}
    return trial


@pytest.mark.parametrize("name", GENERATOR_NAMES)
def test_each_spec_builds_its_generator_and_the_dry_run_curve_matches_it(name: str, tmp_path) -> None:
    """The dry run simulates a schedule with the spec's curve: it must be the generator's own."""
    spec = generator_spec(name)
    trial = _trial(name)
    config_list = build.make_config_list("weights", "normal", 0.8, name)
    generator = build.make_task_generator(trial, _model(), config_list, tmp_path, seed=0)
    assert type(generator).__name__.lower().replace("_", "").startswith(
        {"agp": "agp", "linear": "linear", "lottery_ticket": "lotteryticket",
         "simulated_annealing": "simulatedannealing", "curve": "curve"}[name])
    if spec.curve is None:
        assert spec.length == "annealing"
        return
    for i in range(1, trial["total_iteration"] + 1):
        assert math.isclose(spec.curve(0.8, i, 4, trial), generator.origin_sparsity(0.8, i), rel_tol=1e-12)
    assert math.isclose(spec.curve(0.8, 4, 4, trial), 0.8)


def test_config_list_is_one_allocation_exactly_where_the_spec_says() -> None:
    for name, spec in GENERATORS.items():
        (entry,) = build.make_config_list("weights", "normal", 0.8, name)
        assert ("total_sparsity" in entry) is spec.one_allocation, name


def test_space_suggests_only_the_parameters_a_spec_declares() -> None:
    """A generator's own float parameters appear under it alone; rewinding follows ``rewinding``."""
    cfg = SearchConfig.create(num_samples=8)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen: dict[str, set[str]] = {name: set() for name in GENERATORS}
    resets: dict[str, set[bool]] = {name: set() for name in GENERATORS}
    for _ in range(150):
        trial = study.ask()
        config = define_space(trial, cfg)
        study.tell(trial, 0.0)
        seen[config["generator"]] |= set(trial.params)
        resets[config["generator"]].add(config["reset_weight"])
    own = {p[0] for spec in GENERATORS.values() for p in spec.float_params}
    for name, spec in GENERATORS.items():
        declared = {p[0] for p in spec.float_params}
        assert seen[name] & own == declared, name
        expected = {"never": {False}, "always": {True}, "searched": {False, True}}[spec.rewinding]
        assert resets[name] == expected, name


def test_pruner_lists_derive_from_the_pruner_classes() -> None:
    for name, modes in PRUNER_MODES.items():
        cls = PRUNERS[name]
        assert set(modes) <= set(cls.modes), name  # the class accepts every searched mode
    # BN slimming needs sparsity-regularised training: not searchable
    assert "slim" not in PRUNER_MODES
    # the statistics pruners are searchable, with every channel mode, but opt-in only
    assert STATS_PRUNERS == ("taylorfo", "apoz", "mean_activation")
    for name in STATS_PRUNERS:
        assert PRUNER_MODES[name] == PRUNER_MODES["l1"] == ("normal", "global", "dependency_aware")
        assert needs_trainer(name) and PRUNERS[name].kind == "channels"
    assert not any(needs_trainer(n) for n in ("level", "l1", "l2", "fpgm"))
    assert SEARCHABLE_PRUNERS["channels"] == ("l1", "l2", "fpgm", *STATS_PRUNERS)
    assert SEARCHABLE_PRUNERS["weights"] == ("level",)
    # the defaults (and so every default search) are unchanged
    assert DEFAULT_PRUNERS["weights"] == ("level",)
    assert DEFAULT_PRUNERS["channels"] == ("l1", "l2", "fpgm")
    assert "balance" not in PRUNER_MODES["level"]


def test_unknown_generator_is_named() -> None:
    with pytest.raises(ValueError, match="unknown generator 'cubic'.*agp"):
        generator_spec("cubic")


def test_help_lists_every_generator() -> None:
    text = SearchConfig.model_fields["generators"].description
    for name in GENERATOR_NAMES:
        assert f"{name}:" in text
