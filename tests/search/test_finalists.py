"""Screened search: trials at a fraction of the budget, the best again at the full budget.

Unit tests of the pick and the split; one real end-to-end screened search on digits
(Ray, Tune, Optuna) that exports its pick and checks the budgets it ran with.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tune_prune.errors import ConfigError
from tune_prune.search.config import SearchConfig
from tune_prune.search.finalists import (
    FINAL_DIR,
    FINALIST_KEY,
    final_fixed,
    pick_finalists,
    resolve_select_split,
    unwrap,
)
from tune_prune.search.space import finetune_calls

from .conftest import WORKLOAD_OPTIONS


def _trial_dir(root: Path, name: str, **schedule) -> str:
    d = root / name
    d.mkdir()
    params = {"fixed": {"seed": 0}, "pruner": "level", "mode": "global", "reset_weight": False,
              "finetune_epochs": 0.5, "lr": 0.01, **schedule}
    (d / "params.json").write_text(json.dumps(params))
    return str(d)


def test_pick_finalists_distinct_at_target_in_order_at_the_full_budget(tmp_path) -> None:
    cfg = SearchConfig.create(screen_fraction=0.25, finalists=2, finetune_budget=4.0)
    best = pd.DataFrame([
        {"trial_id": "below", "objective": -0.6, "reached_target": False,
         "trial_dir": _trial_dir(tmp_path, "below", generator="agp", total_iteration=3)},
        {"trial_id": "a", "objective": 0.9, "reached_target": True,
         "trial_dir": _trial_dir(tmp_path, "a", generator="agp", total_iteration=1)},
        {"trial_id": "a_again", "objective": 0.8, "reached_target": True,  # same schedule as 'a'
         "trial_dir": _trial_dir(tmp_path, "a_again", generator="agp", total_iteration=1)},
        {"trial_id": "b", "objective": 0.7, "reached_target": True,
         "trial_dir": _trial_dir(tmp_path, "b", generator="lottery_ticket", total_iteration=3,
                                 reset_weight=True, rewind="dense")},
        {"trial_id": "c", "objective": 0.6, "reached_target": True,
         "trial_dir": _trial_dir(tmp_path, "c", generator="linear", total_iteration=2)},
    ]).sort_values("objective", ascending=False)
    finalists = pick_finalists(best, cfg)
    assert [f["screen_trial_id"] for f in finalists] == ["a", "b"]
    # by default a warm start is a finalist only by screening among the best
    warm = best.assign(warm_start=best["trial_id"].eq("c"))
    assert [f["screen_trial_id"] for f in pick_finalists(warm, cfg)] == ["a", "b"]
    # warm_finalist: the best warm start is a finalist too (the pick never falls below it), once
    guarded = cfg.updated(warm_finalist=True)
    assert [f["screen_trial_id"] for f in pick_finalists(warm, guarded)] == ["a", "b", "c"]
    # the best warm start (a_again: a's schedule) is a finalist already: nothing added
    warm = best.assign(warm_start=best["trial_id"].isin(["c", "a_again"]))
    assert [f["screen_trial_id"] for f in pick_finalists(warm, guarded)] == ["a", "b"]
    assert finalists[0]["finetune_epochs"] == 12.0  # one-shot: the whole full budget (3 x 4 by default)
    assert finalists[1]["finetune_epochs"] == pytest.approx(12.0 / 4)  # 3 tickets + the retrain
    assert all("fixed" not in f for f in finalists)
    assert finetune_calls(finalists[1]) * finalists[1]["finetune_epochs"] == pytest.approx(cfg.full_budget)
    assert pick_finalists(best[~best["reached_target"]], cfg) == []


def test_final_budget_and_unwrap() -> None:
    cfg = SearchConfig.create(screen_fraction=0.5, finetune_budget=6.0, final_budget=10.0)
    assert (cfg.screen_budget, cfg.full_budget, cfg.screening) == (3.0, 10.0, True)
    default = SearchConfig.create()
    assert (default.screening, default.screen_budget, default.full_budget) == (True, 3.75, 15.0)  # a quarter of the 3x final budget
    plain = SearchConfig.create(screen_fraction=1)
    assert (plain.screening, plain.screen_budget, plain.full_budget) == (False, 5.0, 5.0)
    # where screening cannot apply, the default turns it off; asked for, it is an error
    assert not SearchConfig.create(finetune_epochs=[1]).screening
    assert not SearchConfig.create(multi_objective="macs").screening
    assert not SearchConfig.create().updated(multi_objective="macs").screening
    fixed = final_fixed({"seed": 1}, "select")
    assert fixed == {"seed": 1, "score_split": "select", "stage": "final"}
    wrapped = {"fixed": fixed, FINALIST_KEY: {"generator": "agp", "lr": 0.01}}
    assert unwrap(wrapped) == {"fixed": fixed, "generator": "agp", "lr": 0.01}
    assert unwrap({"fixed": fixed, "generator": "agp"}) == {"fixed": fixed, "generator": "agp"}


@pytest.mark.parametrize("values, match", [
    ({"screen_fraction": 0.5, "finetune_budget": None, "finetune_epochs": [1.0]}, "screen_fraction=0.5"),
    ({"screen_fraction": 0.5, "finalists": 9, "num_samples": 8}, "finalists=9"),
    ({"screen_fraction": 0.5, "multi_objective": "macs"}, "multi_objective"),
    ({"screen_fraction": 1.5}, "screen_fraction"),
    ({"screen_fraction": 0.0}, "screen_fraction"),
    ({"finalists": 0}, "finalists"),
])
def test_bad_screening_settings_name_the_field(values, match) -> None:
    with pytest.raises(ConfigError, match=match):
        SearchConfig.create(**values)


def test_select_split_auto_uses_select_when_the_workload_has_one() -> None:
    from tune_prune.workloads import get_workload

    digits = get_workload("digits", **WORKLOAD_OPTIONS)
    model = digits.build_model()
    assert resolve_select_split(SearchConfig.create(), digits, model) == "val"  # digits has none
    with pytest.raises(ConfigError, match="select_split='select'"):
        resolve_select_split(SearchConfig.create(select_split="select"), digits, model)
    mnist1d = get_workload("mnist1d", num_samples=600)
    assert resolve_select_split(SearchConfig.create(workload="mnist1d"), mnist1d,
                                mnist1d.build_model()) == "select"


@pytest.mark.slow
def test_screened_search_end_to_end(baseline_cache, tmp_path) -> None:
    """Three screened trials at a quarter of the budget, the best two again at 3x it (the default)."""
    from tune_prune.search.cli import main
    from tune_prune.search.results import collect

    storage = tmp_path / "results"
    code = main([
        "--num-samples", "3", "--max-iterations", "2", "--finetune-budget", "0.5",
        "--screen-fraction", "0.25", "--finalists", "2", "--generators", "agp", "linear",
        "--workload-option", "baseline_epochs=3", "--baseline-cache-dir", str(baseline_cache),
        "--storage-path", str(storage), "--name", "screened", "--num-cpus", "2",
        "--no-include-dashboard", "--export", str(tmp_path / "export"),
    ])
    assert code == 0
    exp = storage / "screened"
    screened, final = collect(exp), collect(exp / FINAL_DIR)
    assert screened["trial_id"].nunique() == 3 and final["trial_id"].nunique() == 2
    # each schedule splits its budget over its fine-tunes: 0.125 epochs screened, 3 x 0.5 final
    for table, budget in ((screened, 0.125), (final, 1.5)):
        last = table.sort_values("iteration").groupby("trial_id").tail(1)
        assert (last["finetune_epochs_cum"] - budget).abs().max() < 1e-9
    assert set(final["stage"]) == {"final"} and set(screened["stage"]) == {"search"}
    assert set(final["screen_trial_id"]) <= set(screened["trial_id"])
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["final"]["select_split"] == "val"  # digits has no select split
    pick = pd.read_csv(exp / FINAL_DIR / "best_per_trial.csv", dtype={"trial_id": str}).iloc[0]
    spec = json.loads((tmp_path / "export" / "spec.json").read_text())
    assert spec["metrics"]["trial_id"] == pick["trial_id"]  # the export is the best finalist
    assert spec["metrics"]["score"] == pytest.approx(pick["score"])
