"""Result tables from synthetic trial folders: one row per report, best per trial, Pareto."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tune_prune.search.results import best_per_trial, collect, pareto_front, write_results


def _trial(exp: Path, tid: str, rows: list[tuple[float, float, float]], done: bool, gen: str = "agp") -> None:
    d = exp / f"trial_{tid}"
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps({"generator": gen, "pruner": "level", "mode": "normal",
                                               "total_iteration": len(rows), "lr": 0.01}))
    lines = []
    for i, (s, score, macs) in enumerate(rows, 1):
        reached = s >= 0.78
        lines.append(json.dumps({
            "trial_id": tid, "training_iteration": i, "iteration": i, "sparsity": s, "score": score,
            "objective": score if reached else -1 + 0.5 * s / 0.8, "reached_target": reached,
            "macs": macs, "params": macs / 10, "finetune_epochs_cum": float(i),
            "schedule_done": done and i == len(rows), "generator": gen, "pruner": "level", "mode": "normal",
        }))
    (d / "result.json").write_text("\n".join(lines) + "\n")
    (d / "checkpoint_000001").mkdir()


def _exp(tmp_path: Path) -> Path:
    exp = tmp_path / "exp"
    _trial(exp, "a", [(0.4, 0.97, 800), (0.8, 0.93, 500)], True)
    _trial(exp, "b", [(0.27, 0.98, 900), (0.53, 0.96, 700), (0.8, 0.90, 400)], True, "linear")
    _trial(exp, "c", [(0.3, 0.99, 850)], False, "linear")  # stopped early
    _trial(exp, "d", [(0.8, 0.92, 600)], True, "simulated_annealing")  # dominated by a
    return exp


def test_tables(tmp_path: Path) -> None:
    exp = _exp(tmp_path)
    table = collect(exp)
    assert len(table) == 7  # one row per reported iteration
    best = best_per_trial(table)
    assert list(best["trial_id"]) == ["a", "d", "b", "c"]  # at target first, by score
    assert dict(zip(best["trial_id"], best["status"])) == {"a": "complete", "b": "complete",
                                                           "c": "stopped", "d": "complete"}
    assert best.loc[best.trial_id == "b", "finetune_epochs_total"].item() == 3.0
    front = pareto_front(best, "macs")
    assert set(front["trial_id"]) == {"a", "b"}


def test_write_results(tmp_path: Path) -> None:
    exp = _exp(tmp_path)
    files, table, best = write_results(exp, {"target_sparsity": 0.8, "multi_objective": "macs"})
    assert len(pd.read_csv(files.trials_csv)) == 7
    assert files.trials_parquet is not None and len(pd.read_parquet(files.trials_parquet)) == 7
    assert len(pd.read_csv(files.best_csv)) == 4
    assert files.pareto_csv is not None and len(pd.read_csv(files.pareto_csv)) == 2
    assert all(p.exists() and p.stat().st_size > 0 for p in files.plots)
    assert files.tensorboard_dir is not None and any(files.tensorboard_dir.rglob("events.out.tfevents*"))
    summary = json.loads(files.summary_json.read_text())
    assert summary["best"]["trial_id"] == "a" and summary["num_reports"] == 7


def test_empty_experiment(tmp_path: Path) -> None:
    (tmp_path / "exp").mkdir()
    files, table, best = write_results(tmp_path / "exp", {})
    assert table.empty and best.empty and files.plots == []
