"""Statistics pruners (taylorfo, apoz, mean_activation) in the search: opt-in, built with
the workload's trainer, their statistics pass paid in the trial's fine-tune epochs, and
bad combinations refused before any trial runs.

The workloads below are named to get_workload as ``tests.search.test_stats_pruners:<factory>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest

from tests.workloads.test_pretrained import TRAININGS, TinyWorkload
from tune_prune.errors import ConfigError
from tune_prune.pruning.pruners.taylor import TaylorFOWeightPruner
from tune_prune.search import build
from tune_prune.search.config import SearchConfig
from tune_prune.search.registry import DEFAULT_STATS_BATCHES
from tune_prune.search.results import best_per_trial
from tune_prune.search.runner import fixed_config, run_search
from tune_prune.search.schedule import run_schedule
from tune_prune.search.space import define_space
from tune_prune.workloads import get_workload

from .conftest import WORKLOAD_OPTIONS

optuna.logging.set_verbosity(optuna.logging.WARNING)

HERE = "tests.search.test_stats_pruners:"


class _NoTrainer(TinyWorkload):
    name = "no_trainer"
    trainer = None  # type: ignore[assignment]


class _NoStepsPerEpoch(TinyWorkload):
    name = "no_steps_per_epoch"
    steps_per_epoch = None  # type: ignore[assignment]


def no_trainer(**kw: Any) -> TinyWorkload:
    return _NoTrainer(**kw)


def no_steps_per_epoch(**kw: Any) -> TinyWorkload:
    return _NoStepsPerEpoch(**kw)


def _pruner_choices(cfg: SearchConfig) -> tuple[str, ...]:
    study = optuna.create_study()
    trial = study.ask()
    define_space(trial, cfg)
    return tuple(trial.distributions["pruner"].choices)


# ------------------------------------------------------------------ the space


def test_space_offers_statistics_pruners_only_when_named() -> None:
    default = SearchConfig.create(sparsity_kind="channels")
    assert default.allowed_pruners == ["l1", "l2", "fpgm"]
    assert _pruner_choices(default) == ("l1", "l2", "fpgm")
    assert default.stats_batches == DEFAULT_STATS_BATCHES == 16

    named = SearchConfig.create(sparsity_kind="channels", pruners=["l1", "taylorfo", "APoZ", "mean_activation"])
    assert _pruner_choices(named) == ("l1", "taylorfo", "apoz", "mean_activation")
    # each statistics pruner's mode is searched like l1's
    for pruner in ("taylorfo", "apoz", "mean_activation"):
        study = optuna.create_study()
        study.enqueue_trial({"pruner": pruner, "generator": "agp"})
        trial = study.ask()
        out = define_space(trial, named)
        assert out["pruner"] == pruner
        assert trial.distributions[f"mode__{pruner}"].choices == ("normal", "global", "dependency_aware")


def test_weights_default_is_unchanged() -> None:
    assert SearchConfig.create().allowed_pruners == ["level"]


# ------------------------------------------------------------------ config errors


@pytest.mark.parametrize("pruner", ["taylorfo", "apoz", "mean_activation"])
def test_statistics_pruner_for_weights_names_the_field(pruner: str) -> None:
    with pytest.raises(ConfigError, match=rf"pruners.*'{pruner}'.*sparsity_kind='weights'"):
        SearchConfig.create(sparsity_kind="weights", pruners=[pruner])


def test_slim_is_not_searchable() -> None:
    with pytest.raises(ConfigError, match="pruners.*unsupported pruner 'slim'"):
        SearchConfig.create(sparsity_kind="channels", pruners=["slim"])


@pytest.mark.parametrize("value", [0, -1, 1.5, "many"])
def test_bad_stats_batches_names_the_field(value: Any) -> None:
    with pytest.raises(ConfigError, match="stats_batches"):
        SearchConfig.create(sparsity_kind="channels", pruners=["taylorfo"], stats_batches=value)


@pytest.mark.parametrize(
    ("factory", "match"),
    [("no_trainer", "offers no trainer"), ("no_steps_per_epoch", "steps_per_epoch")],
)
def test_workload_without_trainer_fails_in_preflight(tmp_path: Path, no_ray, factory: str, match: str) -> None:
    TRAININGS.clear()
    cfg = SearchConfig.create(workload=HERE + factory, storage_path=str(tmp_path / "res"), name="st",
                              sparsity_kind="channels", pruners=["l1", "taylorfo"])
    with pytest.raises(ConfigError, match=rf"pruners=\['l1', 'taylorfo'\]: \['taylorfo'\].*{match}"):
        run_search(cfg)
    assert not (tmp_path / "res").exists() and TRAININGS == []


def test_a_search_without_statistics_pruners_does_not_need_a_trainer(tmp_path: Path, no_ray) -> None:
    """The check is for named statistics pruners only (a plain channel search gets further:
    to the prunable-layer check, which the tiny MLP fails)."""
    cfg = SearchConfig.create(workload=HERE + "no_trainer", storage_path=str(tmp_path / "res"), name="st",
                              sparsity_kind="channels")
    with pytest.raises(ConfigError, match="cannot be pruned"):
        run_search(cfg)


def test_make_pruner_refuses_a_statistics_pruner_without_trainer() -> None:
    with pytest.raises(ConfigError, match="pruner='taylorfo'.*trainer"):
        build.make_pruner("taylorfo", "normal", None)
    workload = get_workload("digits", **WORKLOAD_OPTIONS)
    pruner = build.make_pruner("taylorfo", "global", None, {}, build.statistics_kwargs(workload, 3))
    assert isinstance(pruner, TaylorFOWeightPruner)
    assert (pruner.mode, pruner.training_batches) == ("global", 3)
    assert pruner.criterion is not None and callable(pruner.traced_optimizer)
    # other pruners ignore the statistics keywords
    assert build.make_pruner("l1", "normal", None, {}, build.statistics_kwargs(workload, 3)).mode == "normal"


# ------------------------------------------------------------------ a trial


def _channel_trial(cache: Path, pruner: str, generator: str = "agp", n: int = 2,
                   batches: int = 4) -> dict[str, Any]:
    cfg = SearchConfig.create(workload="digits", workload_options=WORKLOAD_OPTIONS, sparsity_kind="channels",
                              pruners=["l1", "taylorfo", "apoz"], baseline_cache_dir=str(cache),
                              target_sparsity=0.5, test_split=None, stats_batches=batches)
    trial = {"generator": generator, "pruner": pruner, "mode": "normal", "total_iteration": n,
             "finetune_epochs": 0.25, "lr": 0.01, "reset_weight": generator == "lottery_ticket",
             "lr_schedule": None}
    return {"fixed": fixed_config(cfg), **trial}


@pytest.mark.parametrize("pruner", ["taylorfo", "apoz"])
def test_statistics_trial_pays_its_statistics_pass(baseline_cache: Path, monkeypatch, pruner: str) -> None:
    per_epoch = get_workload("digits", **WORKLOAD_OPTIONS).steps_per_epoch()
    stats = 4 / per_epoch  # 4 batches of the trainer before each of the 2 pruning steps
    assert stats == pytest.approx(0.25)  # digits: 16 batches of 64 per epoch
    from tune_prune.workloads.base import ClassificationWorkload

    calls: list[int] = []
    own = ClassificationWorkload.trainer

    def counting(self, model, optimizer, criterion, max_steps=None):
        calls.append(1)
        return own(self, model, optimizer, criterion, max_steps)

    monkeypatch.setattr(ClassificationWorkload, "trainer", counting)
    rows = run_schedule(_channel_trial(baseline_cache, pruner))
    assert len(rows) == 2 and len(calls) == 2  # one statistics pass per pruning step
    assert [r["stats_epochs_cum"] for r in rows] == pytest.approx([stats, 2 * stats])
    assert [r["finetune_epochs_cum"] for r in rows] == pytest.approx([0.25 + stats, 2 * (0.25 + stats)])
    assert rows[-1]["pruner"] == pruner and rows[-1]["reached_target"]
    # what the search sums as paid (finalists, screening, the CLI) includes the pass
    table = pd.DataFrame([{**r, "trial_id": "t"} for r in rows])
    assert float(best_per_trial(table)["finetune_epochs_total"].iloc[0]) == pytest.approx(2 * (0.25 + stats))


def test_norm_pruner_trial_pays_no_statistics(baseline_cache: Path) -> None:
    rows = run_schedule(_channel_trial(baseline_cache, "l1"))
    assert [r["stats_epochs_cum"] for r in rows] == [0.0, 0.0]
    assert [r["finetune_epochs_cum"] for r in rows] == pytest.approx([0.25, 0.5])


def test_retrained_ticket_pays_no_second_statistics_pass(baseline_cache: Path) -> None:
    """lottery_ticket: two pruning steps (each with its pass), then the retrained ticket
    (a fine-tune, no pruning step)."""
    stats = 4 / get_workload("digits", **WORKLOAD_OPTIONS).steps_per_epoch()
    rows = run_schedule(_channel_trial(baseline_cache, "taylorfo", "lottery_ticket", 2))
    assert len(rows) == 3
    assert [r["stats_epochs_cum"] for r in rows] == pytest.approx([stats, 2 * stats, 2 * stats])
    assert [r["finetune_epochs_cum"] for r in rows] == pytest.approx(
        [0.25 + stats, 2 * (0.25 + stats), 2 * (0.25 + stats) + 0.25]
    )


def test_resumed_statistics_trial_matches_an_uninterrupted_one(baseline_cache: Path, tmp_path: Path) -> None:
    """The statistics pass's data order is a function of the iteration, not of how many
    trainer calls this process made, so a trial resumed from its checkpoint prunes the
    same channels as an uninterrupted one."""
    import shutil

    config = _channel_trial(baseline_cache, "taylorfo", "linear", 3)
    full = run_schedule(config)
    ckpts: list[Path] = []

    def kill_after_first(metrics: dict, checkpoint_dir: Path) -> None:
        dst = tmp_path / f"ckpt_{len(ckpts)}"
        shutil.copytree(checkpoint_dir, dst)
        ckpts.append(dst)
        raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        run_schedule(config, kill_after_first)
    resumed = run_schedule(config, restore_from=ckpts[0])
    assert [r["iteration"] for r in resumed] == [2, 3]
    for a, b in zip(full[1:], resumed):
        assert b["stats_epochs_cum"] == pytest.approx(a["stats_epochs_cum"])
        assert b["finetune_epochs_cum"] == pytest.approx(a["finetune_epochs_cum"])
        assert b["score"] == a["score"]


def test_cli_flags_name_statistics_pruners_and_batches() -> None:
    from tune_prune.search.cli import parse_config

    cfg, _ = parse_config(["--sparsity-kind", "channels", "--pruners", "l1", "taylorfo", "--stats-batches", "8"])
    assert (cfg.allowed_pruners, cfg.stats_batches) == (["l1", "taylorfo"], 8)
    assert fixed_config(cfg)["stats_batches"] == 8
    with pytest.raises(ConfigError, match="pruners"):
        parse_config(["--pruners", "taylorfo"])  # sparsity_kind defaults to weights
