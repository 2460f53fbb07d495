"""End to end through the real CLI entry on digits: Ray, Tune, Optuna, tables, state API.

One small search (3 trials x 2 pruning iterations, a quarter epoch of fine-tuning each)
runs once for the module, while a thread lists the trial actors through Ray's state
API; the tests then check what it left behind.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from tune_prune.search.cli import main
from tune_prune.search.searcher import JOURNAL_FILE, journal_storage

pytestmark = pytest.mark.slow

NAME = "e2e"
FLAGS = ["--deterministic"]  # without it the two runs differ (checked by hand)
TRIALS = 3
ITERATIONS = 2


@pytest.fixture(scope="module")
def ray_local():
    import ray

    context = ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
                       dashboard_port=0, log_to_driver=False)
    ray.dashboard_address = f"http://{context.dashboard_url}"
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def search(ray_local, baseline_cache, tmp_path_factory):
    from ray.util.state import list_actors

    storage = tmp_path_factory.mktemp("results")
    seen: dict[str, dict] = {}
    errors: list[str] = []
    stop = threading.Event()
    # this test's own cluster, by its dashboard URL: other Ray clusters may run on the
    # same machine, and address=None could resolve to the newest of them
    address = ray_local.dashboard_address

    def poll() -> None:
        while not stop.is_set():
            try:
                for a in list_actors(address=address, filters=[("class_name", "=", "TunePruneTrial")],
                                     detail=True, timeout=20):
                    seen[a.actor_id] = {"state": a.state, "repr": a.repr_name, "pid": a.pid}
            except Exception as exc:  # noqa: BLE001 - the state API may lag behind at start-up
                errors.append(repr(exc))
            stop.wait(0.5)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    start = time.perf_counter()
    code = main([
        "--num-samples", str(TRIALS), "--min-iterations", str(ITERATIONS),
        "--max-iterations", str(ITERATIONS), "--finetune-epochs", "0.25",
        "--generators", "agp", "linear", "curve", "--early-stopping", "fair",
        "--workload-option", "baseline_epochs=3", "--baseline-cache-dir", str(baseline_cache),
        "--storage-path", str(storage), "--name", NAME, "--max-concurrent", "2",
        "--export", str(storage / "export"),
    ])
    wall = time.perf_counter() - start
    stop.set()
    poller.join(timeout=5)
    return {"code": code, "exp": storage / NAME, "storage": storage, "seen": seen, "wall": wall,
            "errors": errors}


def test_cli_exit_code_and_files(search) -> None:
    assert search["code"] == 0
    exp: Path = search["exp"]
    for name in ("trials.csv", "trials.parquet", "best_per_trial.csv", "summary.json",
                 "score_vs_sparsity.png", "pareto_score_vs_macs.png", JOURNAL_FILE, "search_config.json"):
        assert (exp / name).exists(), name


def test_one_row_per_reported_iteration(search) -> None:
    exp: Path = search["exp"]
    table = pd.read_csv(exp / "trials.csv", dtype={"trial_id": str})
    reported = sum(len((d / "result.json").read_text().splitlines())
                   for d in exp.glob("trial_*") if d.is_dir())
    assert len(table) == reported
    assert table["trial_id"].nunique() == TRIALS
    for _, g in table.groupby("trial_id"):
        assert list(g["iteration"]) == list(range(1, len(g) + 1))
        # a rewinding schedule (reset_weight) reports its retrained last ticket as one more row
        assert len(g) <= ITERATIONS + int(bool(g["reset_weight"].iloc[0]))
    finished = table.groupby("trial_id")["schedule_done"].any()
    assert finished.sum() >= 1
    assert table.loc[table["schedule_done"], "reached_target"].all()


def test_best_table(search) -> None:
    best = pd.read_csv(search["exp"] / "best_per_trial.csv", dtype={"trial_id": str})
    assert len(best) == TRIALS
    assert list(best["objective"]) == sorted(best["objective"], reverse=True)
    top = best.iloc[0]
    assert top["reached_target"] and 0 < top["score"] <= 1
    assert Path(top["best_checkpoint"], "result", "model.pt").exists()
    summary = json.loads((search["exp"] / "summary.json").read_text())
    assert summary["best"]["trial_id"] == top["trial_id"]


def test_export_of_best_reloads(search) -> None:
    from tune_prune.export import load
    from tune_prune.workloads import get_workload

    best = pd.read_csv(search["exp"] / "best_per_trial.csv", dtype={"trial_id": str}).iloc[0]
    model = load(search["storage"] / "export")
    workload = get_workload("digits", baseline_epochs=3.0)
    assert abs(workload.evaluate(model, "val") - best["score"]) < 1e-6


def test_trials_listed_through_ray_state_api(search) -> None:
    table = pd.read_csv(search["exp"] / "trials.csv", dtype={"trial_id": str})
    actor_ids = set(table["ray_actor_id"].astype(str))
    assert len(actor_ids) == TRIALS
    assert actor_ids <= set(search["seen"]), (actor_ids, search["seen"], search["errors"][-3:])
    reprs = [v["repr"] for k, v in search["seen"].items() if k in actor_ids]
    named = [str(r) for r in reprs if r]  # empty only if an actor was never seen created
    assert named, reprs  # the dashboard names the trials ...
    assert all(r.startswith("tune_prune:") for r in named), named
    assert len(set(named)) == len(named), named  # ... each under its own name


def test_optuna_study_on_disk(search) -> None:
    study = optuna.load_study(study_name=NAME, storage=journal_storage(search["exp"]))
    states = [t.state for t in study.trials]
    assert len(states) == TRIALS
    assert all(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for s in states)
    assert any(s == optuna.trial.TrialState.COMPLETE for s in states)


def test_resume_of_finished_experiment_runs_nothing_new(search, capsys) -> None:
    before = len(pd.read_csv(search["exp"] / "trials.csv", dtype={"trial_id": str}))
    code = main(["--resume", "--name", NAME, "--storage-path", str(search["storage"])])
    assert code == 0
    assert len(pd.read_csv(search["exp"] / "trials.csv", dtype={"trial_id": str})) == before
    out = capsys.readouterr().out
    assert "Best schedules" in out and str(search["exp"]) in out


def test_existing_name_without_resume_is_a_config_error(search, capsys) -> None:
    code = main(["--name", NAME, "--storage-path", str(search["storage"])])
    assert code == 2
    assert "name='e2e'" in capsys.readouterr().err


def test_dry_run_search_stopped_trials_are_pruned_in_optuna(ray_local, tmp_path) -> None:
    """Plumbing through Ray with simulated curves: every 'stopped' trial is PRUNED in Optuna."""
    # plain ASHA (grace period 1) stops trials reliably; which scheduler stops them does
    # not matter here, only that stopped trials reach Optuna as PRUNED. No warm start: the
    # one-shot warm starts report their at-target score at iteration 1, below every slower
    # schedule's near-dense first report, so ASHA would stop nothing (its known bias).
    code = main(["--dry-run", "--num-samples", "8", "--max-concurrent", "2", "--seed", "3",
                 "--early-stopping", "asha", "--generators", "agp", "linear", "curve",
                 "--warm-start", "none", "--screen-fraction", "1",
                 "--storage-path", str(tmp_path), "--name", "dry"])
    assert code == 0
    best = pd.read_csv(tmp_path / "dry" / "best_per_trial.csv", dtype={"trial_id": str})
    assert len(best) == 8
    study = optuna.load_study(study_name="dry", storage=journal_storage(tmp_path / "dry"))
    state = {t.user_attrs["tune_trial_id"]: t.state for t in study.trials}
    expected = {"complete": optuna.trial.TrialState.COMPLETE, "stopped": optuna.trial.TrialState.PRUNED}
    for tid, status in zip(best["trial_id"], best["status"]):
        assert state[tid] == expected[status], (tid, status, state[tid])
    assert (best["status"] == "stopped").any() and (best["status"] == "complete").any()


def test_deterministic_search_repeats_exactly_at_concurrency_2(ray_local, tmp_path) -> None:
    """--deterministic: the same seed gives the same trials, stops and scores, run after run."""

    def run(name: str) -> tuple[list, list]:
        code = main(["--dry-run", *FLAGS, "--num-samples", "8", "--max-concurrent", "2",
                     "--seed", "5", "--early-stopping", "fair", "--early-stopping-rungs", "0.3", "0.6",
                     "--storage-path", str(tmp_path), "--name", name])
        assert code == 0
        best = pd.read_csv(tmp_path / name / "best_per_trial.csv", dtype={"trial_id": str})
        cols = ["generator", "pruner", "mode", "total_iteration", "lr", "status", "iterations_run",
                "score", "sparsity"]
        rows = sorted(best[cols].itertuples(index=False, name=None), key=repr)
        study = optuna.load_study(study_name=name, storage=journal_storage(tmp_path / name))
        trials = [(t.number, t.params, t.state.name) for t in sorted(study.trials, key=lambda t: t.number)]
        return rows, trials

    first, second = run("det1"), run("det2")
    assert len(first[0]) == 8
    assert first == second
    # the default warm start (one-shot at three lrs, then annealing) is the study's first
    # trials, marked in the table
    best = pd.read_csv(tmp_path / "det1" / "best_per_trial.csv", dtype={"trial_id": str})
    warm = best[best["warm_start"]]
    one_shot = warm[warm["generator"] != "simulated_annealing"]
    assert len(warm) == 4 and set(warm["generator"]) >= {"simulated_annealing"}
    assert len(one_shot) == 3 and set(one_shot["total_iteration"]) == {1} and one_shot["lr"].nunique() == 3
    study = optuna.load_study(study_name="det1", storage=journal_storage(tmp_path / "det1"))
    first_four = sorted(study.trials, key=lambda t: t.number)[:4]
    assert {t.user_attrs["tune_trial_id"] for t in first_four} == set(warm["trial_id"])
