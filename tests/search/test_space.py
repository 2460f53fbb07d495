"""The define-by-run space: conditional parameters appear only under their branch."""

from __future__ import annotations

import math

import optuna
import pytest

from tests.search.space_helpers import sample_space
from tune_prune.errors import ConfigError
from tune_prune.search.config import SearchConfig
from tune_prune.search.space import (
    CURVE_PARAMS,
    REWIND_PARAMS,
    SA_PARAMS,
    define_space,
    finetune_calls,
    make_sampler,
    sa_iterations,
    sa_stop_temperature,
)
from tune_prune.search.warm_start import WARM_START_KEYS, warm_start_points

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _sample(cfg: SearchConfig, n: int = 60) -> list[tuple[dict, dict]]:
    return sample_space(cfg, n)


def test_conditional_parameters_weights() -> None:
    cfg = SearchConfig.create()
    seen = set()
    for params, config in _sample(cfg):
        gen = config["generator"]
        seen.add(gen)
        assert (set(SA_PARAMS) & set(params)) == (set(SA_PARAMS) if gen == "simulated_annealing" else set())
        assert (set(CURVE_PARAMS) & set(params)) == (set(CURVE_PARAMS) if gen == "curve" else set())
        if gen == "lottery_ticket":
            assert config["reset_weight"] is True and "reset_weight" not in params
        if gen == "simulated_annealing":
            assert config["reset_weight"] is False and "reset_weight" not in params
            assert config["mode"] == "normal"  # SA gives per-layer entries: no 'global'
            assert sa_iterations(config["sa_start_temperature"], config["sa_stop_temperature"],
                                 config["sa_cool_down_rate"]) == config["sa_cool_downs"]
        if gen in ("agp", "linear", "curve"):
            assert "reset_weight" in params
        assert ("rewind" in params) == bool(config["reset_weight"])
        assert set(REWIND_PARAMS) <= set(config) or not config["reset_weight"]
        assert config["pruner"] == "level" and config["mode"] in ("normal", "global", "lamp", "erk")
        assert cfg.min_iterations <= config["total_iteration"] <= cfg.max_iterations
        assert cfg.lr_min <= config["lr"] <= cfg.lr_max
        # equal cost: the screened share of the budget is split evenly over the schedule's fine-tunes
        assert math.isclose(config["finetune_epochs"] * finetune_calls(config), cfg.screen_budget)
        assert math.isclose(cfg.screen_budget, cfg.finetune_budget * cfg.screen_fraction)
    assert seen == set(cfg.generators)


def test_per_iteration_epochs_are_searched_without_budget() -> None:
    cfg = SearchConfig.create(finetune_epochs=[1, 2, 5])
    assert cfg.finetune_budget is None
    seen = {config["finetune_epochs"] for params, config in _sample(cfg, 40)}
    assert seen == {1.0, 2.0, 5.0}


def test_budget_split_covers_one_shot() -> None:
    cfg = SearchConfig.create(finetune_budget=6, min_iterations=1, max_iterations=3, screen_fraction=1)
    split = {(c["generator"], c["total_iteration"], c["reset_weight"]): c["finetune_epochs"]
             for _, c in _sample(cfg, 120)}
    assert split[("agp", 1, False)] == 6.0 and split[("agp", 3, False)] == 2.0
    # rewinding trials retrain the last ticket once more: n + 1 fine-tunes share the budget
    assert split[("lottery_ticket", 2, True)] == 2.0 and split[("agp", 1, True)] == 3.0


def test_pruner_modes_are_per_pruner_names() -> None:
    cfg = SearchConfig.create(sparsity_kind="channels", generators=["agp", "simulated_annealing"])
    for params, config in _sample(cfg, 40):
        pruner = config["pruner"]
        assert pruner in ("l1", "l2", "fpgm")
        mode_keys = [k for k in params if k.startswith("mode__")]
        if config["generator"] == "simulated_annealing":
            # SA allocates per layer itself: only 'normal' keeps its allocation intact
            assert not mode_keys and config["mode"] == "normal"
        else:
            assert len(mode_keys) == 1 and mode_keys[0].endswith(pruner)
            assert config["mode"] in ("normal", "global", "dependency_aware")


