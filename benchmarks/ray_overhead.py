"""Ray Tune's overhead per trial against the same pruning schedule run in-process.

Run:  ./run.sh python benchmarks/ray_overhead.py [--trials 6] [--finetune-epochs 0.5]
      ./run.sh python benchmarks/ray_overhead.py --quick      # smoke run, a few minutes

K identical schedules (AGP, 2 iterations, level pruner, global mode, no weight reset, a
fixed fine-tune length and learning rate) on digits, from one cached dense baseline:

(a) in-process: ``tune_prune.search.run_schedule`` called directly (the trial's
    whole body: workload + baseline load, generator, pruner, PruningScheduler, one
    checkpoint folder per iteration), ``tune.report`` replaced by a no-op; one untimed
    warm-up run first, so imports are not counted;
(b) under Ray Tune: the package's trainable (``TunePruneTrial``, one fresh actor per
    trial as in the search) through ``tune.Tuner`` with the same K configs, with the
    search's checkpoint and storage settings, at concurrency 1 and 2, and at
    concurrency 1 with ``reuse_actors=True`` (one actor process runs all trials). Ray
    start-up (``ray.init``) is timed separately and is not part of the per-trial numbers.

Per-trial wall time under Tune = ``Tuner.fit()`` wall time / K at concurrency 1;
overhead per trial = that minus the in-process mean (target: at most 1 s). The part
of it spent inside the actor (``time_total_s``: Tune's clock from the trial's start; it
includes the trial's lazy imports of torch and the workload in a fresh process) and
outside it (actor start, trainable import, placement group, persistence) is split out,
next to what a fresh Python process pays for those imports (measured once, no Ray).
Prints a Markdown table. The machine is shared (2 cores): the load average is printed
before and after, read the numbers with it.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from tune_prune.search.config import SearchConfig
from tune_prune.search.runner import fixed_config
from tune_prune.search.schedule import run_schedule
from tune_prune.search.space import define_space
from tune_prune.search.trainable import TunePruneTrial


def make_config(cache: Path, epochs: float, baseline_epochs: float) -> dict[str, Any]:
    """The one fixed trial config (search-wide part + normalised schedule) every run uses."""
    cfg = SearchConfig.create(
        workload_options={"baseline_epochs": baseline_epochs},
        baseline_cache_dir=str(cache),
        finetune_epochs=[epochs],
        min_iterations=2,
        max_iterations=2,
        cpus_per_trial=1,
    )
    params = {
        "generator": "agp",
        "pruner": "level",
        "mode__level": "global",
        "total_iteration": 2,
        "reset_weight": False,
        "finetune_epochs": epochs,
        "lr": 0.01,
    }
    trial = define_space(optuna.trial.FixedTrial(params), cfg)
    return {"fixed": fixed_config(cfg, True), **trial}


def train_baseline(config: dict[str, Any]) -> float:
    from tune_prune.workloads import get_workload, load_or_train_baseline

    fixed = config["fixed"]
    start = time.perf_counter()
    torch.set_num_threads(1)
    load_or_train_baseline(
        get_workload(fixed["workload"], **fixed["workload_options"]),
        fixed["seed"],
        fixed["baseline_cache_dir"],
    )
    return time.perf_counter() - start


def run_in_process(config: dict[str, Any], k: int) -> list[float]:
    """Wall time of each of ``k`` direct ``run_schedule`` calls (after one warm-up)."""
    run_schedule(config)  # warm-up: imports, first data load
    times = []
    for _ in range(k):
        start = time.perf_counter()
        reports = run_schedule(config)
        times.append(time.perf_counter() - start)
        assert [r["iteration"] for r in reports] == [1, 2], reports
    return times


_COLD = """
import json, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
from ray import tune
t2 = time.perf_counter()
from tune_prune.workloads import get_workload
get_workload("digits").dummy_input()
t3 = time.perf_counter()
print(json.dumps({"import torch": t1 - t0, "import ray.tune": t2 - t1, "digits workload": t3 - t2}))
"""


def cold_start() -> dict[str, float]:
    """What a fresh process pays before a trial computes anything (one measurement)."""
    import json
    import subprocess

    out = subprocess.run([sys.executable, "-c", _COLD], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_tune(
    config: dict[str, Any], k: int, concurrency: int, storage: Path, reuse_actors: bool = False
) -> dict[str, Any]:
    """``Tuner.fit()`` of ``k`` copies of ``config`` at ``concurrency``; wall and per-trial times."""
    from ray import tune

    name = f"overhead_c{concurrency}{'_reuse' if reuse_actors else ''}"
    tuner = tune.Tuner(
        TunePruneTrial,
        # the same config k times; 'copy' only tells the copies apart
        param_space={**config, "copy": tune.grid_search(list(range(k)))},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=reuse_actors),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=2,
                checkpoint_score_attribute="objective",
                checkpoint_score_order="max",
            ),
            verbose=0,
        ),
    )
    start = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - start
    if grid.errors:
        raise RuntimeError(f"{len(grid.errors)} trial(s) failed: {grid.errors[0]}")
    inside = [float(r.metrics["time_total_s"]) for r in grid]
    iters = [int(r.metrics["iteration"]) for r in grid]
    assert len(grid) == k and iters == [2] * k, iters
    return {"wall": wall, "inside": inside, "processes": len({r.metrics["pid"] for r in grid})}


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6, help="K: schedules per variant")
    parser.add_argument(
        "--finetune-epochs", type=float, default=0.5, help="fine-tune epochs per iteration"
    )
    parser.add_argument(
        "--baseline-epochs", type=float, default=3.0, help="epochs of the dense baseline"
    )
    parser.add_argument(
        "--dashboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start the Ray dashboard, as the search's CLI does by default",
    )
    parser.add_argument("--quick", action="store_true", help="tiny run: K=2, a quarter epoch")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.finetune_epochs = 2, 0.25
    k = args.trials
    torch.set_num_threads(1)  # what run_trial sets for cpus_per_trial=1
    # Tune's warning about frequent experiment snapshots is noise here (as in the runner).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    load_before = load()
    total_start = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="tune_prune_ray_overhead_") as tmp:
        root = Path(tmp)
        config = make_config(root / "baseline_cache", args.finetune_epochs, args.baseline_epochs)
        baseline_s = train_baseline(config)
        inproc = run_in_process(config, k)
        cold = cold_start()

        import ray

        start = time.perf_counter()
        # address="local": never attach to another Ray instance on this shared machine
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=args.dashboard,
            dashboard_port=0 if args.dashboard else None,
            log_to_driver=False,
        )
        ray_start_s = time.perf_counter() - start
        try:
            tuned: dict[Any, dict[str, Any]] = {
                c: run_tune(config, k, c, root / "tune") for c in (1, 2)
            }
            tuned["reuse"] = run_tune(config, k, 1, root / "tune", reuse_actors=True)
        finally:
            start = time.perf_counter()
            ray.shutdown()
            ray_stop_s = time.perf_counter() - start

    wall = time.perf_counter() - total_start
    mean_in = statistics.mean(inproc)
    per_trial_tune = tuned[1]["wall"] / k
    inside = statistics.mean(tuned[1]["inside"])
    overhead = per_trial_tune - mean_in
    per_trial_reuse = tuned["reuse"]["wall"] / k
    rows = [
        (
            "per-trial wall time, in-process (`run_schedule` direct)",
            f"{mean_in:.2f} s",
            f"mean of {k}; range {min(inproc):.2f}-{max(inproc):.2f} s",
        ),
        (
            "per-trial wall time, Ray Tune, concurrency 1",
            f"{per_trial_tune:.2f} s",
            f"`Tuner.fit()` {tuned[1]['wall']:.1f} s / {k} trials; Ray start-up excluded",
        ),
        (
            "  of which inside the trial actor (`time_total_s`)",
            f"{inside:.2f} s",
            "Tune's clock from the trial's start: includes the trial's own lazy imports (torch, "
            "workload data) in the fresh actor process, not the actor's scheduling and start",
        ),
        (
            "**Ray overhead per trial** (Tune c=1 minus in-process)",
            f"**{overhead:.2f} s**",
            f"{100 * overhead / mean_in:.0f} % of a trial; target <= 1 s: "
            f"{'met' if overhead <= 1.0 else 'NOT met'}",
        ),
        (
            "  of which outside the actor",
            f"{per_trial_tune - inside:.2f} s",
            "actor process start, trainable import (ray.tune), placement group, result and "
            "checkpoint persistence, controller loop",
        ),
        (
            "  of which inside the actor, beyond the in-process time",
            f"{inside - mean_in:.2f} s",
            "the fresh actor's first imports and data: fresh process, no Ray: "
            + ", ".join(f"{name} {sec:.2f} s" for name, sec in cold.items()),
        ),
        (
            "per-trial wall time, Ray Tune c=1, `reuse_actors=True`",
            f"{per_trial_reuse:.2f} s",
            f"overhead vs in-process {per_trial_reuse - mean_in:.2f} s; {tuned['reuse']['processes']} "
            f"actor process(es) for {k} trials (the search uses Tune's default, False: "
            f"{tuned[1]['processes']} for {k})",
        ),
        (
            "Ray start-up (`ray.init`, local, 2 CPUs)",
            f"{ray_start_s:.2f} s",
            f"dashboard {'on' if args.dashboard else 'off'}; once per search; ray.shutdown {ray_stop_s:.2f} s",
        ),
        ("trials per minute, in-process (sequential)", f"{60 / mean_in:.1f}", "reference"),
        (
            "trials per minute, Ray Tune, concurrency 1",
            f"{60 * k / tuned[1]['wall']:.1f}",
            "1 CPU per trial, torch 1 thread",
        ),
        (
            "trials per minute, Ray Tune, concurrency 2",
            f"{60 * k / tuned[2]['wall']:.1f}",
            f"`Tuner.fit()` {tuned[2]['wall']:.1f} s; speed-up over c=1: "
            f"{tuned[1]['wall'] / tuned[2]['wall']:.2f}x on 2 (shared) cores",
        ),
    ]

    print("    " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    print(
        f"    machine: {platform.machine()} {platform.system()} {platform.release()}, "
        f"{os.cpu_count()} logical CPUs, SHARED with other users (timings vary with their load)"
    )
    print(
        f"    python {platform.python_version()}, torch {torch.__version__}, "
        f"torch.get_num_threads() = {torch.get_num_threads()} (each trial: 1 thread, 1 CPU), ray {ray.__version__}"
    )
    print(f"    load average (1/5/15 min): before {load_before}; after {load()}")
    print(
        f"    schedule: digits, AGP 2 iterations, level/global, target 0.8, {args.finetune_epochs:g} "
        f"fine-tune epoch(s) per iteration, lr 0.01; K = {k} per variant; baseline "
        f"{args.baseline_epochs:g} epochs trained in {baseline_s:.1f} s (not counted)"
    )
    print(f"    total wall time {wall:.0f} s")
    print()
    print("| measurement | value | note |")
    print("|---|---|---|")
    for name, value, note in rows:
        print(f"| {name} | {value} | {note} |")


if __name__ == "__main__":
    main()
