"""Which channels to keep: group-importance rules vs torch-pruning, paired by seed at equal MACs.

Question (issue 14): torch-pruning's ``MagnitudePruner`` (L1) keeps channels that
fine-tune better than NNI's dependency-aware L1 (the sum of the coupled layers' filter
norms). Which of the channel pruners' group-importance rules (``normalizer``,
``bn_scale``, ``input_weights``; see ``tune_prune.pruning.pruners.norm``) is at least
level with torch-pruning, at every sparsity, on the digits ResNet and MNIST-1D's Conv1d
CNN, and what do ``round_to`` widths cost? And is prune + physical removal within 1.5x
torch-pruning's time?

    python -m experiments.channels.run            # full: 2 workloads x 5 seeds x 4 sparsities
    python -m experiments.channels.run --quick    # smoke run, seconds

Per workload, seed (its cached dense baseline) and channel sparsity s: every rule prunes
the baseline with ``L1NormPruner(mode="dependency_aware", ...)`` at ``sparsity_per_layer
= s`` on the Conv layers (the Linear classifier is not selected) and ``speedup_model``
removes the channels; torch-pruning's ``MagnitudePruner`` (L1, per-layer, classifier
ignored, same ``round_to``) gets the ``pruning_ratio`` bisected until its MACs match
ours (the structure does not depend on the weights, so one bisection per workload,
sparsity and ``round_to``). Every compact model is fine-tuned the same way (the same
seed, epochs and lr) and scored on the test split. "tp − rule" is paired by seed;
a win is a strictly higher test accuracy.

Rules: ``nni`` is NNI 2.10's (the default); ``tp`` (raw sum of filter L1, BN |gamma| and
the readers' input-weight L1) reproduces torch-pruning's choice exactly (its compact
models are bit-identical to torch-pruning's: a control, every pair a tie).

Timing: prune + physical removal of the seed-0 baseline at s=0.5 (``deepcopy`` + pruner +
``speedup_model(inplace=True)`` on that copy, against torch-pruning's ``deepcopy`` + build
+ ``step()``: one copy each), median over interleaved rounds; "warm" reuses the traced dependency graph (cached per
architecture: every call after the first on a model structure), "cold" clears that cache
before each call. ResNet-20 (CIFAR widths, random init) is timed too.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experiments._common import (
    DEFAULT_CACHE,
    command_line,
    machine_lines,
    mean_std,
    write_csv,
    write_results,
)
from experiments.speedup.run import match_tp_ratio, tp_compact
from tune_prune.pruning import L1NormPruner
from tune_prune.pruning.dependency import clear_analysis_cache
from tune_prune.pruning.measure import count_macs
from tune_prune.pruning.pruners.registry import get_pruner_class
from tune_prune.pruning.speedup import speedup_model
from tune_prune.search.build import statistics_kwargs
from tune_prune.search.registry import DEFAULT_STATS_BATCHES, STATS_PRUNERS
from tune_prune.workloads import get_workload, load_or_train_baseline
from tune_prune.workloads.cifar import CifarResNet

MODULE = "experiments.channels.run"
HERE = Path(__file__).resolve().parent
TP = "torch-pruning"

#: Group-importance rules: name -> L1NormPruner keywords.
RULES: dict[str, dict[str, Any]] = {
    "nni": {},
    "tp-rule": {"bn_scale": True, "input_weights": True},
    "mean": {"normalizer": "mean"},
    "mean+bn": {"normalizer": "mean", "bn_scale": True},
    "mean+bn+in": {"normalizer": "mean", "bn_scale": True, "input_weights": True},
    "max+bn+in": {"normalizer": "max", "bn_scale": True, "input_weights": True},
    "mean+in": {"normalizer": "mean", "input_weights": True},
}
#: Statistics pruners (taylorfo, apoz, mean_activation) may be compared too (issue 14):
#: built as the search builds them, after DEFAULT_STATS_BATCHES batches of the workload's
#: trainer (not timed; not in --rules' default).
CONV_TYPES = ["Conv1d", "Conv2d"]


def ours_compact(model: nn.Module, x: torch.Tensor, sparsity: float, rule: dict[str, Any],
                 round_to: int = 1, workload: Any = None) -> nn.Module:
    """L1NormPruner(dependency_aware, rule, round_to) masks -> speedup_model (model untouched).

    ``rule = {"stats": name}``: that statistics pruner instead (dependency_aware, the same
    per-layer channel counts), with ``workload``'s trainer as the search gives it.
    """
    work = copy.deepcopy(model)
    config = [{"op_types": CONV_TYPES, "sparsity_per_layer": sparsity}]
    if "stats" in rule:
        pruner = get_pruner_class(rule["stats"])(
            work, config, mode="dependency_aware", dummy_input=x,
            **statistics_kwargs(workload, DEFAULT_STATS_BATCHES))
    else:
        pruner = L1NormPruner(work, config, mode="dependency_aware", dummy_input=x, round_to=round_to, **rule)
    _, masks = pruner.compress()
    pruner._unwrap_model()
    compact, remaining, _ = speedup_model(work, masks, x, inplace=True)  # work is our copy
    if remaining:
        raise RuntimeError(f"speedup left masks on {sorted(remaining)}")
    return compact


def _median_ms(fn: Any, rounds: int, before: Any = None) -> list[float]:
    out = []
    for _ in range(rounds):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def timing_rows(name: str, model: nn.Module, x: torch.Tensor, rounds: int) -> list[list[Any]]:
    """Prune 50 % + physical removal: ours (nni rule, and the tp rule) vs torch-pruning."""
    model = model.eval()
    ours_compact(model, x, 0.5, {})  # warm-up (imports, allocator)
    tp_compact(model, x, 0.5)
    times: dict[str, list[float]] = {"nni warm": [], "nni cold": [], "tp-rule warm": [],
                                      "torch-pruning": []}
    for _ in range(rounds):  # interleaved, so a load spike hits every variant alike
        times["nni cold"] += _median_ms(lambda: ours_compact(model, x, 0.5, {}), 1,
                                        clear_analysis_cache)
        times["nni warm"] += _median_ms(lambda: ours_compact(model, x, 0.5, {}), 1)
        times["tp-rule warm"] += _median_ms(
            lambda: ours_compact(model, x, 0.5, RULES["tp-rule"]), 1)
        times["torch-pruning"] += _median_ms(lambda: tp_compact(model, x, 0.5), 1)
    tp_ms = statistics.median(times["torch-pruning"])
    rows = []
    for variant, ts in times.items():
        ratios = [a / b for a, b in zip(ts, times["torch-pruning"])]
        rows.append([name, variant, f"{statistics.median(ts):.1f}",
                     f"{statistics.median(ratios):.2f}" if variant != "torch-pruning" else "1.00",
                     f"{tp_ms:.1f}"])
    return rows


def paired_table(records: list[dict[str, Any]], methods: list[str]) -> list[str]:
    """Mean test accuracy per method and sparsity; rule − tp paired by seed; wins."""
    out = []
    for wl in sorted({r["workload"] for r in records}):
        recs = [r for r in records if r["workload"] == wl]
        out += [f"### {wl}: test accuracy % after fine-tuning (mean ± std over seeds); "
                "rule − tp paired by seed (points); wins / losses / ties against tp", "",
                "| round_to | channel sparsity | MACs ratio (ours / tp) | tp | "
                + " | ".join(m for m in methods if m != TP) + " |",
                "|" + "---|" * (4 + len(methods) - 1)]
        totals: dict[tuple[int, str], list[int]] = {}
        for rt in sorted({r["round_to"] for r in recs}):
            for s in sorted({r["sparsity"] for r in recs}):
                cell = [r for r in recs if r["round_to"] == rt and r["sparsity"] == s]
                if not cell:
                    continue
                by = {(r["method"], r["seed"]): r for r in cell}
                seeds = sorted({r["seed"] for r in cell})
                tp_acc = [by[(TP, sd)]["acc"] for sd in seeds if (TP, sd) in by]
                m_tp, s_tp = mean_std([a * 100 for a in tp_acc])
                macs = next(r for r in cell if r["method"] != TP)["macs_ratio"]
                macs_tp = next(r for r in cell if r["method"] == TP)["macs_ratio"]
                row = [str(rt), f"{s:g}", f"{macs:.3f} / {macs_tp:.3f}", f"{m_tp:.2f} ± {s_tp:.2f}"]
                for m in methods:
                    if m == TP:
                        continue
                    pairs = [(by[(m, sd)]["acc"], by[(TP, sd)]["acc"]) for sd in seeds
                             if (m, sd) in by and (TP, sd) in by]
                    if not pairs:
                        row.append("")
                        continue
                    mean_m, std_m = mean_std([a * 100 for a, _ in pairs])
                    d = statistics.fmean((a - b) * 100 for a, b in pairs)
                    w = sum(a > b for a, b in pairs)
                    lo = sum(a < b for a, b in pairs)
                    t = len(pairs) - w - lo
                    tot = totals.setdefault((rt, m), [0, 0, 0, 0])
                    tot[0] += w
                    tot[1] += lo
                    tot[2] += t
                    tot[3] += len(pairs)
                    row.append(f"{mean_m:.2f} ± {std_m:.2f} ({d:+.2f}; {w}/{lo}/{t})")
                out.append("| " + " | ".join(row) + " |")
        out.append("")
        out.append("Wins / losses / ties against tp over all sparsities: " + "; ".join(
            f"round_to {rt} {m}: {v[0]}/{v[1]}/{v[2]} of {v[3]}"
            for (rt, m), v in sorted(totals.items())))
        out.append("")
    return out


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["digits", "mnist1d"],
                        choices=["digits", "mnist1d"])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.25, 0.5, 0.625, 0.75])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=[*RULES, *STATS_PRUNERS],
                        help="group-importance rules, and statistics pruners (not in the default)")
    parser.add_argument("--round-to", type=int, nargs="+", default=[1, 4],
                        help="round_to values; rules other than round_to 1 use --round-to-rules")
    parser.add_argument("--round-to-rules", nargs="+", default=["nni", "mean+bn+in"],
                        choices=list(RULES))
    parser.add_argument("--finetune-epochs", type=float, default=3.0)
    parser.add_argument("--baseline-epochs", type=float, default=None)
    parser.add_argument("--macs-tol", type=float, default=0.02)
    parser.add_argument("--bisect-steps", type=int, default=14)
    parser.add_argument("--timing-rounds", type=int, default=11)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    argv_used = list(argv) if argv is not None else sys.argv[1:]
    if args.quick:
        args.sparsities, args.seeds = [0.5], args.seeds[:1]
        args.rules = [r for r in args.rules if r in ("nni", "tp-rule", "mean+bn+in", *STATS_PRUNERS)] or args.rules[:1]
        args.round_to = [r for r in args.round_to if r in (1, 4)] or args.round_to[:1]
        args.round_to_rules = args.round_to_rules[:1]
        args.finetune_epochs, args.timing_rounds = 0.25, 2
        args.baseline_epochs = args.baseline_epochs or 1.0
        args.bisect_steps, args.macs_tol = 6, 0.05
    torch.set_num_threads(args.threads)
    header = [command_line(MODULE, argv_used), *machine_lines(),
              f"torch-pruning {version('torch-pruning')}; seeds {args.seeds}; fine-tune "
              f"{args.finetune_epochs:g} epochs at each workload's finetune_lr; test split"]
    start = time.perf_counter()
    methods = [TP] + list(args.rules)
    records: list[dict[str, Any]] = []
    timing: list[list[Any]] = []
    for wl_name in args.workloads:
        overrides: dict[str, Any] = {"device": "cpu"}
        if args.baseline_epochs is not None:
            overrides["baseline_epochs"] = args.baseline_epochs
        workload = get_workload(wl_name, **overrides)
        x = workload.dummy_input()
        lr = float(workload.config.finetune_lr)
        torch.manual_seed(0)
        dense0 = load_or_train_baseline(workload, args.seeds[0], args.cache).eval()
        macs_dense = count_macs(dense0, x)
        for rt in args.round_to:
            rules = args.rules if rt == 1 else [r for r in args.rules if r in args.round_to_rules]
            for s in args.sparsities:
                macs_ours = count_macs(ours_compact(dense0, x, s, {}, rt), x)
                ratio, macs_tp = match_tp_ratio(dense0, x, macs_ours, args.macs_tol,
                                                args.bisect_steps, s, round_to=rt)
                for seed in args.seeds:
                    base = load_or_train_baseline(workload, seed, args.cache).eval()
                    for method in [TP, *rules]:
                        rule = {"stats": method} if method in STATS_PRUNERS else RULES.get(method)
                        compact = (tp_compact(base, x, ratio, rt) if method == TP
                                   else ours_compact(base, x, s, rule, rt, workload))
                        macs = count_macs(compact, x)
                        workload.finetune(compact, args.finetune_epochs, lr, seed)
                        acc = workload.evaluate(compact, "test")
                        records.append({"workload": wl_name, "round_to": rt, "sparsity": s,
                                        "method": method, "seed": seed, "tp_ratio": ratio,
                                        "macs_ratio": macs / macs_dense, "acc": acc})
                print(f"{wl_name} round_to={rt} s={s}: MACs ours {macs_ours / macs_dense:.3f}, "
                      f"tp ratio {ratio:.4f} MACs {macs_tp / macs_dense:.3f}", flush=True)
        timing += timing_rows(wl_name, dense0, x, args.timing_rounds)
    torch.manual_seed(0)
    timing += timing_rows("resnet20 (random init)", CifarResNet(blocks_per_stage=3, width=16),
                          torch.randn(1, 3, 32, 32), args.timing_rounds)
    header.append(f"wall time {time.perf_counter() - start:.0f} s; " + machine_lines()[-1])
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "runs.csv", records)
    footer = ["Rules (L1NormPruner keywords, dependency_aware): " + "; ".join(
        f"{k}: {v or 'defaults (NNI 2.10)'}" for k, v in RULES.items() if k in args.rules)
        + "".join(f"; {k}: {k} pruner after {DEFAULT_STATS_BATCHES} trainer batches" for k in STATS_PRUNERS
                  if k in args.rules), "",
        *paired_table(records, methods)]
    headers = ["model", "prune 50 % + removal", "ms (median)", "ratio to torch-pruning",
               "torch-pruning ms"]
    return write_results(args.out, header, headers, timing, footer=footer)


if __name__ == "__main__":
    main()