def test_fixed_trial_sa_only_params() -> None:
    cfg = SearchConfig.create()
    base = {"generator": "agp", "pruner": "level", "mode__level": "global", "total_iteration": 3,
            "reset_weight": False, "finetune_epochs": 1.0, "lr": 0.01}
    config = define_space(optuna.trial.FixedTrial(base), cfg)
    assert not set(SA_PARAMS) & set(config) and "curve_exponent" not in config
    assert config["mode"] == "global"
    sa = {"generator": "simulated_annealing", "pruner": "level", "sa_cool_downs": 2,
          "sa_start_temperature": 50.0, "sa_cool_down_rate": 0.8, "sa_perturbation_magnitude": 0.2,
          "finetune_epochs": 1.0, "lr": 0.01}
    config = define_space(optuna.trial.FixedTrial(sa), cfg)
    assert config["total_iteration"] == 3
    assert math.isclose(config["sa_stop_temperature"], sa_stop_temperature(50.0, 0.8, 2))


@pytest.mark.parametrize(("start", "rate", "k"), [(100.0, 0.9, 1), (10.0, 0.5, 4), (200.0, 0.95, 9)])
def test_sa_stop_temperature_roundtrip(start: float, rate: float, k: int) -> None:
    assert sa_iterations(start, sa_stop_temperature(start, rate, k), rate) == k


def test_samplers() -> None:
    tpe = make_sampler(SearchConfig.create(seed=3))
    assert isinstance(tpe, optuna.samplers.TPESampler)
    nsga = make_sampler(SearchConfig.create(multi_objective="macs"))
    assert isinstance(nsga, optuna.samplers.NSGAIISampler)
    assert isinstance(make_sampler(SearchConfig.create(sampler="random")), optuna.samplers.RandomSampler)
    assert isinstance(make_sampler(SearchConfig.create(sampler="random", multi_objective="macs")),
                      optuna.samplers.RandomSampler)
    assert isinstance(make_sampler(SearchConfig.create(sampler="tpe", multi_objective="params")),
                      optuna.samplers.TPESampler)
    assert isinstance(make_sampler(SearchConfig.create(sampler="nsga2")), optuna.samplers.NSGAIISampler)


def test_random_sampler_is_seeded_and_differs_from_tpe_after_startup() -> None:
    def run(cfg: SearchConfig) -> list[dict]:
        study = optuna.create_study(direction="maximize", sampler=make_sampler(cfg))
        out = []
        for _ in range(8):
            t = study.ask()
            out.append(define_space(t, cfg))
            study.tell(t, out[-1]["lr"])  # a learnable objective
        return out

    rnd = SearchConfig.create(seed=5, sampler="random")
    assert run(rnd) == run(rnd)
    assert run(rnd) != run(SearchConfig.create(seed=6, sampler="random"))
    tpe = run(SearchConfig.create(seed=5))
    assert tpe[4:] != run(rnd)[4:]  # TPE models the last 4 of 8 trials


def test_seeded_tpe_is_reproducible() -> None:
    cfg = SearchConfig.create(seed=7)

    def run() -> list[dict]:
        study = optuna.create_study(direction="maximize", sampler=make_sampler(cfg))
        out = []
        for i in range(8):
            t = study.ask()
            out.append(define_space(t, cfg))
            study.tell(t, i / 10)
        return out

    assert run() == run()


@pytest.mark.parametrize("cool_downs", [1, 3])
def test_sa_trial_runs_exactly_its_iterations_within_the_budget(tmp_path, cool_downs: int) -> None:
    """Every candidate rejected (scores only fall): still total_iteration tasks, no more."""
    import torch
    from torch import nn

    from tune_prune.pruning.tools import TaskResult
    from tune_prune.search import build

    cfg = SearchConfig.create(finetune_budget=6, screen_fraction=1)
    params = {"generator": "simulated_annealing", "pruner": "level", "sa_cool_downs": cool_downs,
              "sa_start_temperature": 50.0, "sa_cool_down_rate": 0.8,
              "sa_perturbation_magnitude": 0.2, "lr": 0.01}
    trial = define_space(optuna.trial.FixedTrial(params), cfg)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    config_list = build.make_config_list("weights", trial["mode"], 0.8, trial["generator"])
    generator = build.make_task_generator(trial, model, config_list, tmp_path, seed=0)
    tasks, score = 0, 1.0
    while (task := generator.next()) is not None:
        tasks += 1
        score -= 0.1  # always worse: every candidate after the first is a rejection
        m, masks, _ = task.load_data()
        generator.receive_task_result(TaskResult(task.task_id, m, masks, masks, score))
        assert tasks <= 20
    assert tasks == trial["total_iteration"] == cool_downs + 1
    assert math.isclose(tasks * trial["finetune_epochs"], 6.0)


