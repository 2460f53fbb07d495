"""Does a low fine-tune budget rank pruning schedules the way the full budget does?

Multi-fidelity search (screen many schedules cheaply, spend the full budget on a few)
only pays if a schedule's score at a fraction of the budget predicts its score at the
full budget. This measures that, per target, before the search relies on it:

- K schedules are drawn at random from the search's own space (``define_space`` with
  Optuna's RandomSampler, seeded), the same K at every budget;
- each runs through ``tune_prune.search.run_schedule`` (in-process, no Ray) at every
  budget fraction f of the equal-cost fine-tune budget B (each schedule splits f x B
  epochs over its fine-tunes, as in the search);
- per (target, seed, f): Spearman's rank correlation of the val score at the target
  with the full-budget val score; the full-budget TEST accuracy of the schedule the
  low budget ranks first, against the best and the median full-budget schedule
  (regret); and whether the low budget's top ``--top`` hold the full budget's best.

    python -m experiments.fidelity.run                        # digits, w0.95 w0.98, 3 seeds
    python -m experiments.fidelity.run --workload mnist1d --budget 15 --fractions 0.083333 1   # the headline's screen vs final
    python -m experiments.fidelity.run --quick                # smoke run (meaningless numbers)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from experiments._common import (
    DEFAULT_CACHE,
    command_line,
    key_json_options,
    machine_lines,
    write_csv,
    write_results,
)

HERE = Path(__file__).resolve().parent
MODULE = "experiments.fidelity.run"


def parse_target(token: str) -> tuple[str, float]:
    """``w0.95`` -> ('weights', 0.95); channel targets are given as channel sparsity (``ch0.5``)."""
    if token.startswith("w"):
        return "weights", float(token[1:])
    if token.startswith("ch"):
        return "channels", float(token[2:])
    raise SystemExit(f"target {token!r}: expected wS (weight sparsity) or chS (channel sparsity)")


def sample_schedules(cfg: Any, k: int, seed: int) -> list[dict[str, Any]]:
    """K normalised trial configs drawn at random from the search space (seeded)."""
    import optuna

    from tune_prune.search.space import define_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [define_space(study.ask(), cfg) for _ in range(k)]


def at_budget(trial: dict[str, Any], budget: float) -> dict[str, Any]:
    """The same schedule with ``budget`` fine-tune epochs in all (split as the search splits it)."""
    from tune_prune.search.space import finetune_calls

    return {**trial, "finetune_epochs": budget / finetune_calls(trial)}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    from tune_prune.search import run_schedule

    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = run_schedule({"fixed": job["fixed"], **job["trial"]})
    last = rows[-1]
    return {**job["key"], "val": last["objective"], "test": last["test_score"],
            "sparsity": last["sparsity"], "reached_target": bool(last["reached_target"]),
            "epochs": last["finetune_epochs_cum"], "seconds": time.perf_counter() - start}


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    value = spearmanr(a, b).statistic
    return float("nan") if value != value else float(value)


def analyse(records: list[dict[str, Any]], fractions: list[float], top: int) -> tuple[list[str], list[list[Any]]]:
    """One row per (target, fraction): correlation and regret, mean over seeds."""
    full = max(fractions)
    headers = ["target", "budget fraction", "FT epochs / schedule", "Spearman vs full (mean ± std)",
               f"full-budget best in low-budget top {top}", "TEST of low-budget pick − best (pts)",
               "TEST of low-budget pick − median (pts)", "seeds"]
    rows = []
    targets = list(dict.fromkeys(r["target"] for r in records))
    for target in targets:
        for f in sorted(fractions):
            rhos, hits, regret_best, regret_med, epochs = [], [], [], [], []
            for seed in sorted({r["seed"] for r in records if r["target"] == target}):
                by = {(r["schedule"], r["fraction"]): r for r in records
                      if r["target"] == target and r["seed"] == seed}
                ids = sorted({s for s, _ in by})
                if not all((i, f) in by and (i, full) in by for i in ids):
                    continue
                low = [by[(i, f)]["val"] for i in ids]
                high = [by[(i, full)]["val"] for i in ids]
                test = [by[(i, full)]["test"] for i in ids]
                rhos.append(spearman(low, high))
                order = sorted(range(len(ids)), key=lambda j: -low[j])
                best_full = max(range(len(ids)), key=lambda j: high[j])
                hits.append(best_full in order[:top])
                regret_best.append(100 * (test[order[0]] - max(test)))
                regret_med.append(100 * (test[order[0]] - statistics.median(test)))
                epochs.append(by[(ids[0], f)]["epochs"])
            if not rhos:
                continue
            finite = [r for r in rhos if r == r]  # NaN: every schedule scored alike at one budget
            rho_m = statistics.fmean(finite) if finite else float("nan")
            rho_s = statistics.stdev(finite) if len(finite) > 1 else 0.0
            rows.append([target, f"{f:g}", f"{statistics.fmean(epochs):g}", f"{rho_m:.2f} ± {rho_s:.2f}",
                         f"{sum(hits)}/{len(hits)}", f"{statistics.fmean(regret_best):+.2f}",
                         f"{statistics.fmean(regret_med):+.2f}", len(rhos)])
    return headers, rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog=MODULE, description=__doc__.split("\n")[0])
    parser.add_argument("--targets", nargs="+", default=["w0.95", "w0.98"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--schedules", type=int, default=16, help="schedules drawn per (target, seed)")
    parser.add_argument("--budget", type=float, default=5.0, help="the full fine-tune budget B (epochs)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--workload", default="digits")
    parser.add_argument("--workload-option", action="append", default=[], metavar="KEY=JSON",
                        help="workload constructor option, e.g. width=100 (repeatable)")
    parser.add_argument("--search-option", action="append", default=[], metavar="KEY=JSON",
                        help="SearchConfig field for the sampled space, e.g. lr_max=0.1")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--from-records", type=Path, default=None, help="only re-summarise a runs.csv")
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 schedules, tiny budgets")
    args = parser.parse_args(argv)
    argv_used = list(argv) if argv is not None else sys.argv[1:]
    torch.set_num_threads(1)
    if max(args.fractions) != 1.0:
        raise SystemExit("--fractions must include 1.0 (the full budget)")
    options: dict[str, Any] = {"device": "cpu", **key_json_options(args.workload_option, "--workload-option")}
    if args.quick:
        args.targets, args.seeds, args.schedules, args.budget = args.targets[:1], args.seeds[:1], 3, 0.5
        args.fractions, args.top = [0.5, 1.0], 1
        options["baseline_epochs"] = 1.0
    if args.from_records:
        import csv

        with open(args.from_records) as fh:
            records = [{**r, "seed": int(r["seed"]), "fraction": float(r["fraction"]), "val": float(r["val"]),
                        "test": float(r["test"]), "epochs": float(r["epochs"])} for r in csv.DictReader(fh)]
        headers, rows = analyse(records, args.fractions, args.top)
        return write_results(args.out, [command_line(MODULE, argv_used)], headers, rows)

    from tune_prune.search.config import SearchConfig
    from tune_prune.search.runner import fixed_config
    from tune_prune.workloads import get_workload, load_or_train_baseline

    search_options = key_json_options(args.search_option, "--search-option")
    workload = get_workload(args.workload, **options)
    header = [command_line(MODULE, argv_used), *machine_lines(),
              f"workload {args.workload} {workload.config}", f"search options {search_options}"]
    print("\n".join(header), flush=True)
    start = time.perf_counter()
    for seed in args.seeds:
        load_or_train_baseline(workload, seed, args.cache)
    jobs = []
    for token in args.targets:
        kind, sparsity = parse_target(token)
        for seed in args.seeds:
            cfg = SearchConfig.create(workload=args.workload, workload_options=options, target_sparsity=sparsity,
                                      sparsity_kind=kind, seed=seed, finetune_budget=args.budget,
                                      baseline_cache_dir=str(args.cache.resolve()), **search_options)
            fixed = fixed_config(cfg)
            for i, trial in enumerate(sample_schedules(cfg, args.schedules, seed)):
                for f in args.fractions:
                    jobs.append({"fixed": fixed, "trial": at_budget(trial, f * args.budget),
                                 "key": {"target": token, "seed": seed, "schedule": i, "fraction": f,
                                         "config": json.dumps(trial, sort_keys=True, default=str)}})
    records = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for rec in pool.map(run_job, jobs):
            records.append(rec)
            print(f"{rec['target']} seed {rec['seed']} schedule {rec['schedule']} f={rec['fraction']:g}: "
                  f"val {rec['val']:.4f} test {rec['test']:.4f} [{rec['seconds']:.1f} s]", flush=True)
    header.append(f"wall time {time.perf_counter() - start:.0f} s on {args.workers} processes; "
                  + machine_lines()[-1])
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "runs.csv", records)
    headers, rows = analyse(records, args.fractions, args.top)
    footer = [f"{args.schedules} schedules per (target, seed), drawn at random from the search space "
              f"(budget B = {args.budget:g} epochs per schedule); 'val' is the score at the target "
              "(the search's objective); TEST is reported only."]
    return write_results(args.out, header, headers, rows, footer=footer)


if __name__ == "__main__":
    main()
