"""Faults inside a running search: one small real search (Ray, digits; slow).

Trials run one at a time (max_concurrent=1), 3 pruning iterations each, with two
injected faults (``TUNE_PRUNE_TEST_FAULT``, see tune_prune.search.trainable):

* trial A raises in iteration 2, on its first attempt and on its retry: it must end
  failed, with its message in the result tables, Optuna state FAIL (not COMPLETE with
  its iteration-1 value, which Ray's OptunaSearch would tell), ranked last; and the
  search must go on to trial B;
* trial B's worker is SIGKILLed while fine-tuning iteration 3: it must resume from its
  iteration-2 checkpoint in a new worker (FailureConfig), report every iteration once,
  count as complete, and end with exactly the masks and score of an uninterrupted
  in-process run of the same trial config (per-iteration seeding).
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest

from tune_prune.export import MASKS_FILE
from tune_prune.search.config import SearchConfig
from tune_prune.search.faults import FAULT_ENV
from tune_prune.search.runner import run_search
from tune_prune.search.schedule import run_schedule
from tune_prune.search.searcher import journal_storage

from ._helpers import Recorder, assert_masks_equal, load_masks, result_lines
from .conftest import WORKLOAD_OPTIONS

pytestmark = pytest.mark.slow

ITERATIONS = 3
RAISE_AT = 2
KILL_AT = 3


@pytest.fixture(scope="module")
def faulty_search(tmp_path_factory, rel_baseline_cache):
    import ray

    root = tmp_path_factory.mktemp("faults")
    raised, killed = root / "raised.trial", root / "killed.pid"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {FAULT_ENV: f"raise:{RAISE_AT}:{raised};kill:{KILL_AT}:{killed}"}})
    try:
        cfg = SearchConfig.create(
            workload_options=WORKLOAD_OPTIONS, baseline_cache_dir=str(rel_baseline_cache),
            storage_path=str(root / "res"), name="faults", generators=["agp"],
            min_iterations=ITERATIONS, max_iterations=ITERATIONS, finetune_epochs=[0.1],
            early_stopping="none", num_samples=2, max_concurrent=1, seed=0,
        )
        out = run_search(cfg)
    finally:
        ray.shutdown()
    bad = raised.read_text()
    good = next(t for t in out.best["trial_id"] if t != bad)
    return {"out": out, "bad": bad, "good": good, "killed": killed, "root": root}


def _states(exp: Path) -> dict[str, optuna.trial.TrialState]:
    study = optuna.load_study(study_name="faults", storage=journal_storage(exp))
    return {t.user_attrs.get("tune_trial_id"): t.state for t in study.trials}


def test_raising_trial_is_failed_everywhere_and_search_goes_on(faulty_search) -> None:
    out, bad, good = faulty_search["out"], faulty_search["bad"], faulty_search["good"]
    assert out.num_errors == 1 and len(out.best) == 2
    best = out.best.set_index("trial_id")
    assert best.loc[bad, "status"] == "error"
    assert "fault injection" in best.loc[bad, "error"]
    assert best.loc[good, "status"] == "complete" and best.loc[good, "error"] in ("", None) or \
        pd.isna(best.loc[good, "error"])
    assert out.best.iloc[0]["trial_id"] == good  # the failure is not ranked first
    table = pd.read_csv(out.experiment_dir / "trials.csv", dtype={"trial_id": str})
    assert list(table.loc[table["trial_id"] == bad, "iteration"]) == [1]  # its report is kept
    assert list(json.loads((out.experiment_dir / "failed_trials.json").read_text())) == [bad]
    states = _states(out.experiment_dir)
    assert states[bad] == optuna.trial.TrialState.FAIL  # Ray alone: COMPLETE
    assert states[good] == optuna.trial.TrialState.COMPLETE


def test_killed_worker_resumes_with_identical_masks_and_score(faulty_search, tmp_path, monkeypatch) -> None:
    out, good, killed = faulty_search["out"], faulty_search["good"], faulty_search["killed"]
    assert killed.exists(), "the kill fault never fired"
    trial_dir = out.experiment_dir / f"trial_{good}"
    raw = result_lines(trial_dir)
    planned = raw[-1]["planned_iterations"]  # ITERATIONS, + 1 retrained ticket with reset_weight
    assert planned in (ITERATIONS, ITERATIONS + 1) and raw[-1]["schedule_done"]
    # every iteration reported exactly once: resumed at KILL_AT, not rerun from scratch
    assert [r["iteration"] for r in raw] == list(range(1, planned + 1))
    assert raw[KILL_AT - 2]["pid"] == int(killed.read_text())
    assert raw[KILL_AT - 1]["pid"] != raw[KILL_AT - 2]["pid"], "no restart in a new worker"
    assert (trial_dir / "error.txt").exists()  # Tune recorded the crash ...
    row = out.best.set_index("trial_id").loc[good]
    assert row["status"] == "complete"  # ... yet the recovered trial is not an error

    # the same trial config, uninterrupted, in this process
    config = json.loads((trial_dir / "params.json").read_text())
    rec = Recorder(tmp_path)
    monkeypatch.delenv(FAULT_ENV, raising=False)
    run_schedule(config, rec)
    assert [r["iteration"] for r in rec.rows] == list(range(1, planned + 1))
    assert raw[-1]["score"] == rec.rows[-1]["score"]
    assert raw[-1]["sparsity"] == rec.rows[-1]["sparsity"]
    assert_masks_equal(load_masks(Path(row["checkpoint_path"]) / "result" / MASKS_FILE),
                       load_masks(rec.ckpts[-1] / "result" / MASKS_FILE))
