"""Early stopping of the schedule search: fair successive halving vs plain ASHA vs none.

Question: at the same number of trials, how much fine-tune compute does each trial
scheduler save, and what does it cost in the best schedule found? ``fair``
(``FairSuccessiveHalving``: compares trials at equal sparsity progress), ``asha`` (Ray's
ASHAScheduler on ``training_iteration``, grace period 1) and ``none`` (every trial runs
its whole schedule), each with the same seeded TPE search (same seed -> the same start-up
trials), on digits at one target.

    python -m experiments.early_stopping.run             # 5 seeds x 3 schedulers, 8 trials each
    python -m experiments.early_stopping.run --quick     # smoke run, < 1 min

Per search: the best validation objective (score at the target; what the search
maximises), the TEST accuracy of that best model (its reported ``test_score``), the
fine-tune epochs spent by all trials together (compute), how many trials were stopped,
and wall time. Paired by seed against ``none``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from experiments._common import (
    DEFAULT_CACHE,
    command_line,
    machine_lines,
    mean_std,
    pm,
    write_results,
)
from experiments.search_vs_hand.run import run_one_search, search_flag_values, write_records

MODULE = "experiments.early_stopping.run"
HERE = Path(__file__).resolve().parent
SCHEDULERS = ("fair", "asha", "none")


def summarise(records: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    headers = ["early stopping", "seeds", "best val objective % (mean ± std)",
               "TEST acc of best % (mean ± std)", "FT epochs, all trials (mean ± std)",
               "epochs vs none", "trials stopped (mean)", "best trial at target",
               "wall s (mean)"]
    rows = []
    none_ep = [r["epochs_total"] for r in records if r["early_stopping"] == "none"]
    for es in SCHEDULERS:
        sel = [r for r in records if r["early_stopping"] == es]
        if not sel:
            continue
        ep = [r["epochs_total"] for r in sel]
        m, s = mean_std(ep)
        ratio = f"{m / statistics.fmean(none_ep):.2f}" if none_ep else "–"
        rows.append([es, len(sel), pm([r["val_acc"] for r in sel]),
                     pm([r["test_acc"] for r in sel]), f"{m:.1f} ± {s:.1f}", ratio,
                     f"{statistics.fmean(r['stopped'] for r in sel):.1f} / {sel[0]['trials']}",
                     f"{sum(r['reached_target'] for r in sel)}/{len(sel)}",
                     f"{statistics.fmean(r['seconds'] for r in sel):.0f}"])
    return headers, rows


def paired_lines(records: list[dict[str, Any]]) -> list[str]:
    by = {(r["early_stopping"], r["seed"]): r for r in records}
    seeds = sorted({s for (_, s) in by})
    out = ["Paired by seed against `none` (points of accuracy; epochs saved = 1 - epochs / none's):", "",
           "| early stopping | Δ best val objective | Δ TEST acc of best | epochs saved | "
           "seeds where it found the same best schedule as none |", "|---|---|---|---|---|"]
    for es in SCHEDULERS[:-1]:
        if not all((es, s) in by and ("none", s) in by for s in seeds):
            continue
        dv = [100 * (by[(es, s)]["val_acc"] - by[("none", s)]["val_acc"]) for s in seeds]
        dt = [100 * (by[(es, s)]["test_acc"] - by[("none", s)]["test_acc"]) for s in seeds]
        saved = [1 - by[(es, s)]["epochs_total"] / by[("none", s)]["epochs_total"] for s in seeds]
        same = sum(by[(es, s)]["schedule"] == by[("none", s)]["schedule"] for s in seeds)
        mv, sv = mean_std(dv)
        mt, st = mean_std(dt)
        ms, ss = mean_std([100 * x for x in saved])
        out.append(f"| {es} | {mv:+.2f} ± {sv:.2f} | {mt:+.2f} ± {st:.2f} | {ms:.0f} % ± {ss:.0f} | "
                   f"{same}/{len(seeds)} |")
    return out


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS), choices=SCHEDULERS)
    parser.add_argument("--target", type=float, default=0.9, help="weight sparsity")
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--storage", type=Path, default=None, help="keep experiment folders here")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--from-records", type=Path, nargs="+", default=None,
                        help="only re-summarise runs.jsonl file(s) written by earlier runs")
    parser.add_argument("--note", action="append", default=[],
                        help="with --from-records: header line(s) (the runs' commands and machine)")
    parser.add_argument("--search-flags", default="", metavar="'FLAGS'",
                        help="extra `python -m tune_prune.search` flags (one string, split with shlex) "
                        "for every search, e.g. \"--reuse-actors\"; recorded in the header")
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, 2-trial searches of 1-2 iterations x 0.25 epoch, 1-epoch baseline")
    args = parser.parse_args(argv)
    argv_used = list(argv) if argv is not None else sys.argv[1:]
    values: dict[str, Any] = {"num_samples": args.num_samples, "max_concurrent": args.max_concurrent,
                              "target_sparsity": args.target, "sparsity_kind": "weights",
                              "include_dashboard": False, "workload_options": {}}
    if args.quick:
        args.seeds = args.seeds[:1]
        values.update(num_samples=2, min_iterations=1, max_iterations=2, finetune_epochs=[0.25],
                      workload_options={"baseline_epochs": 1.0})
    search_flags = search_flag_values(args.search_flags)
    values.update(search_flags)
    torch.set_num_threads(1)
    if args.from_records:
        records = [json.loads(line) for path in args.from_records
                   for line in path.read_text().splitlines() if line.strip()]
        headers, rows = summarise(records)
        write_records(args.out / "runs.csv", records)
        return write_results(args.out, [command_line(MODULE, ["--from-records", *map(str, args.from_records)]) + " --note ...", *args.note], headers, rows,
                             footer=paired_lines(records))
    from tune_prune.workloads import get_workload, load_or_train_baseline

    workload = get_workload("digits", **values["workload_options"])
    for seed in args.seeds:
        load_or_train_baseline(workload, seed, args.cache)
    header = [command_line(MODULE, argv_used), *machine_lines()]
    print("\n".join(header), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl = args.out / "runs.jsonl"
    jsonl.write_text("")
    records: list[dict[str, Any]] = []
    import ray

    start = time.perf_counter()
    storage_ctx = (contextlib.nullcontext(str(args.storage)) if args.storage
                   else tempfile.TemporaryDirectory(prefix="tp_early_stopping_"))
    ray.init(num_cpus=args.max_concurrent, include_dashboard=False, log_to_driver=False)
    try:
        with storage_ctx as storage:
            for seed in args.seeds:
                for es in args.schedulers:
                    _, info = run_one_search({**values, "seed": seed, "early_stopping": es,
                                              "baseline_cache_dir": str(args.cache.resolve()),
                                              "storage_path": storage, "name": f"es-{es}-seed{seed}"})
                    rec = {"seed": seed, "early_stopping": es, **info}
                    records.append(rec)
                    with open(jsonl, "a") as fh:
                        fh.write(json.dumps(rec, default=str) + "\n")
                    print(f"seed {seed} {es}: best val {rec['val_acc']:.4f} test {rec['test_acc']:.4f} "
                          f"epochs {rec['epochs_total']:g}, {rec['stopped']} stopped "
                          f"[{rec['schedule']}] [{rec['seconds']:.0f} s]", flush=True)
    finally:
        ray.shutdown()
    elapsed = time.perf_counter() - start
    header += [f"digits config {workload.config}",
               f"seeds {args.seeds}; target weight sparsity {args.target:g}; each search: "
               f"{values['num_samples']} trials, {args.max_concurrent} at a time, seeded TPE, "
               + (f"search flags {args.search_flags!r} ({search_flags}), " if search_flags else "")
               + "CLI defaults otherwise (fair: rungs 0.25/0.5/0.75, reduction factor 2; asha: grace 1, factor 2)",
               f"wall time {elapsed:.0f} s; " + machine_lines()[-1]]
    write_records(args.out / "runs.csv", records)
    headers, rows = summarise(records)
    return write_results(args.out, header, headers, rows, footer=paired_lines(records))


if __name__ == "__main__":
    main()
