"""Does distilling from the dense model help a pruned model recover, and at which temperature?

Measured on the headline's hand one-shot schedule (prune once, fine-tune the whole budget)
before the search is asked to choose it: per (target, seed), one-shot at every lr of
``--lrs`` x distillation weight ``--weights`` (0 = plain fine-tuning) x temperature
``--temperatures``, each through ``tune_prune.search.run_schedule`` from the seed's cached
dense baseline (the teacher). Per (target, weight, temperature) the table gives the TEST
accuracy at the lr picked on VALIDATION per seed, its difference from plain fine-tuning
paired by seed, and the wall time (the teacher's forward pass is the extra cost).

    python -m experiments.distill.run --workload mnist1d --targets c4x c6x
    python -m experiments.distill.run --quick      # smoke run (meaningless numbers)
"""

from __future__ import annotations

import argparse
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
from experiments.fidelity.run import run_job  # one schedule in-process: val, TEST, seconds

HERE = Path(__file__).resolve().parent
MODULE = "experiments.distill.run"


def summarise(records: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """One row per (target, weight, temperature): val-picked lr per seed, paired against weight 0."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in records:
        key = (r["target"], r["weight"], r["temperature"], r["seed"])
        if key not in best or r["val"] > best[key]["val"]:
            best[key] = r
    plain = {(t, s): r["test"] for (t, w, _, s), r in best.items() if w == 0.0}
    headers = ["target", "distill weight", "temperature", "TEST % (mean ± std)", "− plain, paired (pts)",
               "ahead / behind / level", "lr picked on val", "wall s per run (mean)", "seeds"]
    rows = []
    for target, weight, temp in sorted({k[:3] for k in best}, key=lambda k: (k[0], k[1], k[2])):
        picked = sorted((r for k, r in best.items() if k[:3] == (target, weight, temp)), key=lambda r: r["seed"])
        tests = [100 * r["test"] for r in picked]
        diffs = [100 * (r["test"] - plain[(target, r["seed"])]) for r in picked if (target, r["seed"]) in plain]
        runs = [r["seconds"] for r in records if (r["target"], r["weight"], r["temperature"]) == (target, weight, temp)]
        std = statistics.stdev(tests) if len(tests) > 1 else 0.0
        rows.append([target, f"{weight:g}", "–" if weight == 0 else f"{temp:g}",
                     f"{statistics.fmean(tests):.2f} ± {std:.2f}",
                     "–" if weight == 0 or not diffs else f"{statistics.fmean(diffs):+.2f}",
                     "–" if weight == 0 else f"{sum(d > 0 for d in diffs)}/{sum(d < 0 for d in diffs)}/"
                     f"{sum(d == 0 for d in diffs)}",
                     " ".join(f"{x:g}" for x in sorted({r["lr"] for r in picked})),
                     f"{statistics.fmean(runs):.1f}", len(picked)])
    return headers, rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog=MODULE, description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="digits")
    parser.add_argument("--workload-option", action="append", default=[], metavar="KEY=JSON")
    parser.add_argument("--targets", nargs="+", default=["w0.95", "w0.98"],
                        help="wS (weight sparsity) or cNx (~N x fewer MACs by channels), as the headline")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.03, 0.1, 0.3])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 0.9],
                        help="distillation weights (0 = plain fine-tuning, the reference)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[2.0, 4.0])
    parser.add_argument("--budget", type=float, default=15.0, help="fine-tune epochs (the search's final budget)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=None, help="default: experiments/distill/<workload>")
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 lr, 1 target, tiny budget")
    args = parser.parse_args(argv)
    argv_used = list(argv) if argv is not None else sys.argv[1:]
    if 0.0 not in args.weights:
        raise SystemExit("--weights must include 0 (plain fine-tuning, the reference)")
    if any(not 0.0 <= w <= 1.0 for w in args.weights) or any(t <= 0 for t in args.temperatures):
        raise SystemExit("--weights must be in [0, 1] and --temperatures > 0")
    torch.set_num_threads(1)
    options: dict[str, Any] = {"device": "cpu", **key_json_options(args.workload_option, "--workload-option")}
    if args.quick:
        args.seeds, args.lrs, args.targets, args.budget = args.seeds[:1], args.lrs[:1], args.targets[:1], 0.25
        args.temperatures = args.temperatures[:1]
        options["baseline_epochs"] = 1.0

    from experiments.headline.run import hand_schedule
    from experiments.search_vs_hand.run import calibrate_channels, parse_target
    from tune_prune.search.config import SearchConfig
    from tune_prune.search.runner import fixed_config
    from tune_prune.workloads import get_workload, load_or_train_baseline

    workload = get_workload(args.workload, **options)
    header = [command_line(MODULE, argv_used), *machine_lines(), f"workload {args.workload}: {workload.config}",
              f"one-shot, {args.budget:g} fine-tune epochs; TEST at the lr picked on val per seed"]
    print("\n".join(header), flush=True)
    start = time.perf_counter()
    for seed in args.seeds:
        load_or_train_baseline(workload, seed, args.cache)
    jobs = []
    for token in args.targets:
        kind, value = parse_target(token)
        if kind == "channels":
            value, ratio = calibrate_channels(workload, load_or_train_baseline(workload, 0, args.cache), value)
            header.append(f"{token}: channel sparsity {value:.3f} (L1 one-shot MACs ratio {ratio:.3f} on seed 0)")
        for seed in args.seeds:
            cfg = SearchConfig.create(workload=args.workload, workload_options=options, target_sparsity=value,
                                      sparsity_kind=kind, seed=seed, baseline_cache_dir=str(args.cache.resolve()))
            fixed = fixed_config(cfg)
            for lr in args.lrs:
                for weight in args.weights:
                    for temp in ([args.temperatures[0]] if weight == 0 else args.temperatures):
                        trial = hand_schedule("one-shot", kind, args.budget, lr, 1)
                        if weight:
                            trial = {**trial, "distill": weight, "distill_temperature": temp}
                        jobs.append({"fixed": fixed, "trial": trial, "key": {
                            "target": token, "seed": seed, "lr": lr, "weight": weight,
                            "temperature": temp if weight else 0.0}})
    records = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for rec in pool.map(run_job, jobs):
            records.append(rec)
            print(f"{rec['target']} seed {rec['seed']} lr {rec['lr']:g} weight {rec['weight']:g} "
                  f"T {rec['temperature']:g}: val {rec['val']:.4f} test {rec['test']:.4f} "
                  f"[{rec['seconds']:.1f} s]", flush=True)
    header.append(f"wall time {time.perf_counter() - start:.0f} s on {args.workers} processes; "
                  + machine_lines()[-1])
    out = args.out or HERE / args.workload
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "runs.csv", records)
    headers, rows = summarise(records)
    return write_results(out, header, headers, rows)


if __name__ == "__main__":
    main()
