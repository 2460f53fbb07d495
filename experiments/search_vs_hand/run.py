"""Search vs hand-picked pruning schedules on digits, per seed, TEST accuracy.

Question: does ``python -m tune_prune.search`` (Optuna TPE over schedules, fair early
stopping, default 8 trials) find a better schedule than the ones a user would pick by
hand (NNI's defaults), and is it better than random search at the same trial budget?

    python -m experiments.search_vs_hand.run                    # full first pass (see SECTION.md)
    python -m experiments.search_vs_hand.run --targets w0.9 c3x --seeds 0 1 2 3 4
    python -m experiments.search_vs_hand.run --quick            # smoke run, < 1 min

Targets: ``wS`` = fine-grained weight sparsity S of Conv2d+Linear (LevelPruner);
``cNx`` = channel pruning of Conv2d whose channel sparsity is calibrated so that NNI's
default (L1NormPruner, mode 'normal', one shot on the seed-0 baseline) removes
MACs by a factor N; every method's measured MACs ratio is reported, because the
same channel sparsity gives very different MACs in 'global' or 'dependency_aware' mode.

Methods (all start from the same cached dense baseline of the seed, all run through the
search's own trainable, ``tune_prune.search.run_schedule``, so pruning, fine-tuning
and measurement are identical; hand schedules run it in-process without Ray):

* ``NNI default: AGP``: AGPTaskGenerator, 10 iterations, level (weights) / l1 (channels),
  mode 'normal', 1 fine-tune epoch per iteration at the workload's fine-tune lr (0.01);
* ``linear``: the same with LinearTaskGenerator;
* ``lottery ticket``: LotteryTicketTaskGenerator, 10 rounds, rewind to the dense
  baseline (NNI's reset_weight), 1 epoch per round, + 1 epoch retraining the last ticket;
* ``one-shot + FT``: prune to the target once, fine-tune 10 epochs (cosine lr), i.e. the
  same epochs as AGP;
* weights only, ``AGP, global ranking`` and ``one-shot + FT, global ranking``: the same
  with one global magnitude ranking (``mode='global'``, per-layer cap 0.95 as the search
  uses): NNI's per-layer default also prunes the 144-weight stem conv to the target,
  which a user aware of it would avoid, so the best hand schedule is not a straw man;
* ``--short-epochs E`` adds ``one-shot + FT, global ranking, short``: the same with E
  epochs in all, to compare at the search's final-schedule budget;
* ``--short-lr L`` adds ``one-shot + FT, global ranking, short, lr picked``: that schedule
  at an lr chosen after seeing the searches (not a hand schedule in the verdict);
* ``search (TPE)``: ``run_search`` with the CLI defaults (8 trials of 1-5 iterations that
  share a 5-epoch fine-tune budget, lr log-uniform in [5e-3, 5e-2], fair early stopping,
  TPE with 4 random start-up trials), seed = the baseline seed; its best trial by
  validation objective is evaluated on TEST;
* ``random search``: the same search with ``--sampler random`` (seeded
  ``optuna.samplers.RandomSampler``); everything else, early stopping included, is the same.

Trials are ranked on validation accuracy; TEST accuracy is the ``test_score`` each trial
reports for the same model (never used to choose; ``tests/search/test_trainable.py``
checks it against a rebuild of the stored model).
Fine-tune epochs are reported twice: of the final schedule alone and in total (a search
pays for every trial).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import shlex
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
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

MODULE = "experiments.search_vs_hand.run"
HERE = Path(__file__).resolve().parent
DEFAULT_TARGETS = ["w0.9", "w0.5", "w0.8", "c2x", "c3x"]
SEARCH, RANDOM = "search (TPE)", "random search"
#: The search's warm-start trial alone (``--warm-start``, one-shot global by default; with
#: several, the best on val): what the search adds beyond the schedule it is told to try first.
WARM = "search's warm start alone"
AGP, LINEAR, LTH, ONESHOT = ("NNI default: AGP", "linear", "lottery ticket", "one-shot + FT")
AGP_G, ONESHOT_G = "AGP, global ranking", "one-shot + FT, global ranking"
#: NNI's per-layer ('normal') sparsity prunes the 144-weight stem conv to 90 % as well; a
#: user who knows that picks one global magnitude ranking, so weights get those too.
HAND_BY_KIND = {"weights": (AGP, LINEAR, LTH, ONESHOT, AGP_G, ONESHOT_G),
                "channels": (AGP, LINEAR, LTH, ONESHOT)}
#: The best hand schedule at the search's budget (``--short-epochs``): one-shot, global, few epochs.
SHORT = "one-shot + FT, global ranking, short"
#: The same at an lr picked AFTER seeing the searches (``--short-lr``): what the search's
#: lr finding is worth to a user who already knows it. Not a hand schedule for the verdict.
SHORT_LR = "one-shot + FT, global ranking, short, lr picked"
HAND = (*HAND_BY_KIND["weights"], SHORT)
METHODS = (*HAND, SHORT_LR, WARM, SEARCH, RANDOM)


# ----------------------------------------------------------------------------- targets
def parse_target(token: str) -> tuple[str, float]:
    """``w0.9`` -> ('weights', 0.9); ``c3x`` -> ('channels', 3.0) (a MACs reduction factor)."""
    kind = {"w": "weights", "c": "channels"}.get(token[:1])
    if kind is None:
        raise SystemExit(f"target {token!r}: expected wS (weight sparsity) or cNx (MACs reduction)")
    value = float(token[1:].rstrip("x"))
    return kind, value


def oneshot_macs_ratio(workload: Any, baseline: torch.nn.Module, sparsity: float,
                       pruner: str = "l1", mode: str = "normal") -> float:
    """MACs(pruned) / MACs(dense) of one-shot channel pruning of the baseline."""
    from tune_prune.pruning.measure import count_macs
    from tune_prune.search import build

    dummy = workload.dummy_input()
    model = copy.deepcopy(baseline)
    p = build.make_pruner(pruner, mode, dummy)
    p.reset(model, build.make_config_list("channels", mode, sparsity))
    _, masks = p.compress()
    p._unwrap_model()
    return count_macs(model, dummy, masks) / count_macs(baseline, dummy)


def calibrate_channels(workload: Any, baseline: torch.nn.Module, factor: float) -> tuple[float, float]:
    """Channel sparsity at which L1 'normal' one-shot pruning gives MACs ratio ~ 1/factor."""
    want = 1.0 / factor
    lo, hi = 0.0, 0.9
    for _ in range(14):
        mid = (lo + hi) / 2
        if oneshot_macs_ratio(workload, baseline, mid) > want:
            lo = mid
        else:
            hi = mid
    s = round(hi, 3)
    return s, oneshot_macs_ratio(workload, baseline, s)


# ----------------------------------------------------------------------------- hand schedules
def hand_trial(method: str, kind: str, iterations: int, epochs: float, lr: float) -> dict[str, Any]:
    """The trial config (as the search's space would normalise it) of a hand-picked schedule."""
    pruner = "level" if kind == "weights" else "l1"
    mode = "global" if method in (AGP_G, ONESHOT_G) else "normal"
    trial: dict[str, Any] = {"pruner": pruner, "mode": mode, "finetune_epochs": epochs,
                             "lr": lr, "reset_weight": False, "total_iteration": iterations}
    if method in (AGP, AGP_G):
        trial["generator"] = "agp"
    elif method == LINEAR:
        trial["generator"] = "linear"
    elif method == LTH:
        trial.update(generator="lottery_ticket", reset_weight=True, rewind="dense")
    elif method in (SHORT, SHORT_LR):  # ``epochs`` is the whole budget here
        trial.update(generator="agp", total_iteration=1, mode="global")
        trial["finetune_epochs"] = epochs
    elif method in (ONESHOT, ONESHOT_G):
        # one AGP step goes straight to the target; its single fine-tune gets all epochs
        trial.update(generator="agp", total_iteration=1, finetune_epochs=epochs * iterations)
    else:
        raise ValueError(method)
    return trial


def run_hand(job: dict[str, Any]) -> dict[str, Any]:
    """One hand schedule through the search's trainable, in this process, without Ray."""
    from tune_prune.search import run_schedule

    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = run_schedule({"fixed": job["fixed"], **job["trial"]})
    last = rows[-1]
    return {**job["key"], "test_acc": last["test_score"], "val_acc": last["score"], "sparsity": last["sparsity"],
            "weight_sparsity": last["weight_sparsity"], "macs_ratio": last["macs_ratio"],
            "reached_target": bool(last["reached_target"]),
            "epochs_schedule": last["finetune_epochs_cum"], "epochs_total": last["finetune_epochs_cum"],
            "schedule": _describe(job["trial"]), "seconds": time.perf_counter() - start}


def _describe(trial: dict[str, Any]) -> str:
    parts = [f"{trial['generator']}", f"{trial['pruner']}:{trial['mode']}",
             f"{int(trial['total_iteration'])} it", f"{float(trial['finetune_epochs']):g} ep/it",
             f"lr {float(trial['lr']):.2g}"]
    if trial.get("reset_weight"):
        parts.append(f"rewind {trial.get('rewind', 'dense')}")
    if trial.get("curve_exponent") is not None and trial["generator"] == "curve":
        parts.append(f"exp {float(trial['curve_exponent']):.2f}")
    return " ".join(parts)


def _describe_row(row: Any) -> str:
    """:func:`_describe` of one row of a search's ``best_per_trial`` table."""
    trial = {k: row.get(k) for k in ("generator", "pruner", "mode", "total_iteration",
                                     "finetune_epochs", "lr", "reset_weight", "rewind", "curve_exponent")}
    return _describe({**trial, "reset_weight": bool(trial["reset_weight"])})


# ----------------------------------------------------------------------------- searches
def run_one_search(values: dict[str, Any], random: bool = False) -> tuple[Any, dict[str, Any]]:
    """run_search(SearchConfig(**values)) on the Ray instance already started; returns
    (outcome, summary of its best trial incl. TEST accuracy and epochs spent)."""
    from tune_prune.search.config import SearchConfig
    from tune_prune.search.runner import run_search

    cfg = SearchConfig.create(**values, **({"sampler": "random"} if random else {}))
    out = run_search(cfg)
    best = out.best
    if best.empty:
        raise RuntimeError(f"search {out.experiment_dir} reported nothing")
    top = best.iloc[0]
    info = {
        **_row_summary(top),
        "weight_sparsity": float(top.get("weight_sparsity", float("nan"))),
        "epochs_total": float(best["finetune_epochs_total"].sum()),
        "seconds": out.wall_s, "trials": len(best),
        "stopped": int((best["status"] == "stopped").sum()),
        "errors": out.num_errors,
        "experiment": str(out.experiment_dir),
    }
    warm = best[best["warm_start"].eq(True)]  # the column best_per_trial marks them in
    if not warm.empty:  # best is sorted by objective: with several warm starts, the best on val
        info["warm_start"] = {**_row_summary(warm.iloc[0]), "trial_id": warm.iloc[0]["trial_id"],
                              "picked": warm.iloc[0]["trial_id"] == top["trial_id"]}
    return out, info


def _row_summary(row: Any) -> dict[str, Any]:
    """Accuracies, sparsity, cost and schedule of one row of a search's ``best_per_trial``."""
    return {
        "test_acc": float(row["test_score"]), "val_acc": float(row["score"]),
        "sparsity": float(row["sparsity"]), "macs_ratio": float(row.get("macs_ratio", float("nan"))),
        "reached_target": bool(row["reached_target"]),
        # the trial's epochs up to its best (at-target) iteration
        "epochs_schedule": float(row["finetune_epochs_cum"]),
        "schedule": _describe_row(row),
    }


# ----------------------------------------------------------------------------- main
def search_flag_values(flags: str) -> dict[str, Any]:
    """SearchConfig values of ``--search-flags`` (parsed by the search CLI's own parser, so
    the names, types and checks are the CLI's; only the flags given are returned)."""
    if not flags.strip():
        return {}
    from tune_prune.search.cli import build_parser

    values = dict(vars(build_parser().parse_args(shlex.split(flags))))
    values.pop("log_level", None)
    if "config" in values:
        raise SystemExit("--search-flags: --config is not supported here; pass the fields as flags")
    if "workload_options" in values:
        values["workload_options"] = dict(values["workload_options"])
    return values


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Raw per-run rows (hand and search rows have different keys: union, blanks allowed)."""
    import csv

    keys = list(dict.fromkeys(k for r in records for k in r))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, restval="")
        writer.writeheader()
        writer.writerows(records)


def summarise(records: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    headers = ["target", "kind", "sparsity (config units)", "method", "test acc % (mean ± std)",
               "min–max %", "seeds", "MACs ratio (mean)", "at target", "FT epochs of final schedule",
               "FT epochs spent in total (mean)"]
    rows: list[list[Any]] = []
    for target in dict.fromkeys(r["target"] for r in records):
        for method in METHODS:
            sel = [r for r in records if r["target"] == target and r["method"] == method]
            if not sel:
                continue
            accs = [r["test_acc"] for r in sel]
            ep = [r["epochs_schedule"] for r in sel]
            ep_txt = f"{min(ep):g}" if min(ep) == max(ep) else f"{statistics.fmean(ep):.1f} ({min(ep):g}–{max(ep):g})"
            rows.append([target, sel[0]["kind"], f"{statistics.fmean(r['sparsity'] for r in sel):.3f}",
                         method, pm(accs), f"{min(accs) * 100:.2f}–{max(accs) * 100:.2f}", len(sel),
                         f"{statistics.fmean(r['macs_ratio'] for r in sel):.3f}",
                         f"{sum(r['reached_target'] for r in sel)}/{len(sel)}", ep_txt,
                         f"{statistics.fmean(r['epochs_total'] for r in sel):.1f}"])
    return headers, rows


def verdict_lines(records: list[dict[str, Any]]) -> list[str]:
    """Search minus the best hand schedule (by mean test accuracy), paired by seed, per target."""
    out = ["Search minus the best hand schedule of the target (by mean test accuracy), paired by seed,",
           "test accuracy points, mean ± std (wins = seeds where the search is strictly better):", "",
           "| target | best hand schedule | its FT epochs | search (TPE) − it | random search − it | "
           "TPE final-schedule epochs / hand epochs | search (TPE) − its warm start alone |",
           "|---|---|---|---|---|---|---|"]
    for target in dict.fromkeys(r["target"] for r in records):
        by = {(r["method"], r["seed"]): r for r in records if r["target"] == target}
        seeds = sorted({s for (_, s) in by})
        hand = [m for m in HAND if all((m, s) in by for s in seeds)]
        if not hand or not all((SEARCH, s) in by for s in seeds):
            continue
        best_hand = max(hand, key=lambda m: statistics.fmean(by[(m, s)]["test_acc"] for s in seeds))
        cells = []
        for method in (SEARCH, RANDOM):
            if not all((method, s) in by for s in seeds):
                cells.append("–")
                continue
            diffs = [100 * (by[(method, s)]["test_acc"] - by[(best_hand, s)]["test_acc"]) for s in seeds]
            m, sd = mean_std(diffs)
            cells.append(f"{m:+.2f} ± {sd:.2f} (wins {sum(d > 0 for d in diffs)}/{len(seeds)})")
        hand_ep = statistics.fmean(by[(best_hand, s)]["epochs_schedule"] for s in seeds)
        tpe_ep = statistics.fmean(by[(SEARCH, s)]["epochs_schedule"] for s in seeds)
        over_warm = "–"
        if all((WARM, s) in by for s in seeds):  # what the other trials add to the first
            diffs = [100 * (by[(SEARCH, s)]["test_acc"] - by[(WARM, s)]["test_acc"]) for s in seeds]
            m, sd = mean_std(diffs)
            over_warm = f"{m:+.2f} ± {sd:.2f} (better on {sum(d > 0 for d in diffs)}/{len(seeds)})"
        out.append(f"| {target} | {best_hand} | {hand_ep:g} | {cells[0]} | {cells[1]} | "
                   f"{tpe_ep:.1f} / {hand_ep:g} = {tpe_ep / hand_ep:.2f} | {over_warm} |")
    return out


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=DEFAULT_TARGETS,
                        help="wS (weight sparsity S) and/or cNx (channels, MACs / N)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--num-samples", type=int, default=8, help="trials per search")
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--hand-iterations", type=int, default=10)
    parser.add_argument("--hand-epochs", type=float, default=1.0, help="fine-tune epochs per iteration")
    parser.add_argument("--no-random", action="store_true", help="skip the random-search arm")
    parser.add_argument("--search-flags", default="", metavar="'FLAGS'",
                        help="extra `python -m tune_prune.search` flags (one string, split with shlex) "
                        "appended to the TPE and random searches' arguments, e.g. "
                        "\"--max-iterations 4 --finetune-epochs 1 2 5\"; recorded in runs.jsonl and the header")
    parser.add_argument("--workers", type=int, default=2, help="processes for the hand schedules")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--storage", type=Path, default=None,
                        help="keep the search experiment folders here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--skip-hand", action="store_true", help="run the searches only")
    parser.add_argument("--skip-search", action="store_true", help="run the hand schedules only")
    parser.add_argument("--hand-methods", nargs="+", default=None, metavar="METHOD",
                        help=f"run only these hand schedules (of {list(HAND)})")
    parser.add_argument("--short-epochs", type=float, default=None,
                        help="also run one-shot + FT (global) with this many epochs in all "
                        "(weights), to compare at the search's final-schedule budget")
    parser.add_argument("--short-lr", type=float, default=None,
                        help="with --short-epochs: also run that schedule at this lr (picked after "
                        "seeing the searches; shown, but not a hand schedule in the verdict)")
    parser.add_argument("--from-records", type=Path, nargs="+", default=None,
                        help="only re-summarise runs.jsonl file(s) written by earlier runs")
    parser.add_argument("--note", action="append", default=[],
                        help="with --from-records: header line(s) (the runs' commands and machine)")
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, target w0.8, 2-trial searches, 2 iterations of 0.25 epoch, 1-epoch baseline")
    args = parser.parse_args(argv)
    argv_used = list(argv) if argv is not None else sys.argv[1:]
    search_values: dict[str, Any] = {"num_samples": args.num_samples, "max_concurrent": args.max_concurrent}
    workload_options: dict[str, Any] = {}
    if args.quick:
        args.targets, args.seeds, args.hand_iterations, args.hand_epochs = ["w0.8"], args.seeds[:1], 2, 0.25
        workload_options = {"baseline_epochs": 1.0}
        args.short_epochs = args.short_epochs or 0.25
        args.short_lr = args.short_lr or 0.02
        search_values.update(num_samples=2, min_iterations=1, max_iterations=2, finetune_epochs=[0.25])
    search_flags = search_flag_values(args.search_flags)
    search_values.update(search_flags)
    torch.set_num_threads(1)
    if args.from_records:
        records = [json.loads(line) for path in args.from_records
                   for line in path.read_text().splitlines() if line.strip()]
        # --targets / --hand-methods select rows here too (e.g. one target's seeds from two runs)
        records = [r for r in records if r["target"] in args.targets
                   and (not args.hand_methods or r["method"] not in HAND + (SHORT_LR,)
                        or r["method"] in args.hand_methods)]
        headers, rows = summarise(records)
        header = [command_line(MODULE, argv_used), *args.note]
        args.out.mkdir(parents=True, exist_ok=True)
        write_records(args.out / "runs.csv", records)
        return write_results(args.out, header, headers, rows, footer=verdict_lines(records))
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl = args.out / "runs.jsonl"
    records: list[dict[str, Any]] = []
    jsonl.write_text("")

    def keep(rec: dict[str, Any]) -> None:
        records.append(rec)
        with open(jsonl, "a") as fh:
            fh.write(json.dumps(rec, default=str) + "\n")

    from tune_prune.workloads import get_workload, load_or_train_baseline

    workload = get_workload("digits", **workload_options)
    lr = float(workload.config.finetune_lr)
    start = time.perf_counter()
    header = [command_line(MODULE, argv_used), *machine_lines()]
    print("\n".join(header), flush=True)
    targets: dict[str, tuple[str, float]] = {}
    calib: list[str] = []
    for token in args.targets:
        kind, value = parse_target(token)
        if kind == "weights":
            targets[token] = (kind, value)
        else:
            s, ratio = calibrate_channels(workload, load_or_train_baseline(workload, 0, args.cache), value)
            targets[token] = (kind, s)
            calib.append(f"{token}: channel sparsity {s:.3f} (L1 'normal' one-shot on the seed-0 baseline: "
                         f"MACs ratio {ratio:.3f})")
    for seed in args.seeds:  # train missing baselines once, before the workers and trials need them
        load_or_train_baseline(workload, seed, args.cache)

    from tune_prune.search.runner import fixed_config

    # ---- hand schedules: in-process trainable calls, `workers` at a time
    jobs = []
    for token, (kind, sparsity) in ({} if args.skip_hand else targets).items():
        base = {"workload_options": workload_options, "target_sparsity": sparsity, "sparsity_kind": kind,
                "baseline_cache_dir": str(args.cache.resolve())}
        for seed in args.seeds:
            from tune_prune.search.config import SearchConfig

            fixed = fixed_config(SearchConfig.create(**base, seed=seed), True)
            methods = list(HAND_BY_KIND[kind])
            if args.short_epochs and kind == "weights":
                methods.append(SHORT)
                if args.short_lr:
                    methods.append(SHORT_LR)
            for method in methods:
                if args.hand_methods and method not in args.hand_methods:
                    continue
                epochs = args.short_epochs if method in (SHORT, SHORT_LR) else args.hand_epochs
                method_lr = args.short_lr if method == SHORT_LR else lr
                jobs.append({"fixed": fixed,
                             "trial": hand_trial(method, kind, args.hand_iterations, epochs, method_lr),
                             "key": {"target": token, "kind": kind, "seed": seed, "method": method}})
    t_hand = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for rec in pool.map(run_hand, jobs):
            keep(rec)
            print(f"{rec['target']} seed {rec['seed']} {rec['method']}: test {rec['test_acc']:.4f} "
                  f"sparsity {rec['sparsity']:.3f} [{rec['seconds']:.0f} s]", flush=True)
    t_hand = time.perf_counter() - t_hand

    # ---- searches: one local Ray instance for all of them
    import ray

    t_search = time.perf_counter()
    storage_ctx = (contextlib.nullcontext(str(args.storage)) if args.storage
                   else tempfile.TemporaryDirectory(prefix="tp_search_vs_hand_"))
    ray.init(num_cpus=args.max_concurrent, include_dashboard=False, log_to_driver=False)
    try:
        with storage_ctx as storage:
            for token, (kind, sparsity) in ({} if args.skip_search else targets).items():
                for seed in args.seeds:
                    arms = [(SEARCH, False)] + ([] if args.no_random else [(RANDOM, True)])
                    for method, random in arms:
                        values = {**search_values, "workload_options": workload_options,
                                  "target_sparsity": sparsity, "sparsity_kind": kind, "seed": seed,
                                  "baseline_cache_dir": str(args.cache.resolve()), "storage_path": storage,
                                  "name": f"{'random' if random else 'tpe'}-{token}-seed{seed}",
                                  "include_dashboard": False}
                        _, info = run_one_search(values, random=random)
                        rec = {"target": token, "kind": kind, "seed": seed, "method": method, **info,
                               "search_flags": args.search_flags}
                        keep(rec)
                        warm = rec.get("warm_start")
                        if warm and not random:  # the same trial in both arms (same seed)
                            keep({"target": token, "kind": kind, "seed": seed, "method": WARM,
                                  **{k: v for k, v in warm.items() if k != "picked"},
                                  "epochs_total": warm["epochs_schedule"], "search_flags": args.search_flags})
                        print(f"{token} seed {seed} {method}: test {rec['test_acc']:.4f} val "
                              f"{rec['val_acc']:.4f} [{rec['schedule']}] epochs {rec['epochs_schedule']:g}"
                              f"/{rec['epochs_total']:g} [{rec['seconds']:.0f} s]", flush=True)
    finally:
        ray.shutdown()
    t_search = time.perf_counter() - t_search

    elapsed = time.perf_counter() - start
    header += [
        f"digits config {workload.config}",
        f"seeds {args.seeds}; searches: {search_values['num_samples']} trials, "
        f"{search_values['max_concurrent']} at a time, "
        + (f"search flags {args.search_flags!r} ({search_flags})" if search_flags else "CLI defaults")
        + " otherwise; hand schedules: "
        f"{args.hand_iterations} iterations x {args.hand_epochs:g} epoch at lr {lr:g}",
        *calib,
        f"wall time {elapsed:.0f} s (hand schedules {t_hand:.0f} s on {args.workers} processes, "
        f"searches {t_search:.0f} s); " + machine_lines()[-1],
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    write_records(args.out / "runs.csv", records)
    headers, rows = summarise(records)
    return write_results(args.out, header, headers, rows, footer=verdict_lines(records))


if __name__ == "__main__":
    main()
