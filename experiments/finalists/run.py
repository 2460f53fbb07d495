"""Which screened schedules should a screened search run again at the full budget?

A screened search (``screen_fraction < 1``) fine-tunes every trial on a fraction of the
budget, then runs its ``finalists`` best schedules again at the full budget and picks
among them on the select split. Each finalist costs one full budget (15 epochs at the
defaults, a third of the 3x the issue allows), so which ones run decides both the cost
and how often the screen's misranking is caught. This runs each search once with
``finalists=K`` (default 3) and ``warm_finalist`` on, so every finalist the policies below
could choose is run, then replays the policies on the same searches (the screen is the
same for all of them; only the final stage differs):

- ``top1``: the best screened schedule only (the default since stop 21);
- ``top1+warm``: plus the best warm start when it did not screen first (``warm_finalist``,
  the default before stop 21);
- ``top2``, ``top2+warm``, ``top3``: more of the screen's order;
- ``margin D``: the best, plus each of the next ones and the best warm start whose
  screened objective is within D of it (a second look only where the screen ties).

Per policy: the TEST accuracy of the pick (the best finalist on the select split), the
fine-tune epochs paid (screen + the policy's finalists) as a multiple of the final
schedule's budget, and the pick minus the best hand schedule at the final budget, paired
by seed, from a headline run's records (``--hand-records``; lr picked on validation).

    python -m experiments.finalists.run --workload digits --targets w0.98 w0.95 --seeds 0 1 2 3 4 5 6 7 8 9 \\
        --hand-records experiments/headline/digits_sf075/runs.jsonl experiments/headline/digits_sf075_s59/runs.jsonl \\
        --out experiments/finalists/digits
    python -m experiments.finalists.run --quick     # smoke run (meaningless numbers)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from experiments._common import (
    DEFAULT_CACHE,
    command_line,
    key_json_options,
    machine_lines,
    write_csv,
    write_results,
)
from experiments.fidelity.run import parse_target

HERE = Path(__file__).resolve().parent
MODULE = "experiments.finalists.run"
MARGINS = (0.01, 0.02)
SCHEDULE_KEYS = ("generator", "pruner", "mode", "total_iteration", "lr", "reset_weight")


def search_record(out: Any, full_budget: float) -> dict[str, Any]:
    """One search -> its screen's epochs paid, the final budget and every finalist in screened order."""
    screen = out.screen_best
    if screen is None or out.final is None or out.best.empty:
        raise RuntimeError(f"search {out.experiment_dir} ran no final stage")
    warm = dict(zip(screen["trial_id"].astype(str), screen["warm_start"].fillna(False).astype(bool)))
    finalists = []
    for _, row in out.best.iterrows():
        finalists.append({
            "screen_objective": float(row["screen_objective"]), "objective": float(row["objective"]),
            "test": float(row["test_score"]), "epochs": float(row["finetune_epochs_total"]),
            "warm": warm.get(str(row["screen_trial_id"]), False),
            "schedule": {k: row.get(k) for k in SCHEDULE_KEYS}})
    finalists.sort(key=lambda f: -f["screen_objective"])
    return {"screen_epochs": float(screen["finetune_epochs_total"].fillna(0).sum()),
            "final_budget": full_budget, "finalists": finalists}


def policies(rec: dict[str, Any], top: int) -> dict[str, tuple[float, float, int]]:
    """Policy -> (TEST % of its pick, epochs paid, finalists run) on one search's record."""
    fin = rec["finalists"]
    best_warm = next((f for f in fin if f["warm"]), None)

    def pick(chosen: list[dict[str, Any] | None]) -> tuple[float, float, int]:
        unique: list[dict[str, Any]] = []
        for f in chosen:
            if f is not None and all(f is not u for u in unique):
                unique.append(f)
        winner = max(unique, key=lambda f: f["objective"])  # the select split decides
        return 100 * winner["test"], rec["screen_epochs"] + sum(f["epochs"] for f in unique), len(unique)

    ranked = fin[:top]  # the screen's best K (a best warm start beyond them comes after)
    out = {"top1": pick(ranked[:1]), "top1+warm": pick([*ranked[:1], best_warm]),
           "top2": pick(ranked[:2]), "top2+warm": pick([*ranked[:2], best_warm]), f"top{top}": pick(ranked)}
    lead = ranked[0]["screen_objective"]
    for margin in MARGINS:
        close = [f for f in [*ranked, best_warm] if f is not None and lead - f["screen_objective"] <= margin + 1e-9]
        out[f"margin {margin:g}"] = pick([ranked[0], *close])
    return out


def best_hand(rows: list[dict[str, Any]], target: str) -> tuple[str, dict[int, float]]:
    """The best hand schedule at the final budget (highest mean TEST, lr picked on val) among a
    headline run's records: its name and TEST % per seed."""
    from experiments.headline.run import lr_picked

    by: dict[str, dict[int, float]] = defaultdict(dict)
    for r in lr_picked(rows):
        if r["target"] == target and r.get("budget_name") == "final":
            by[r["method"]][r["seed"]] = 100 * r["test"]
    if not by:
        return "–", {}
    name = max(by, key=lambda m: statistics.fmean(by[m].values()))
    return name, by[name]


