"""The trial body without Ray: metrics per iteration, checkpoints, resume, objective floor."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import optuna
import pytest

from tune_prune.export import load_pruned
from tune_prune.search import metrics as M
from tune_prune.search.config import SearchConfig
from tune_prune.search.reporting import RESULT_DIR, SCHEDULER_DIR, STATE_FILE
from tune_prune.search.runner import fixed_config
from tune_prune.search.schedule import run_schedule
from tune_prune.search.space import define_space

from .conftest import WORKLOAD_OPTIONS


class _Recorder:
    """A run_schedule report callable: keeps metrics and a copy of each checkpoint folder."""

    def __init__(self, root: Path, fail_after: int | None = None) -> None:
        self.rows: list[dict] = []
        self.ckpts: list[Path] = []
        self.root = root
        self.fail_after = fail_after

    def __call__(self, metrics: dict, checkpoint_dir: Path) -> None:
        self.rows.append(dict(metrics))
        dst = self.root / f"ckpt_{len(self.rows)}"
        shutil.copytree(checkpoint_dir, dst)
        self.ckpts.append(dst)
        if self.fail_after is not None and len(self.rows) >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")


def _config(cache: Path, generator: str = "agp", n: int = 2, **extra: object) -> dict:
    cfg = SearchConfig.create(workload_options=WORKLOAD_OPTIONS, baseline_cache_dir=str(cache),
                              finetune_epochs=[0.25], lr_schedules=["cosine", "rewind"])
    params = {"generator": generator, "pruner": "level", "mode__level": "global", "total_iteration": n,
              "reset_weight": False, "finetune_epochs": 0.25, "lr": 0.01, "rewind": "dense",
              "lr_schedule": "cosine", **extra}
    trial = define_space(optuna.trial.FixedTrial(params), cfg)
    return {"fixed": fixed_config(cfg, True), **trial}


def test_reports_every_iteration_with_checkpoint(tmp_path, baseline_cache) -> None:
    rec = _Recorder(tmp_path)
    run_schedule(_config(baseline_cache, "agp", 2), rec)
    assert [r["iteration"] for r in rec.rows] == [1, 2]
    assert [r[M.SCHEDULE_DONE] for r in rec.rows] == [False, True]
    last = rec.rows[-1]
    assert last["reached_target"] and abs(last["sparsity"] - 0.8) < 0.02
    assert last["objective"] == last["score"] and 0 <= last["score"] <= 1
    assert rec.rows[0]["objective"] < 0  # below target: the floor
    assert rec.rows[0]["progress"] < last["progress"] == 1.0
    assert last["finetune_epochs_cum"] == pytest.approx(0.5)
    assert last["macs_ratio"] < 1 and last["params_ratio"] < 1
    for ck in rec.ckpts:
        assert (ck / STATE_FILE).exists() and (ck / SCHEDULER_DIR / "scheduler.json").exists()
        assert (ck / RESULT_DIR / "model.pt").exists() and (ck / RESULT_DIR / "spec.json").exists()


def test_killed_trial_resumes_from_checkpoint(tmp_path, baseline_cache) -> None:
    full = _Recorder(tmp_path / "full")
    run_schedule(_config(baseline_cache, "linear", 3), full)

    killed = _Recorder(tmp_path / "killed", fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        run_schedule(_config(baseline_cache, "linear", 3), killed)
    resumed = _Recorder(tmp_path / "resumed")
    run_schedule(_config(baseline_cache, "linear", 3), resumed, restore_from=killed.ckpts[-1])
    assert [r["iteration"] for r in resumed.rows] == [2, 3]
    assert resumed.rows[-1]["finetune_epochs_cum"] == full.rows[-1]["finetune_epochs_cum"]
    assert resumed.rows[-1]["sparsity"] == pytest.approx(full.rows[-1]["sparsity"])
    assert resumed.rows[-1]["score"] == pytest.approx(full.rows[-1]["score"], abs=0.02)


@pytest.mark.parametrize("generator", ["agp", "lottery_ticket"])
def test_test_score_is_the_reported_model_on_the_test_split(tmp_path, baseline_cache,
                                                            generator) -> None:
    """test_score belongs to the very model stored with the row, scored on 'test' (not 'val')."""
    from tune_prune.pruning.masks import unwrap_model, wrap_model
    from tune_prune.workloads import get_workload

    rec = _Recorder(tmp_path)
    run_schedule(_config(baseline_cache, generator, 2), rec)
    workload = get_workload("digits", **WORKLOAD_OPTIONS)
    for row, ck in zip(rec.rows, rec.ckpts):
        result = load_pruned(ck / RESULT_DIR, workload)
        model = result.model
        wrap_model(model, result.masks)
        try:
            assert row["test_score"] == workload.evaluate(model, "test")
            assert row["score"] == workload.evaluate(model, "val")
        finally:
            unwrap_model(model)
    assert any(r["test_score"] != r["score"] for r in rec.rows)


def test_test_split_none_reports_nan(tmp_path, baseline_cache) -> None:
    rec = _Recorder(tmp_path)
    config = _config(baseline_cache, "agp", 1)
    config["fixed"]["test_split"] = None
    run_schedule(config, rec)
    assert len(rec.rows) == 1 and math.isnan(rec.rows[0]["test_score"])


def test_lottery_ticket_final_row_is_retrained_at_target(tmp_path, baseline_cache) -> None:
    rec = _Recorder(tmp_path)
    run_schedule(_config(baseline_cache, "lottery_ticket", 2), rec)
    assert len(rec.rows) == 3  # two tickets + the retrained last ticket
    assert [r["es_comparable"] for r in rec.rows] == [False] * 3
    last = rec.rows[-1]
    assert last[M.SCHEDULE_DONE] and last["reached_target"]
    assert last["task_id"].endswith("retrained")


def test_objective_floor_orders_unreached_below_reached() -> None:
    reached = M.objective(0.01, 0.8, 0.8, 0.02, 1.0)
    unreached = M.objective(0.99, 0.5, 0.8, 0.02, 0.625)
    assert reached == 0.01 and unreached < 0 < reached
    assert M.objective(0.99, 0.2, 0.8, 0.02, 0.25) < unreached  # closer to target ranks higher
    assert M.objective(0.5, 0.5, 0.8, 0.02, 0.6, higher_is_better=False) > 1e5
    assert math.isclose(M.progress(0.4, 0.8, 0.7), 0.7)  # monotone


@pytest.mark.parametrize("mode", ["lamp", "erk"])
def test_layer_adaptive_modes_reach_the_target_with_every_layer_alive(tmp_path, baseline_cache, mode) -> None:
    """lamp/erk get one total_sparsity entry (build.RANKED_MODES); no layer is pruned away."""
    rec = _Recorder(tmp_path)
    config = _config(baseline_cache, "agp", 1, mode__level=mode)
    config["fixed"]["target_sparsity"] = 0.95
    assert config["mode"] == mode
    run_schedule(config, rec)
    assert rec.rows[-1]["reached_target"] and abs(rec.rows[-1]["sparsity"] - 0.95) < 0.005
    from tune_prune.export import load_pruned

    masks = load_pruned(rec.ckpts[-1] / RESULT_DIR).masks  # the folder names its workload
    assert masks and all(bool(m["weight"].any()) for m in masks.values())


def test_learning_rate_rewinding_trial_runs_without_an_lr(tmp_path, baseline_cache) -> None:
    rec = _Recorder(tmp_path)
    config = _config(baseline_cache, "agp", 1, lr_schedule="rewind")
    assert config["lr"] is None
    run_schedule(config, rec)
    assert rec.rows[-1]["reached_target"] and 0 <= rec.rows[-1]["score"] <= 1


def test_distilling_trial_learns_from_the_unpruned_model(tmp_path, baseline_cache) -> None:
    """distill 0 is the plain trial bit for bit; distill > 0 fine-tunes differently, and its
    teacher is the dense baseline (a ticket trial's every fine-tune included)."""
    plain = run_schedule(_config(baseline_cache, "agp", 2), _Recorder(tmp_path / "a"))
    zero = run_schedule({**_config(baseline_cache, "agp", 2), "distill": 0.0}, _Recorder(tmp_path / "b"))
    assert [r["score"] for r in zero] == [r["score"] for r in plain]
    taught = run_schedule({**_config(baseline_cache, "agp", 2), "distill": 0.9, "distill_temperature": 2.0},
                          _Recorder(tmp_path / "c"))
    assert len(taught) == 2 and taught[-1]["reached_target"]
    assert [r["score"] for r in taught] != [r["score"] for r in plain]
    ticket = run_schedule({**_config(baseline_cache, "lottery_ticket", 2), "distill": 0.5}, _Recorder(tmp_path / "d"))
    assert ticket[-1]["reached_target"] and 0 <= ticket[-1]["score"] <= 1


def test_channel_target_counts_as_reached_within_per_layer_rounding(tmp_path, baseline_cache) -> None:
    """int(s * n) channels per layer can stop short of s by more than the 0.02 tolerance
    (0.523 for a 0.562 target on digits): the trial's tolerance widens by that slack."""
    from tune_prune.search import build
    from tune_prune.workloads import get_workload

    model = get_workload("digits", **WORKLOAD_OPTIONS).build_model()
    normal = build.make_config_list("channels", "normal", 0.562)
    slack = build.channel_rounding_slack(model, normal)
    assert 0.02 < slack < 0.07
    assert build.channel_rounding_slack(model, build.make_config_list("channels", "global", 0.562)) == 0.0
    cfg = SearchConfig.create(workload_options=WORKLOAD_OPTIONS, baseline_cache_dir=str(baseline_cache),
                              finetune_epochs=[0.25], sparsity_kind="channels", target_sparsity=0.562)
    params = {"generator": "agp", "pruner": "l1", "mode__l1": "normal", "total_iteration": 1,
              "reset_weight": False, "finetune_epochs": 0.25, "lr": 0.05}
    config = {"fixed": fixed_config(cfg, True), **define_space(optuna.trial.FixedTrial(params), cfg)}
    rows = run_schedule(config, _Recorder(tmp_path))
    assert rows[-1]["sparsity"] < 0.562 - 0.02  # short of the target by the rounding ...
    assert rows[-1]["reached_target"] and rows[-1]["objective"] == rows[-1]["score"]  # ... yet at target
