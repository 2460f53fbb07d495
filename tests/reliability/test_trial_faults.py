"""Trial-level faults without Ray (run_schedule with a recording report; fast).

* resuming from any checkpoint gives bit-identical scores and masks to an
  uninterrupted run, whatever the process's global RNG state was (per-iteration seeding
  from (seed, iteration); the workload here draws from the global torch RNG);
* a lottery-ticket trial (reset_weight) killed after its last task still reports its
  retrained final row after the resume (the ticket comes from the checkpoint);
* divergence (NaN/inf loss, NaN score, non-number score) raises WorkloadError and
  reports nothing non-finite.
"""

from __future__ import annotations

import math

import optuna
import pytest
import torch

from tune_prune.errors import TunePruneError, WorkloadError
from tune_prune.export import MASKS_FILE
from tune_prune.search.config import SearchConfig
from tune_prune.search.reporting import checked_score
from tune_prune.search.runner import fixed_config
from tune_prune.search.schedule import run_schedule
from tune_prune.search.space import define_space
from tune_prune.workloads.digits import DigitsWorkload

from ._helpers import Recorder, assert_masks_equal, load_masks
from .conftest import WORKLOAD_OPTIONS


class _Killed(Recorder):
    """Records like Recorder, then dies (KeyboardInterrupt) after ``after`` reports."""

    def __init__(self, root, after: int) -> None:
        super().__init__(root)
        self.after = after

    def __call__(self, metrics, checkpoint_dir) -> None:
        super().__call__(metrics, checkpoint_dir)
        if len(self.rows) >= self.after:
            raise KeyboardInterrupt("simulated kill")


def _config(cache, workload="digits", options=None, lr=0.01, n=3, **extra) -> dict:
    cfg = SearchConfig.create(workload=workload, workload_options=options or WORKLOAD_OPTIONS,
                              baseline_cache_dir=str(cache), finetune_epochs=[0.1], lr_max=1e5)
    params = {"generator": "linear", "pruner": "level", "mode__level": "normal", "total_iteration": n,
              "reset_weight": False, "finetune_epochs": 0.1, "lr": lr, "rewind": "dense", **extra}
    trial = define_space(optuna.trial.FixedTrial(params), cfg)
    return {"fixed": fixed_config(cfg, True), **trial}


def _run(root, config, report, ckpt=None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    run_schedule(config, report, restore_from=ckpt)


@pytest.mark.parametrize("kill_after", [1, 2])
def test_resume_is_bit_identical_whatever_the_global_rng(tmp_path, rel_baseline_cache,
                                                         kill_after) -> None:
    config = _config(tmp_path / "noisy_cache", "tests.reliability.workloads:noisy",
                     {"baseline_epochs": 0.25})
    torch.manual_seed(123)  # the uninterrupted run starts from one global RNG state ...
    full = Recorder(tmp_path / "full")
    _run(tmp_path / "full", config, full)
    torch.manual_seed(456)  # ... the killed one from another
    killed = _Killed(tmp_path / "killed", after=kill_after)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "killed", config, killed)
    torch.manual_seed(789)  # and the resumed process from a third
    resumed = Recorder(tmp_path / "resumed")
    ckpt = killed.ckpts[-1]
    _run(tmp_path / "resumed", config, resumed, ckpt)
    assert [r["iteration"] for r in killed.rows + resumed.rows] == [r["iteration"] for r in full.rows]
    for a, b in zip(killed.rows + resumed.rows, full.rows):
        assert a["score"] == b["score"] and a["sparsity"] == b["sparsity"], a["iteration"]
    assert_masks_equal(load_masks(resumed.ckpts[-1] / "result" / MASKS_FILE),
                       load_masks(full.ckpts[-1] / "result" / MASKS_FILE))


def test_ticket_trial_killed_after_last_task_still_reports_retrained_row(
    tmp_path, rel_baseline_cache
) -> None:
    config = _config(rel_baseline_cache, n=2, reset_weight=True)
    full = Recorder(tmp_path / "full")
    _run(tmp_path / "full", config, full)
    assert full.rows[-1]["schedule_done"] and len(full.rows) == 3  # 2 tickets + retrained
    killed = _Killed(tmp_path / "killed", after=2)  # dies right after the last ticket's report
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "killed", config, killed)
    resumed = Recorder(tmp_path / "resumed")
    ckpt = killed.ckpts[-1]
    _run(tmp_path / "resumed", config, resumed, ckpt)
    assert [r["iteration"] for r in resumed.rows] == [3]
    assert resumed.rows[-1]["schedule_done"]
    assert resumed.rows[-1]["score"] == full.rows[-1]["score"]
    assert_masks_equal(load_masks(resumed.ckpts[-1] / "result" / MASKS_FILE),
                       load_masks(full.ckpts[-1] / "result" / MASKS_FILE))


def test_diverging_finetune_raises_and_reports_nothing_non_finite(
    tmp_path, rel_baseline_cache
) -> None:
    rec = Recorder(tmp_path / "rec")
    with pytest.raises(WorkloadError, match="loss became"):
        _run(tmp_path / "rec", _config(rel_baseline_cache, lr=1e5), rec)
    assert all(math.isfinite(r["score"]) for r in rec.rows)


# (a string or tensor score is coerced to float by the scheduler; the driver's preflight
# rejects such a workload before any trial: test_bad_input.py)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), None])
def test_bad_score_mid_trial_raises_before_any_report(tmp_path, rel_baseline_cache, monkeypatch,
                                                      bad) -> None:
    monkeypatch.setattr(DigitsWorkload, "evaluate", lambda self, model, split="val": bad)
    rec = Recorder(tmp_path / "rec")
    # WorkloadError from the trial, or the scheduler's own ConfigError (NaN, non-number)
    with pytest.raises(TunePruneError, match="score=|evaluator"):
        _run(tmp_path / "rec", _config(rel_baseline_cache), rec)
    assert rec.rows == []


def test_checked_score() -> None:
    assert checked_score(0.5, 1) == 0.5 and checked_score(1, 1) == 1.0
    for bad in (True, float("-inf"), [0.5], {}):
        with pytest.raises(WorkloadError):
            checked_score(bad, 3)