# ---------------------------------------------------------------- warm start
def _ask_with(cfg: SearchConfig, params: dict) -> dict:
    """The normalised config define_space returns for a trial enqueued with ``params``."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=7))
    study.enqueue_trial(params)
    return define_space(study.ask(), cfg)


@pytest.mark.parametrize("kind", ["weights", "channels"])
def test_every_non_sa_schedule_round_trips_through_warm_start(kind: str) -> None:
    """Any schedule the space can propose, given as a warm start, is proposed exactly."""
    cfg = SearchConfig.create(sparsity_kind=kind, warm_start=[])
    checked = 0
    for _, config in _sample(cfg, 80):
        if config["generator"] == "simulated_annealing":
            continue
        schedule = {k: config[k] for k in WARM_START_KEYS if k in config and k != "finetune_epochs"}
        (params,) = warm_start_points(cfg.updated(warm_start=[schedule]))
        assert _ask_with(cfg, params) == config
        checked += 1
    assert checked > 40


def test_an_annealing_warm_start_is_proposed_with_its_length() -> None:
    """total_iteration n of a simulated-annealing warm start = n - 1 cool-downs (its length
    comes from its temperatures); the rest of its parameters are sampled."""
    cfg = SearchConfig.create(target_sparsity=0.98, warm_start=[])
    schedule = {"generator": "simulated_annealing", "pruner": "level", "mode": "normal", "total_iteration": 3,
                "lr": 0.1}
    (params,) = warm_start_points(cfg.updated(warm_start=[schedule]))
    assert params["sa_cool_downs"] == 2 and "total_iteration" not in params
    config = _ask_with(cfg, params)
    assert (config["generator"], config["mode"], config["total_iteration"], config["lr"]) == (
        "simulated_annealing", "normal", 3, 0.1)


def test_presets_are_in_the_space_and_say_what_they_are() -> None:
    weights = SearchConfig.create(warm_start=["one_shot"])
    one_shot = _ask_with(weights, warm_start_points(weights)[0])
    assert (one_shot["total_iteration"], one_shot["mode"], one_shot["reset_weight"]) == (1, "global", False)
    assert one_shot["finetune_epochs"] == weights.screen_budget  # the whole (screened) budget after one prune
    assert one_shot["lr"] == pytest.approx(math.sqrt(weights.lr_min * weights.lr_max))

    channels = SearchConfig.create(sparsity_kind="channels", warm_start=["one_shot", "agp"], max_iterations=4)
    shot, agp = (_ask_with(channels, p) for p in warm_start_points(channels))
    assert (shot["pruner"], shot["mode"], shot["total_iteration"]) == ("l1", "normal", 1)
    assert (agp["generator"], agp["mode"], agp["total_iteration"]) == ("agp", "normal", 4)
    assert agp["finetune_epochs"] == pytest.approx(channels.screen_budget / 4)


def test_partial_schedule_leaves_the_rest_to_the_sampler() -> None:
    cfg = SearchConfig.create(warm_start=[{"generator": "linear", "total_iteration": 3}])
    (params,) = warm_start_points(cfg)
    assert params == {"generator": "linear", "total_iteration": 3}
    config = _ask_with(cfg, params)
    assert (config["generator"], config["total_iteration"]) == ("linear", 3)
    assert cfg.lr_min <= config["lr"] <= cfg.lr_max


def test_lr_schedule_is_a_choice_and_rewinding_searches_no_lr() -> None:
    cfg = SearchConfig.create(lr_schedules=["cosine", "constant", "rewind"])
    seen = set()
    for params, config in _sample(cfg, 60):
        seen.add(config["lr_schedule"])
        if config["lr_schedule"] == "rewind":
            assert config["lr"] is None and "lr" not in params  # replays the dense training's lrs
        else:
            assert cfg.lr_min <= config["lr"] <= cfg.lr_max and "lr" in params
    assert seen == {"cosine", "constant", "rewind"}
    # default: the workload's own schedule (None: finetune() is called without the keyword)
    assert {c["lr_schedule"] for _, c in _sample(SearchConfig.create(), 10)} == {None}
    with pytest.raises(ConfigError, match="lr_schedules"):
        SearchConfig.create(lr_schedules=["step"])
    with pytest.raises(ConfigError, match="takes no lr"):
        warm_start_points(cfg.updated(warm_start=[{"lr_schedule": "rewind", "lr": 0.01}]))
    only_rewind = SearchConfig.create(lr_schedules=["rewind"])
    one_shot = _ask_with(only_rewind, warm_start_points(only_rewind)[0])
    assert (one_shot["lr_schedule"], one_shot["lr"]) == ("rewind", None)


def test_distillation_is_absent_by_default_and_a_choice_when_asked() -> None:
    assert all("distill" not in c and "distill" not in p for p, c in _sample(SearchConfig.create(), 10))
    cfg = SearchConfig.create(distill_weights=[0, 0.5], distill_temperature=3.0)
    seen = set()
    for params, config in _sample(cfg, 40):
        seen.add(config["distill"])
        assert params["distill"] == config["distill"] and config["distill_temperature"] == 3.0
    assert seen == {0.0, 0.5}
    # warm starts use the first weight listed; one weight is fixed, not an Optuna parameter
    assert {p["distill"] for p in warm_start_points(cfg)} == {0.0}
    fixed = SearchConfig.create(distill_weights=[0.9])
    assert all("distill" not in p for p in warm_start_points(fixed))
    assert {c["distill"] for _, c in _sample(fixed, 5)} == {0.9}
    with pytest.raises(ConfigError, match="distill_weights.*in \\[0, 1\\].*1.5"):
        SearchConfig.create(distill_weights=[0.5, 1.5])
    with pytest.raises(ConfigError, match="distill_temperature"):
        SearchConfig.create(distill_weights=[0.5], distill_temperature=0)
    with pytest.raises(ConfigError, match="'distill' needs distill_weights"):
        warm_start_points(SearchConfig.create(warm_start=[{"distill": 0.5}]))
    with pytest.raises(ConfigError, match="distill=0.3 is not one of"):
        warm_start_points(cfg.updated(warm_start=[{"distill": 0.3}]))


def test_one_shot_lrs_is_one_shot_at_three_lrs_in_the_range() -> None:
    cfg = SearchConfig.create(warm_start=["one_shot_lrs"])
    schedules = [_ask_with(cfg, p) for p in warm_start_points(cfg)]
    one_shot = _ask_with(cfg, warm_start_points(cfg.updated(warm_start=["one_shot"]))[0])
    # the upper two thirds of 0.01-0.3, a third apart in log lr: the top is lr_max itself
    assert [s["lr"] for s in schedules] == pytest.approx([0.01 * 30 ** (1 / 3), 0.01 * 30 ** (2 / 3), 0.3])
    narrow = SearchConfig.create(warm_start=["one_shot_lrs"], lr_min=0.001, lr_max=0.008)
    assert [_ask_with(narrow, p)["lr"] for p in warm_start_points(narrow)] == pytest.approx([0.002, 0.004, 0.008])
    for s in schedules:
        assert {k: v for k, v in s.items() if k != "lr"} == {k: v for k, v in one_shot.items() if k != "lr"}
    rewinding = SearchConfig.create(lr_schedules=["rewind"], warm_start=["one_shot_lrs"])
    assert len(warm_start_points(rewinding)) == 1  # no lr to vary


def test_annealing_preset_is_a_three_task_annealing_schedule() -> None:
    cfg = SearchConfig.create(target_sparsity=0.98, warm_start=["one_shot_lrs", "annealing"])
    points = warm_start_points(cfg)
    assert len(points) == 4
    config = _ask_with(cfg, points[-1])
    assert (config["generator"], config["mode"], config["total_iteration"]) == ("simulated_annealing", "normal", 3)
    assert config["lr"] == pytest.approx(math.sqrt(cfg.lr_min * cfg.lr_max))
    with pytest.raises(ConfigError, match="needs max_iterations >= 3"):
        SearchConfig.create(warm_start=["annealing"], max_iterations=2)
