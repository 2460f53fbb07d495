"""The headline: does the default search beat strong hand schedules where schedules matter?

Targets where one-shot pruning breaks down (95 % and 98 % of weights; 4x and 6x fewer
MACs by channels), per seed (each starts from that seed's cached dense baseline):

- ``NNI default``: AGP, 10 iterations x 1 epoch, per-layer ranking, lr 0.01;
- hand schedules, each with a global ranking where it applies (weights) and at the best
  lr of ``--lrs`` chosen on VALIDATION per seed (never on test):
  ``one-shot`` (prune once, the whole budget), ``AGP`` (``--agp-iterations`` steps),
  ``IMP + rewinding`` (iterative magnitude pruning, weights rewound to the dense model
  after each round, the last ticket retrained: NNI's lottery-ticket order); each given
  (i) the search's final-schedule budget and (ii) everything the default search paid on
  that (target, seed) (the searches run first; its screening plus its finalists); with
  ``--swept`` also (iii) "swept": that paid budget split over the lr grid (each lr gets
  paid / len(lrs)), so the lr sweep that picks a hand schedule's lr costs what the search
  paid, as the search's own lr choice does;
- the search at its CLI defaults, at 16 trials, and random search (same defaults).

All runs go through ``tune_prune.search.run_schedule`` / ``run_search``, so pruning,
fine-tuning and measurement are identical. TEST accuracy is reported, never used to
choose. Epochs paid and wall time are reported for every row.

    python -m experiments.headline.run --workload digits --targets w0.95 w0.98
    python -m experiments.headline.run --quick          # smoke run (meaningless numbers)

``--hand-records`` / ``--search-records`` reuse the rows of earlier runs (all runs are
deterministic per seed); a reused hand row given the "paid" budget is rerun whenever this
run's search paid a different budget on its (target, seed), so a paid comparison never
uses a stale budget.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
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
    key_json_options,
    machine_lines,
    write_csv,
    write_results,
)
from experiments.search_vs_hand.run import calibrate_channels, parse_target

MODULE = "experiments.headline.run"
HERE = Path(__file__).resolve().parent
NNI = "NNI default (AGP 10 x 1 ep, lr 0.01)"
HAND = ("one-shot", "AGP", "IMP + rewinding")
#: With --hand-distill W: one-shot whose fine-tune also distils from the dense model (weight W),
#: the hand reference for a search that may distil; counted among the hand schedules.
DISTILLED = "one-shot + distillation"
SEARCHES = {"search (defaults)": {}, "search, 16 trials": {"num_samples": 16},
            "random search": {"sampler": "random"}}


def hand_schedule(method: str, kind: str, budget: float, lr: float, agp_iterations: int,
                  distill: tuple[float, float] | None = None) -> dict[str, Any]:
    """A hand schedule as a normalised trial config (what the search's space would produce);
    ``distill`` = (weight, temperature) for :data:`DISTILLED`."""
    mode = "global" if kind == "weights" else "normal"
    pruner = "level" if kind == "weights" else "l1"
    base = {"pruner": pruner, "mode": mode, "lr": lr, "lr_schedule": "cosine", "reset_weight": False}
    if method == NNI:
        return {**base, "generator": "agp", "mode": "normal", "total_iteration": 10, "finetune_epochs": 1.0}
    if method == "one-shot":
        return {**base, "generator": "agp", "total_iteration": 1, "finetune_epochs": budget}
    if method == DISTILLED:
        if distill is None:
            raise ValueError(f"{DISTILLED!r} needs distill=(weight, temperature)")
        return {**hand_schedule("one-shot", kind, budget, lr, agp_iterations),
                "distill": distill[0], "distill_temperature": distill[1]}
    if method == "AGP":
        return {**base, "generator": "agp", "total_iteration": agp_iterations,
                "finetune_epochs": budget / agp_iterations}
    if method == "IMP + rewinding":  # n rounds + the retrained last ticket share the budget
        n = agp_iterations
        return {**base, "generator": "lottery_ticket", "total_iteration": n, "reset_weight": True,
                "rewind": "dense", "finetune_epochs": budget / (n + 1)}
    raise ValueError(method)


def run_hand(job: dict[str, Any]) -> dict[str, Any]:
    from tune_prune.search import run_schedule

    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = run_schedule({"fixed": job["fixed"], **job["trial"]})
    last = rows[-1]
    # a swept row's cost is its whole lr sweep (sweep_runs runs of this budget)
    paid = last["finetune_epochs_cum"] * job.get("sweep_runs", 1)
    return {**job["key"], "val": last["objective"], "test": last["test_score"], "sparsity": last["sparsity"],
            "macs_ratio": last["macs_ratio"], "epochs_final": last["finetune_epochs_cum"],
            "epochs_paid": paid, "seconds": time.perf_counter() - start,
            "schedule": json.dumps(job["trial"], sort_keys=True)}


def search_defaults(search_options: dict[str, Any], targets: list[str]) -> Any:
    """The default search's config under ``--search-option`` (its budgets bound the hand rows');
    of the channel kind when every target is a channel one, so channel-only options validate."""
    from tune_prune.search.config import SearchConfig

    kinds = {parse_target(token)[0] for token in targets}
    kind = {"sparsity_kind": "channels"} if kinds == {"channels"} else {}
    return SearchConfig.create(**kind, **search_options)


def run_one_search(values: dict[str, Any]) -> dict[str, Any]:
    """run_search on the Ray instance already started; its pick, TEST score and epochs paid."""
    from tune_prune.search.config import SearchConfig
    from tune_prune.search.runner import run_search

    start = time.perf_counter()
    out = run_search(SearchConfig.create(**values))
    if out.best.empty:
        raise RuntimeError(f"search {out.experiment_dir} reported nothing")
    pick = out.best.iloc[0]
    paid = float(out.best["finetune_epochs_total"].sum())
    if out.screen_best is not None:
        paid += float(out.screen_best["finetune_epochs_total"].sum())
    keys = ("generator", "pruner", "mode", "total_iteration", "lr", "lr_schedule", "reset_weight", "distill")
    return {"val": float(pick["objective"]), "test": float(pick["test_score"]), "sparsity": float(pick["sparsity"]),
            "macs_ratio": float(pick.get("macs_ratio", float("nan"))),
            "epochs_final": float(pick["finetune_epochs_cum"]), "epochs_paid": paid,
            "seconds": time.perf_counter() - start, "experiment": str(out.experiment_dir),
            "schedule": json.dumps({k: pick.get(k) for k in keys}, default=str)}


def lr_picked(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (target, seed, method, budget): the run whose lr scored best on VALIDATION."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in records:
        key = (r["target"], r["seed"], r["method"], r.get("budget_name", ""))
        if key not in best or r["val"] > best[key]["val"]:
            best[key] = r
    return list(best.values())


def summarise(records: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]], list[str]]:
    rows, verdict = [], []
    picked = lr_picked(records)
    headers = ["target", "method", "budget", "test acc % (mean ± std)", "min–max %", "seeds", "lr (picked on val)",
               "FT epochs of final schedule", "FT epochs paid", "wall s (mean)"]
    targets = list(dict.fromkeys(r["target"] for r in picked))

    def cell(group: list[dict[str, Any]]) -> list[Any]:
        tests = [100 * g["test"] for g in group]
        std = statistics.stdev(tests) if len(tests) > 1 else 0.0
        lrs = sorted({g.get("lr") for g in group if g.get("lr") is not None})
        return [f"{statistics.fmean(tests):.2f} ± {std:.2f}", f"{min(tests):.2f}–{max(tests):.2f}", len(group),
                " ".join(f"{x:g}" for x in lrs) or "–",
                f"{statistics.fmean(g['epochs_final'] for g in group):.2f}",
                f"{statistics.fmean(g['epochs_paid'] for g in group):.2f}",
                f"{statistics.fmean(g['seconds'] for g in group):.0f}"]

    for target in targets:
        mine = [r for r in picked if r["target"] == target]
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in mine:
            groups.setdefault((r["method"], r.get("budget_name", "")), []).append(r)
        for (method, budget), group in groups.items():
            rows.append([target, method, budget or "–", *cell(sorted(group, key=lambda g: g["seed"]))])

        def by_seed(method: str, budget: str = "", mine: list[dict[str, Any]] = mine) -> dict[int, float]:
            return {r["seed"]: 100 * r["test"] for r in mine if r["method"] == method
                    and r.get("budget_name", "") == budget}

        search = by_seed("search (defaults)")
        for budget in ("final", "paid", "swept"):
            hands = {m: by_seed(m, budget) for m in (*HAND, DISTILLED)}
            hands = {m: v for m, v in hands.items() if v}
            if not hands or not search:
                continue
            best_hand = max(hands, key=lambda m: statistics.fmean(hands[m].values()))  # optimistic: by test
            diffs = [search[s] - hands[best_hand][s] for s in search if s in hands[best_hand]]
            if diffs:
                sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
                verdict.append(f"- {target}: search (defaults) − best hand schedule at the search's {budget} "
                               f"budget ({best_hand}): {statistics.fmean(diffs):+.2f} ± {sd:.2f} points, "
                               f"search ahead by >= 1 point on {sum(d >= 1 for d in diffs)}/{len(diffs)} seeds")
        nni = by_seed(NNI)
        diffs = [search[s] - nni[s] for s in search if s in nni]
        if diffs:
            verdict.append(f"- {target}: search (defaults) − NNI default: {statistics.fmean(diffs):+.2f} points "
                           f"({len(diffs)} seeds)")
    return headers, rows, verdict


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog=MODULE, description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="digits")
    parser.add_argument("--workload-option", action="append", default=[], metavar="KEY=JSON",
                        help="get_workload keyword for every run, e.g. width=100 (MNIST-1D's conv width)")
    parser.add_argument("--targets", nargs="+", default=["w0.95", "w0.98"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3],
                        help="the hand schedules' lr grid (picked on validation per seed)")
    parser.add_argument("--agp-iterations", type=int, default=5)
    parser.add_argument("--swept", action="store_true",
                        help="add each hand schedule given the search's paid budget split over the lr "
                        "grid (paid / len(--lrs) per lr): its lr sweep then costs what the search paid")
    parser.add_argument("--hand-distill", type=float, default=None, metavar="W",
                        help=f"add the hand row {DISTILLED!r}: one-shot whose fine-tune distils from the "
                        "dense model at weight W (temperature: the search's distill_temperature), at every "
                        "lr of --lrs, counted among the hand schedules")
    parser.add_argument("--searches", nargs="+", default=list(SEARCHES), choices=list(SEARCHES))
    parser.add_argument("--search-option", action="append", default=[], metavar="KEY=JSON",
                        help="SearchConfig field for every search (and the budgets derived from it)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=None, help="default: experiments/headline/<workload>")
    parser.add_argument("--from-records", type=Path, nargs="+", default=None,
                        help="only re-summarise runs.jsonl file(s) (e.g. two runs with different seeds)")
    parser.add_argument("--note", action="append", default=[],
                        help="with --from-records: header line(s) (the runs' commands and machine)")
    parser.add_argument("--hand-records", type=Path, default=None,
                        help="reuse the hand and NNI rows of an earlier runs.jsonl (same workload, targets, "
                        "seeds and final budget; they are deterministic); a 'paid' row is rerun when this "
                        "run's default search paid a different budget on its (target, seed)")
    parser.add_argument("--search-records", type=Path, default=None,
                        help="reuse the search rows of an earlier runs.jsonl; only --searches it lacks run "
                        "(with --hand-records: rerun only the hand rows whose paid budget they change)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 lr, tiny budgets, 1-epoch baseline")
    args = parser.parse_args(argv)
    if args.hand_distill is not None and not 0.0 < args.hand_distill <= 1.0:
        parser.error(f"--hand-distill must be in (0, 1], got {args.hand_distill!r}")
    argv_used = list(argv) if argv is not None else sys.argv[1:]
    out_dir = args.out or HERE / args.workload
    torch.set_num_threads(1)
    if args.from_records:
        records = [json.loads(line) for path in args.from_records
                   for line in path.read_text().splitlines() if line.strip()]
        headers, rows, verdict = summarise(records)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_csv(out_dir / "runs.csv", records)
        (out_dir / "runs.jsonl").write_text("".join(json.dumps(r, default=str) + "\n" for r in records))
        return write_results(out_dir, [command_line(MODULE, argv_used), *args.note], headers, rows,
                             footer=["Verdict (paired by seed):", *verdict])

    from tune_prune.search.config import SearchConfig
    from tune_prune.search.runner import fixed_config
    from tune_prune.workloads import get_workload, load_or_train_baseline

    options: dict[str, Any] = {"device": "cpu", **key_json_options(args.workload_option, "--workload-option")}
    search_options = key_json_options(args.search_option, "--search-option")
    if args.quick:
        args.seeds, args.lrs, args.searches = args.seeds[:1], args.lrs[:1], args.searches[:1]
        args.targets = args.targets[:1]
        options["baseline_epochs"] = 1.0
        search_options = {"finetune_budget": 0.5, "num_samples": 2, "max_iterations": 2, **search_options}
        args.agp_iterations = 2
    workload = get_workload(args.workload, **options)
    defaults = search_defaults(search_options, args.targets)
    final_budget = float(defaults.full_budget)
    # the most the default search can pay (with warm_finalist its best warm start a finalist too);
    # the hand rows' paid budget is what it did pay per (target, seed) when it ran, this otherwise
    warm_finalist = 1 if defaults.screening and defaults.warm_start and defaults.warm_finalist else 0
    paid_budget = (defaults.num_samples * defaults.screen_budget
                   + (defaults.finalists + warm_finalist) * final_budget
                   if defaults.screening else defaults.num_samples * final_budget)
    header = [command_line(MODULE, argv_used), *machine_lines(), f"workload {args.workload}: {workload.config}",
              f"search options {search_options}; the search's final budget {final_budget:g} epochs, "
              f"at most {paid_budget:g} epochs paid; hand schedules get the final budget and what the "
              "default search paid on each (target, seed)"]
    print("\n".join(header), flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    # read before runs.jsonl is emptied: --out may be the directory they came from
    earlier_rows = {path: [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                    for path in (args.hand_records, args.search_records) if path is not None}
    jsonl = out_dir / "runs.jsonl"
    jsonl.write_text("")
    records: list[dict[str, Any]] = []

    def keep(rec: dict[str, Any]) -> None:
        records.append(rec)
        with open(jsonl, "a") as fh:
            fh.write(json.dumps(rec, default=str) + "\n")
        print(f"{rec['target']} seed {rec['seed']} {rec['method']} {rec.get('budget_name', '')} lr "
              f"{rec.get('lr')}: val {rec['val']:.4f} test {rec['test']:.4f} [{rec['seconds']:.0f} s]", flush=True)

    start = time.perf_counter()
    for seed in args.seeds:
        load_or_train_baseline(workload, seed, args.cache)
    targets: dict[str, tuple[str, float]] = {}
    for token in args.targets:
        kind, value = parse_target(token)
        if kind == "channels":
            value, ratio = calibrate_channels(workload, load_or_train_baseline(workload, 0, args.cache), value)
            header.append(f"{token}: channel sparsity {value:.3f} (L1 one-shot MACs ratio {ratio:.3f} on seed 0)")
        targets[token] = (kind, value)

    def earlier(path: Path | None, searches: bool) -> list[dict[str, Any]]:
        """The rows of an earlier runs.jsonl for this run's targets and seeds: its searches or the rest."""
        return [r for r in earlier_rows.get(path, []) if (r["method"] in SEARCHES) == searches
                and r["target"] in targets and r["seed"] in args.seeds]

    hand_reused = earlier(args.hand_records, searches=False)
    paid_by: dict[tuple[str, int], float] = {}  # what the default search paid, per (target, seed)
    if args.search_records:
        for rec in earlier(args.search_records, searches=True):
            keep(rec)
            if rec["method"] == "search (defaults)":
                paid_by[(rec["target"], rec["seed"])] = round(rec["epochs_paid"], 2)
        header.append(f"search rows reused from {args.search_records}")
    have = {(r["target"], r["seed"], r["method"]) for r in records}
    to_run = [(token, kind, sparsity, seed, method) for token, (kind, sparsity) in targets.items()
              for seed in args.seeds for method in args.searches if (token, seed, method) not in have]
    import ray

    if to_run:
        ray.init(num_cpus=args.max_concurrent, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="tp_headline_") as storage:
            for token, kind, sparsity, seed, method in to_run:
                values = {**search_options, **SEARCHES[method], "workload": args.workload,
                          "workload_options": options, "target_sparsity": sparsity, "sparsity_kind": kind,
                          "seed": seed, "baseline_cache_dir": str(args.cache.resolve()),
                          "storage_path": storage, "name": f"search-{len(records)}",
                          "include_dashboard": False, "reuse_actors": True,
                          "max_concurrent": args.max_concurrent}
                rec = {"target": token, "seed": seed, "method": method, **run_one_search(values)}
                keep(rec)
                if method == "search (defaults)":
                    paid_by[(token, seed)] = round(rec["epochs_paid"], 2)
    finally:
        ray.shutdown()
    reused = 0
    for rec in hand_reused:  # a paid row only where the search paid what it was given
        if rec.get("budget_name") not in ("paid", "swept") or abs(rec["epochs_paid"] - paid_by.get(
                (rec["target"], rec["seed"]), paid_budget)) < 0.01:
            keep(rec)
            reused += 1
    if args.hand_records:
        header.append(f"{reused} of {len(hand_reused)} hand and NNI rows reused from {args.hand_records}; "
                      "the others rerun at this run's paid budget")
    done = {(r["target"], r["seed"], r["method"], r.get("budget_name"), r.get("lr")) for r in records}
    jobs = []
    for token, (kind, sparsity) in targets.items():
        for seed in args.seeds:
            cfg = SearchConfig.create(workload=args.workload, workload_options=options, target_sparsity=sparsity,
                                      sparsity_kind=kind, seed=seed, baseline_cache_dir=str(args.cache.resolve()))
            fixed = fixed_config(cfg)
            key = {"target": token, "seed": seed}
            if (token, seed, NNI, None, 0.01) not in done:
                jobs.append({"fixed": fixed, "trial": hand_schedule(NNI, kind, 10, 0.01, 10),
                             "key": {**key, "method": NNI, "lr": 0.01}})
            methods = (*HAND, DISTILLED) if args.hand_distill is not None else HAND
            distill = (args.hand_distill, float(defaults.distill_temperature))
            for method in methods:
                paid = paid_by.get((token, seed), paid_budget)
                budgets = [("final", final_budget), ("paid", paid)]
                if args.swept:
                    budgets.append(("swept", paid / len(args.lrs)))
                for budget_name, budget in budgets:
                    for lr in args.lrs:
                        if (token, seed, method, budget_name, lr) in done:
                            continue
                        jobs.append({"fixed": fixed, "sweep_runs": len(args.lrs) if budget_name == "swept" else 1,
                                     "trial": hand_schedule(method, kind, budget, lr, args.agp_iterations,
                                                            distill),
                                     "key": {**key, "method": method, "budget_name": budget_name, "lr": lr}})
    # spawn: this process has run Ray, whose threads a forked child would inherit half-way
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for rec in pool.map(run_hand, jobs):
            keep(rec)

    header.append(f"wall time {time.perf_counter() - start:.0f} s; " + machine_lines()[-1])
    write_csv(out_dir / "runs.csv", records)
    headers, rows, verdict = summarise(records)
    return write_results(out_dir, header, headers, rows, footer=["Verdict (paired by seed):", *verdict])


if __name__ == "__main__":
    main()
