"""At equal measured CPU latency, is the searched channel-pruned model more accurate than torch-pruning?

Question (issue 14 goal): at equal measured CPU latency (batch 64, 1 thread), is the
channel-pruned model the latency search finds >= 1 point more accurate (TEST) than
torch-pruning's ``MagnitudePruner`` (L1) at a uniform per-layer ratio?

    python -m experiments.channels_latency.run                      # digits, seeds 0 1 2
    python -m experiments.channels_latency.run --workload mnist1d
    python -m experiments.channels_latency.run --workload mnist1d --workload-option width=100 --out experiments/channels_latency/mnist1d_wide
    python -m experiments.channels_latency.run --quick              # smoke run (meaningless numbers)

Per seed, everything starts from that seed's cached dense baseline
(``load_or_train_baseline(workload, seed, cache)``):

1. Torch-pruning's reference curve: ``MagnitudePruner`` (L1, ``global_pruning=False``,
   the classifier ignored; ``experiments.speedup.run.tp_compact``, the helper
   experiments/channels uses) at each ``--tp-ratios`` ratio; each compact model is
   fine-tuned ``--budget`` epochs (the workload's lr schedule) at every lr of ``--lrs``,
   the lr with the best VALIDATION accuracy is kept and its TEST accuracy reported.
2. The search: ``run_search`` with ``sparsity_kind="channels"``, ``multi_objective=
   "latency"`` (NSGA-II on val objective and ``latency_ms``; no screening), batch 64,
   1 thread, ``--target`` channel sparsity, ``--num-samples`` trials, each trial's whole
   schedule fine-tuned ``finetune_budget = --budget`` epochs: the same fine-tune budget as
   each torch-pruning model. Its Pareto front (``tune_prune.search.results.pareto_front``
   of the best-per-trial table: trials at the target that no other trial beats in both
   VALIDATION score and latency) are the points compared; TEST is reported only.
3. Equal latency: the front models (each trial's best checkpoint, read with
   ``tune_prune.export.load_pruned`` as ``export_best`` does) and the kept torch-pruning
   models are timed again in one session at the end, in interleaved rounds (order rotated
   each round) with ``export_latency_ms`` (what the search's trials call: the channels
   physically removed, ``--latency-batch-size`` copies of the workload's dummy input,
   ``--latency-threads`` threads, ``--latency-repeats`` timed passes after 5 warm-up
   passes). A model's latency is the median of every timing of its architecture (its
   parameter shapes after channel removal; models of one architecture differ only in
   their weights), so two front trials of one architecture get one latency. The front is
   taken again on (val, re-measured latency): the trials' own timings are noisy (another
   trial runs next to each), and a trial that only timed faster, or whose architecture
   equals a better one's, drops out. For each front point, torch-pruning's TEST accuracy
   at that latency is interpolated linearly between the two torch-pruning points around
   it (no extrapolation: a point outside torch-pruning's latency range is not compared);
   "search − TP" is in points. Per seed: its mean over the re-timed front points in
   range, and that of the point with the best VALIDATION accuracy among them.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
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
from experiments.speedup.run import tp_compact

MODULE = "experiments.channels_latency.run"
HERE = Path(__file__).resolve().parent
SCHEDULE_KEYS = ("generator", "pruner", "mode", "total_iteration", "lr")


def _workload(name: str, options: dict[str, Any]) -> Any:
    from tune_prune.workloads import get_workload

    return get_workload(name, **options)


def tp_job(job: dict[str, Any]) -> dict[str, Any]:
    """One torch-pruning model: prune the seed's baseline at ``ratio``, fine-tune at ``lr``.

    Top-level (spawned workers import it). Returns the scores, the MACs and the
    fine-tuned state dict (tensors only; the main process rebuilds the architecture).
    """
    from tune_prune.pruning.measure import count_macs
    from tune_prune.workloads import load_or_train_baseline

    torch.set_num_threads(1)
    start = time.perf_counter()
    workload = _workload(job["workload"], job["options"])
    base = load_or_train_baseline(workload, job["seed"], job["cache"]).eval()
    x = workload.dummy_input()
    compact = tp_compact(base, x, job["ratio"])
    macs = count_macs(compact, x)
    workload.finetune(compact, job["budget"], job["lr"], job["seed"])
    val, test = workload.evaluate(compact, "val"), workload.evaluate(compact, "test")
    state = {k: v.detach().clone() for k, v in compact.state_dict().items()}
    return {"seed": job["seed"], "ratio": job["ratio"], "lr": job["lr"], "val": val, "test": test,
            "macs": macs, "seconds": time.perf_counter() - start, "state": state}


def run_tp_jobs(jobs: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    if workers <= 1:
        return [tp_job(j) for j in jobs]
    # spawn: a fresh interpreter per worker (no inherited torch/Ray threads)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(tp_job, jobs))


def interpolate(points: list[tuple[float, float]], latency: float) -> float | None:
    """Linear interpolation of (latency, acc) points at ``latency``; None outside their range."""
    pts = sorted(points)
    for (l0, a0), (l1, a1) in zip(pts, pts[1:]):
        if l0 <= latency <= l1:
            return a0 if l1 == l0 else a0 + (a1 - a0) * (latency - l0) / (l1 - l0)
    if len(pts) == 1 and pts[0][0] == latency:
        return pts[0][1]
    return None


def architecture(model: torch.nn.Module, masks: Any, dummy: Any) -> tuple:
    """The timed model's architecture: its parameter shapes once the dead channels are
    removed (as export_latency_ms removes them). Latency depends on it, not on the weights."""
    from tune_prune.pruning.speedup import speedup_model

    if masks and any(bool((t == 0).any()) for entry in masks.values() for t in entry.values()):
        model = speedup_model(model, masks, dummy)[0]
    return tuple((n, tuple(p.shape)) for n, p in model.state_dict().items())


def interleaved_latencies(models: dict[str, tuple[torch.nn.Module, Any]], dummy: Any, rounds: int,
                          batch_size: int, threads: int, repeats: int) -> dict[str, list[float]]:
    """``rounds`` timings (``export_latency_ms``, ms) of every model, the order rotated each
    round so a load spike on the shared box hits the models alike."""
    from tune_prune.search.schedule import export_latency_ms

    keys = list(models)
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            model, masks = models[k]
            times[k].append(export_latency_ms(model, masks, dummy, "channels", batch_size=batch_size,
                                              threads=threads, repeats=repeats))
    return times


def pooled_by_architecture(times: dict[str, list[float]], arch: dict[str, tuple]) -> dict[str, float]:
    """Median of all timings of the models that share an architecture, for each model."""
    pool: dict[tuple, list[float]] = {}
    for k, ts in times.items():
        pool.setdefault(arch[k], []).extend(ts)
    return {k: statistics.median(pool[arch[k]]) for k in times}


def non_dominated(points: dict[Any, tuple[float, float]]) -> set[Any]:
    """Keys of the (val, latency) points no other point beats in both (higher val, lower latency)."""
    keep = set()
    for k, (v, ms) in points.items():
        if not any((v2 >= v and m2 <= ms) and (v2 > v or m2 < ms)
                   for k2, (v2, m2) in points.items() if k2 != k):
            keep.add(k)
    return keep


def schedule_text(row: dict[str, Any]) -> str:
    parts = []
    for k in SCHEDULE_KEYS:
        v = row.get(k)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        parts.append(f"lr {float(v):.3g}" if k == "lr" else (f"{int(v)} it" if k == "total_iteration" else str(v)))
    return " ".join(parts)


def run_one_search(values: dict[str, Any]) -> tuple[Any, list[dict[str, Any]], float]:
    """run_search on the Ray instance already started; its outcome, Pareto front rows, epochs paid."""
    from tune_prune.search.config import SearchConfig
    from tune_prune.search.results import pareto_front
    from tune_prune.search.runner import run_search

    cfg = SearchConfig.create(**values)
    out = run_search(cfg)
    if out.best.empty:
        raise RuntimeError(f"search {out.experiment_dir} reported nothing")
    front = pareto_front(out.best, cfg.cost_metric or "latency_ms", True)  # what pareto_front.csv holds
    paid = float(out.best["finetune_epochs_total"].astype(float).sum(skipna=True))
    return out, [r.to_dict() for _, r in front.iterrows()], paid


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog=MODULE, description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="digits", choices=["digits", "mnist1d"])
    parser.add_argument("--workload-option", action="append", default=[], metavar="KEY=JSON",
                        help="get_workload keyword, e.g. width=100 (MNIST-1D's conv width: a model "
                        "whose latency follows its MACs more than the 25-wide one's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tp-ratios", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7],
                        help="torch-pruning's per-layer pruning ratios (its latency curve)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.03, 0.1, 0.3],
                        help="torch-pruning's fine-tune lr grid (picked on validation per seed and ratio)")
    parser.add_argument("--budget", type=float, default=15.0,
                        help="fine-tune epochs of each torch-pruning model AND of each search trial's "
                        "schedule (the search's finetune_budget); 15 = the default search's final budget "
                        "(3 x its 5-epoch finetune_budget)")
    parser.add_argument("--target", type=float, default=0.5, help="the search's channel target_sparsity")
    parser.add_argument("--num-samples", type=int, default=12, help="search trials per seed")
    parser.add_argument("--latency-batch-size", type=int, default=64)
    parser.add_argument("--latency-threads", type=int, default=1)
    parser.add_argument("--latency-repeats", type=int, default=20)
    parser.add_argument("--latency-rounds", type=int, default=7,
                        help="interleaved rounds of the final latency session (median over them)")
    parser.add_argument("--search-option", action="append", default=[], metavar="KEY=JSON",
                        help="more SearchConfig fields for every search")
    parser.add_argument("--workers", type=int, default=2, help="processes for the torch-pruning fine-tunes")
    parser.add_argument("--max-concurrent", type=int, default=2, help="Ray CPUs = trials at once")
    parser.add_argument("--storage", type=Path, default=None,
                        help="keep the searches' experiment folders here (default: a temporary folder)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=None,
                        help="default: experiments/channels_latency/<workload>")
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, 2 ratios, 1 lr, 2 trials, tiny budgets, 1-epoch baseline")
    args = parser.parse_args(argv)
    argv_used = list(argv) if argv is not None else sys.argv[1:]
    out_dir = args.out or HERE / args.workload
    torch.set_num_threads(1)

    options: dict[str, Any] = {"device": "cpu", **key_json_options(args.workload_option, "--workload-option")}
    search_options = key_json_options(args.search_option, "--search-option")
    if args.quick:
        args.seeds, args.tp_ratios, args.lrs = args.seeds[:1], [0.3, 0.7], args.lrs[1:2]
        args.budget, args.num_samples = 0.5, 2
        args.latency_repeats, args.latency_rounds = 5, 2
        options["baseline_epochs"] = 1.0
        search_options = {"max_iterations": 2, **search_options}

    from tune_prune.export import load_pruned
    from tune_prune.pruning.measure import count_macs
    from tune_prune.workloads import load_or_train_baseline

    workload = _workload(args.workload, options)
    dummy = workload.dummy_input()
    per_sample = int(dummy.shape[0])
    tp_paid = len(args.lrs) * args.budget
    header = [command_line(MODULE, argv_used), *machine_lines(),
              f"workload {args.workload}: {workload.config}",
              f"torch-pruning {version('torch-pruning')} MagnitudePruner (L1, per-layer uniform ratio, "
              f"classifier ignored) at ratios {args.tp_ratios}: each model fine-tuned {args.budget:g} epochs "
              f"at each lr of {args.lrs}, the lr picked on val ({tp_paid:g} epochs per ratio)",
              f"search: channels, target {args.target:g}, multi_objective latency (NSGA-II, no screening), "
              f"{args.num_samples} trials x {args.budget:g} fine-tune epochs each (finetune_budget), "
              f"options {search_options}; Pareto front on (val objective, latency_ms in the trial)",
              f"latency: export_latency_ms, batch {args.latency_batch_size}, {args.latency_threads} thread(s), "
              f"{args.latency_repeats} timed passes; re-measured at the end in one session per seed (its "
              f"torch-pruning and front models, {args.latency_rounds} interleaved rounds), the median "
              "over every timing of the model's architecture"]
    print("\n".join(header), flush=True)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    records: list[dict[str, Any]] = []

    bases = {seed: load_or_train_baseline(workload, seed, args.cache).eval() for seed in args.seeds}
    dense_macs = {seed: count_macs(bases[seed], dummy) for seed in args.seeds}

    # 1. torch-pruning's curve
    t0 = time.perf_counter()
    jobs = [{"workload": args.workload, "options": options, "cache": str(args.cache.resolve()), "seed": seed,
             "ratio": ratio, "lr": lr, "budget": args.budget}
            for seed in args.seeds for ratio in args.tp_ratios for lr in args.lrs]
    tp_runs = run_tp_jobs(jobs, args.workers)
    timings["torch-pruning fine-tunes"] = time.perf_counter() - t0
    tp_best: dict[tuple[int, float], dict[str, Any]] = {}
    for r in tp_runs:
        key = (r["seed"], r["ratio"])
        if key not in tp_best or r["val"] > tp_best[key]["val"]:
            tp_best[key] = r
        print(f"seed {r['seed']} torch-pruning ratio {r['ratio']:g} lr {r['lr']:g}: val {r['val']:.4f} "
              f"test {r['test']:.4f} [{r['seconds']:.0f} s]", flush=True)

    # 2. the searches
    import ray

    fronts: dict[int, list[dict[str, Any]]] = {}
    search_paid: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="tp_channels_latency_") as tmp:
        storage = args.storage.resolve() if args.storage else Path(tmp)
        t0 = time.perf_counter()
        ray.init(num_cpus=args.max_concurrent, include_dashboard=False, log_to_driver=False)
        try:
            for seed in args.seeds:
                values = {**search_options, "workload": args.workload, "workload_options": options,
                          "sparsity_kind": "channels", "target_sparsity": args.target,
                          "multi_objective": "latency", "latency_batch_size": args.latency_batch_size,
                          "latency_threads": args.latency_threads, "latency_repeats": args.latency_repeats,
                          "finetune_budget": args.budget, "num_samples": args.num_samples, "seed": seed,
                          "baseline_cache_dir": str(args.cache.resolve()), "storage_path": str(storage),
                          "name": f"channels-latency-{args.workload}-seed{seed}-{int(time.time())}",
                          "include_dashboard": False, "reuse_actors": True,
                          "max_concurrent": args.max_concurrent}
                s0 = time.perf_counter()
                out, front, paid = run_one_search(values)
                fronts[seed], search_paid[seed] = front, paid
                print(f"seed {seed} search: {len(out.best)} trials, {len(front)} on the Pareto front, "
                      f"{paid:g} fine-tune epochs paid [{time.perf_counter() - s0:.0f} s] ({out.experiment_dir})",
                      flush=True)
        finally:
            ray.shutdown()
        timings["searches"] = time.perf_counter() - t0

        # 3. one interleaved latency session per seed: torch-pruning's kept models and the front
        t0 = time.perf_counter()
        rows: list[list[Any]] = []
        tp_rows: list[list[Any]] = []
        summary: list[str] = []
        per_seed_mean: list[float] = []
        per_seed_pick: list[float] = []
        for seed in args.seeds:
            models: dict[str, tuple[torch.nn.Module, Any]] = {}
            for ratio in args.tp_ratios:
                r = tp_best[(seed, ratio)]
                compact = tp_compact(bases[seed], dummy, ratio)
                compact.load_state_dict(r["state"])
                models[f"tp{ratio}"] = (compact.eval(), {})
            reloaded: dict[int, float] = {}
            for i, row in enumerate(fronts[seed]):
                ckpt = str(row.get("best_checkpoint") or "")
                if not ckpt:
                    print(f"seed {seed}: front trial {row.get('trial_id')} has no kept checkpoint; skipped")
                    continue
                pruned = load_pruned(Path(ckpt) / "result", workload)
                models[f"search{i}"] = (pruned.model.eval(), pruned.masks)
                reloaded[i] = workload.evaluate(pruned.model, "test")
            arch = {k: architecture(m, masks, dummy) for k, (m, masks) in models.items()}
            arch_ids = {a: f"A{j}" for j, a in enumerate(dict.fromkeys(arch.values()))}
            times = interleaved_latencies(models, dummy, args.latency_rounds, args.latency_batch_size,
                                          args.latency_threads, args.latency_repeats)
            lat = pooled_by_architecture(times, arch)
            curve = []
            for ratio in args.tp_ratios:
                r = tp_best[(seed, ratio)]
                ms = lat[f"tp{ratio}"]
                curve.append((ms, 100 * r["test"]))
                tp_rows.append([seed, f"{ratio:g}", arch_ids[arch[f"tp{ratio}"]], f"{r['lr']:g}", f"{ms:.3f}",
                                f"{r['macs'] / per_sample:,.0f}", f"{r['macs'] / dense_macs[seed]:.3f}",
                                f"{100 * r['val']:.2f}", f"{100 * r['test']:.2f}"])
            for r in tp_runs:
                if r["seed"] != seed:
                    continue
                picked = tp_best[(seed, r["ratio"])] is r
                key = f"tp{r['ratio']}"
                records.append({"kind": "torch-pruning", "workload": args.workload, "seed": seed,
                                "ratio": r["ratio"], "lr": r["lr"], "picked_on_val": picked,
                                "val": r["val"], "test": r["test"], "macs": r["macs"],
                                "macs_ratio": r["macs"] / dense_macs[seed], "architecture": arch_ids[arch[key]],
                                "latency_ms": lat[key] if picked else "",
                                "latency_ms_own": statistics.median(times[key]) if picked else "",
                                "finetune_epochs": args.budget, "seconds": r["seconds"]})
            # the front again on the re-measured latencies (noise in the trials' timings can put
            # two trials of one architecture on the search's front)
            retimed = non_dominated({i: (float(fronts[seed][i]["score"]), lat[f"search{i}"]) for i in reloaded})
            diffs: list[tuple[float, float]] = []  # (val, search - TP) of the re-timed front's points
            diffs_all: list[float] = []
            for i, row in enumerate(fronts[seed]):
                if i not in reloaded:
                    continue
                key = f"search{i}"
                ms = lat[key]
                test = 100 * float(row["test_score"])
                tp_acc = interpolate(curve, ms)
                diff = None if tp_acc is None else test - tp_acc
                if diff is not None:
                    diffs_all.append(diff)
                    if i in retimed:
                        diffs.append((float(row["score"]), diff))
                macs = float(row["macs"])
                rows.append([seed, row["trial_id"], schedule_text(row), arch_ids[arch[key]],
                             "yes" if i in retimed else "no", f"{ms:.3f}",
                             f"{float(row['latency_ms']):.3f}", f"{macs / per_sample:,.0f}",
                             f"{macs / dense_macs[seed]:.3f}", f"{float(row['sparsity']):.3f}",
                             f"{100 * float(row['score']):.2f}", f"{test:.2f}",
                             "outside TP's range" if tp_acc is None else f"{tp_acc:.2f}",
                             "–" if diff is None else f"{diff:+.2f}"])
                records.append({"kind": "search", "workload": args.workload, "seed": seed,
                                "trial_id": row["trial_id"], "schedule": schedule_text(row),
                                "architecture": arch_ids[arch[key]], "on_retimed_front": i in retimed,
                                "val": float(row["score"]), "test": float(row["test_score"]),
                                "test_reloaded": reloaded[i], "macs": macs,
                                "macs_ratio": macs / dense_macs[seed], "sparsity": float(row["sparsity"]),
                                "latency_ms": ms, "latency_ms_own": statistics.median(times[key]),
                                "latency_ms_in_search": float(row["latency_ms"]),
                                "tp_test_interpolated": "" if tp_acc is None else tp_acc / 100,
                                "search_minus_tp_points": "" if diff is None else diff,
                                "finetune_epochs": float(row["finetune_epochs_total"])})
                if abs(reloaded[i] - float(row["test_score"])) > 1e-9:
                    print(f"WARNING seed {seed} trial {row['trial_id']}: reloaded test "
                          f"{reloaded[i]:.4f} != reported {float(row['test_score']):.4f}")
            lat_range = f"{min(c[0] for c in curve):.3f}-{max(c[0] for c in curve):.3f} ms"
            paid = (f"fine-tune epochs paid: search {search_paid[seed]:g}, "
                    f"torch-pruning {tp_paid * len(args.tp_ratios):g}")
            if diffs:
                ds = [d for _, d in diffs]
                pick = max(diffs, key=lambda p: p[0])[1]  # the front's best point on VALIDATION
                per_seed_mean.append(statistics.fmean(ds))
                per_seed_pick.append(pick)
                summary.append(f"- seed {seed}: {len(ds)} of the {len(retimed)} re-timed front points inside TP's "
                               f"latency range ({lat_range}); search − TP {statistics.fmean(ds):+.2f} points on "
                               f"average (min {min(ds):+.2f}, max {max(ds):+.2f}), >= +1 at "
                               f"{sum(d >= 1 for d in ds)}/{len(ds)}; the best-val point {pick:+.2f}; all "
                               f"{len(diffs_all)} search-front points in range: {statistics.fmean(diffs_all):+.2f}; "
                               f"{paid}")
            else:
                summary.append(f"- seed {seed}: no re-timed front point inside TP's latency range ({lat_range}); "
                               f"{len(retimed)} re-timed front points of {len(fronts[seed])}; {paid}")
        timings["latency session"] = time.perf_counter() - t0

    if per_seed_mean:
        m = statistics.fmean(per_seed_mean)
        p = statistics.fmean(per_seed_pick)
        summary.append(f"- mean over {len(per_seed_mean)} seed(s): search − TP {m:+.2f} points (per-seed mean over "
                       f"re-timed front points), {p:+.2f} for the best-val front point; goal >= +1: "
                       f"{'met' if m >= 1 else 'not met'} (front mean), {'met' if p >= 1 else 'not met'} (best-val point)")
    header.append("wall time " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
                  + f", total {time.perf_counter() - start:.0f} s; " + machine_lines()[-1])
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "runs.csv", records)
    headers = ["seed", "trial", "schedule", "architecture", "on re-timed front",
               "latency ms (re-measured)", "latency ms (in search)",
               "MACs / sample", "MACs ratio", "channel sparsity", "val acc %", "test acc %",
               "TP test acc % at that latency", "search − TP (points)"]
    footer = ["Search − TP, per seed (TP's TEST accuracy interpolated linearly in latency between its two "
              "points around each front point; no extrapolation). Latency of a model = the median of every "
              "timing of its architecture (A0, A1, ...: parameter shapes after channel removal) in the "
              "seed's session; 're-timed front': the search's front points no other front point beats in "
              "both val accuracy and re-measured latency (the summary's points):", "", *summary, "",
              "torch-pruning curve (lr picked on val; latency re-measured in the same session):", "",
              "| seed | ratio | architecture | lr | latency ms | MACs / sample | MACs ratio | val acc % "
              "| test acc % |",
              "|---|---|---|---|---|---|---|---|---|",
              *("| " + " | ".join(str(c) for c in r) + " |" for r in tp_rows)]
    return write_results(out_dir, header, headers, rows, footer=footer)


if __name__ == "__main__":
    main()