def summarise(records: list[dict[str, Any]], hand_paths: list[Path], top: int) -> tuple[list[list[Any]], list[str]]:
    hand_rows = [json.loads(line) for p in hand_paths for line in p.read_text().splitlines() if line.strip()]
    rows, footer = [], []
    over: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for target in dict.fromkeys(r["target"] for r in records):
        mine = [r for r in records if r["target"] == target]
        replayed = [policies(r, top) for r in mine]
        hand_name, hand = best_hand(hand_rows, target)
        for name in replayed[0]:
            tests = [got[name][0] for got in replayed]
            times = [got[name][1] / r["final_budget"] for got, r in zip(replayed, mine)]
            diffs = [got[name][0] - hand[r["seed"]] for got, r in zip(replayed, mine) if r["seed"] in hand]
            diff = statistics.fmean(diffs) if diffs else float("nan")
            over[name].append((diff, max(times)))
            rows.append([target, name, len(mine), f"{statistics.fmean(tests):.2f}",
                         f"{statistics.fmean(got[name][2] for got in replayed):.1f}",
                         f"{statistics.fmean(times):.2f}x", f"{max(times):.2f}x", f"{diff:+.2f}" if diffs else "–",
                         f"{sum(d >= 1 for d in diffs)}/{len(diffs)}" if diffs else "–", hand_name])
    for name, cells in over.items():
        footer.append(f"- {name}: pick − best hand {statistics.fmean(d for d, _ in cells):+.2f} points per cell; "
                      f">= +1 on {sum(d >= 1 for d, _ in cells)}/{len(cells)} cells; paid <= 3x the final "
                      f"schedule on {sum(t <= 3.0 + 1e-9 for _, t in cells)}/{len(cells)} cells (every seed)")
    return rows, footer


HEADERS = ["target", "finalists policy", "seeds", "TEST % of the pick", "finalists run", "paid / final (mean)",
           "paid / final (max)", "pick − best hand at final (points)", "ahead >= 1 (seeds)", "best hand"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", default="digits")
    p.add_argument("--workload-option", action="append", default=[], metavar="KEY=JSON")
    p.add_argument("--targets", nargs="+", default=["w0.98", "w0.95"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--finalists", type=int, default=3, help="the screen's best K run at the full budget")
    p.add_argument("--search-option", action="append", default=[], metavar="KEY=JSON")
    p.add_argument("--hand-records", type=Path, nargs="*", default=[],
                   help="headline runs.jsonl files with the hand schedules at the final budget")
    p.add_argument("--from-records", type=Path, nargs="+", help="summarise these runs.jsonl files only")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, default=HERE / "digits")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (meaningless numbers)")
    args = p.parse_args(argv)
    argv_used = sys.argv[1:] if argv is None else argv
    header = [command_line(MODULE, argv_used), *machine_lines()]
    start = time.perf_counter()
    if args.from_records:
        records = [json.loads(line) for path in args.from_records for line in path.read_text().splitlines()
                   if line.strip()]
        header.append("records: " + " ".join(str(p) for p in args.from_records))
    else:
        records = run_searches(args, header)
    rows, footer = summarise(records, args.hand_records, args.finalists)
    header.append(f"{len(records)} searches; wall time {time.perf_counter() - start:.0f} s; "
                  + machine_lines()[-1])
    write_results(args.out, header, HEADERS, rows, footer)
    if not args.from_records:
        write_csv(args.out / "runs.csv", [{k: v for k, v in r.items() if k != "finalists"} for r in records])


def run_searches(args: argparse.Namespace, header: list[str]) -> list[dict[str, Any]]:
    import ray

    from tune_prune.search.config import SearchConfig
    from tune_prune.search.runner import run_search

    options = {"device": "cpu", **key_json_options(args.workload_option, "--workload-option")}
    search_options = {**key_json_options(args.search_option, "--search-option"),
                      "finalists": args.finalists, "warm_finalist": True}
    if args.quick:
        args.seeds, args.targets = args.seeds[:1], args.targets[:1]
        options["baseline_epochs"] = 1.0
        search_options = {"finetune_budget": 0.5, "num_samples": 3, "max_iterations": 2, "warm_start": ["one_shot"],
                          **search_options, "finalists": min(args.finalists, 2)}
        args.finalists = search_options["finalists"]
    header.append(f"workload {args.workload} options {options}; search options {search_options}")
    print("\n".join(header), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl = args.out / "runs.jsonl"
    jsonl.write_text("")
    records: list[dict[str, Any]] = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="tp_finalists_") as storage:
            for token in args.targets:
                kind, sparsity = parse_target(token)
                for seed in args.seeds:
                    cfg = SearchConfig.create(**{
                        **search_options, "workload": args.workload, "workload_options": options,
                        "target_sparsity": sparsity, "sparsity_kind": kind, "seed": seed,
                        "baseline_cache_dir": str(args.cache.resolve()), "storage_path": storage,
                        "name": f"{token}-{seed}", "include_dashboard": False, "reuse_actors": True,
                        "max_concurrent": 2})
                    rec = {"workload": args.workload, "workload_options": options, "target": token, "seed": seed,
                           **search_record(run_search(cfg), float(cfg.full_budget))}
                    records.append(rec)
                    with open(jsonl, "a") as fh:
                        fh.write(json.dumps(rec, default=str) + "\n")
                    print(f"{token} seed {seed}: " + ", ".join(
                        f"{f['screen_objective']:.3f} -> {f['objective']:.3f} (test {f['test']:.3f})"
                        for f in rec["finalists"]), flush=True)
    finally:
        ray.shutdown()
    return records


if __name__ == "__main__":
    main()
