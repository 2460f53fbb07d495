"""Channel pruning + physical speedup: tune_prune (L1, dependency_aware) vs torch-pruning.

Question: at channel sparsities 0.25-0.75, how much MACs, parameters and CPU latency does
tune_prune's ``L1NormPruner(mode="dependency_aware")`` + ``speedup_model`` remove, and how
does that compare with torch-pruning's own ``tp.pruner.MagnitudePruner`` (L1 importance,
``global_pruning=False``, same ignored classifier) pruned to the same MACs? On digits, also
the test accuracy after the same short fine-tune.

    python -m experiments.speedup.run            # full, ~2-4 min on 1 thread
    python -m experiments.speedup.run --quick    # smoke run, seconds

Models: the digits ResNet (trained cached baseline, 8x8 inputs) and a CIFAR-shaped
ResNet-20 (``tune_prune.workloads.cifar.CifarResNet(blocks_per_stage=3)``: widths
16/32/64, 1x1-conv shortcuts, 32x32 inputs; random init, no data, so no accuracy column).

tune_prune config: ``[{"op_types": ["Conv2d"], "sparsity_per_layer": s}]`` (the Linear
classifier is not selected). torch-pruning: ``pruning_ratio`` bisected until its MACs
match tune_prune's compact model within ``--macs-tol`` (the structure, hence MACs, does not
depend on the weights, so the ratio found once is used for every seed).

Ratios are pruned / dense (fraction left; lower is better). Latency ratio: per round,
``measure_latency`` (inference mode, eval, 1 thread) of the pruned model over the dense
model's in the same round; the median over interleaved rounds.
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
import torch_pruning as tp
from torch import nn

from experiments._common import (
    DEFAULT_CACHE,
    command_line,
    cpu_digits,
    machine_lines,
    mean_std,
    pm,
    write_csv,
    write_results,
)
from tune_prune.pruning import L1NormPruner
from tune_prune.pruning.measure import count_macs, count_params, measure_latency
from tune_prune.pruning.speedup import speedup_model
from tune_prune.workloads import load_or_train_baseline
from tune_prune.workloads.cifar import CifarResNet

MODULE = "experiments.speedup.run"
HERE = Path(__file__).resolve().parent
TUNE, TP = "tune_prune L1 dependency_aware + speedup_model", "torch-pruning MagnitudePruner (L1)"


def resnet20() -> nn.Module:
    """CIFAR ResNet-20 (widths 16/32/64, 1x1-conv shortcuts): the package's CifarResNet."""
    return CifarResNet(blocks_per_stage=3, width=16)


def tune_prune_compact(model: nn.Module, x: torch.Tensor, sparsity: float) -> nn.Module:
    """L1NormPruner(dependency_aware) masks -> speedup_model; the input model is untouched."""
    work = copy.deepcopy(model)
    pruner = L1NormPruner(work, [{"op_types": ["Conv2d"], "sparsity_per_layer": sparsity}],
                          mode="dependency_aware", dummy_input=x)
    _, masks = pruner.compress()
    pruner._unwrap_model()
    compact, remaining, _ = speedup_model(work, masks, x, inplace=True)  # work: our copy
    if remaining:
        raise RuntimeError(f"speedup left masks on {sorted(remaining)}")
    return compact


def tp_compact(model: nn.Module, x: torch.Tensor, ratio: float, round_to: int = 1) -> nn.Module:
    """torch-pruning's MagnitudePruner (L1, per-layer ratio, kept channels a multiple of
    ``round_to``), classifier ignored."""
    work = copy.deepcopy(model)
    pruner = tp.pruner.MagnitudePruner(
        work, x, importance=tp.importance.MagnitudeImportance(p=1), global_pruning=False,
        pruning_ratio=ratio, ignored_layers=[work.fc], round_to=round_to if round_to > 1 else None,
    )
    pruner.step()
    return work


def match_tp_ratio(model: nn.Module, x: torch.Tensor, target_macs: int, tol: float,
                   max_steps: int, first: float, round_to: int = 1) -> tuple[float, int]:
    """Bisect torch-pruning's pruning_ratio until its MACs are within ``tol`` of the target
    (trying ``first``, the tune_prune sparsity, before bisecting)."""
    lo, hi = 0.0, 0.95
    best: tuple[float, float, int] | None = None
    for step in range(max_steps):
        mid = first if step == 0 else (lo + hi) / 2
        macs = count_macs(tp_compact(model, x, mid, round_to), x)
        err = macs / target_macs - 1
        if best is None or abs(err) < abs(best[1]):
            best = (mid, err, macs)
        if abs(err) <= tol:
            break
        if macs > target_macs:
            lo = mid
        else:
            hi = mid
    assert best is not None
    return best[0], best[2]


def latencies(models: dict[str, nn.Module], x: torch.Tensor, rounds: int,
              repeats: int, warmup: int) -> dict[str, float]:
    """Median latency of ``dense`` and, for the others, the median of per-round ratios to
    dense (rounds interleaved, so a load spike on the shared box hits one round's models
    alike instead of skewing one model's median)."""
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for key, model in models.items():
            times[key].append(measure_latency(model, x, repeats, warmup))
    out = {"dense": statistics.median(times["dense"])}
    for key in models:
        if key != "dense":
            out[key] = statistics.median(a / d for a, d in zip(times[key], times["dense"]))
    return out


def _widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def paired_lines(records: list[dict[str, Any]]) -> list[str]:
    """torch-pruning minus tune_prune test accuracy after fine-tuning, paired by seed."""
    if not records:
        return []
    out = ["Digits accuracy after fine-tuning, paired by seed (torch-pruning minus tune_prune, "
           "points, mean ± std; tp wins / tune_prune wins / ties):", "",
           "| channel sparsity | tp − tune_prune | tp wins | tune_prune wins | ties |",
           "|---|---|---|---|---|"]
    for s in sorted({r["sparsity"] for r in records}):
        by = {(r["method"], r["seed"]): r["acc_after_ft"] for r in records if r["sparsity"] == s}
        seeds = sorted({sd for (_, sd) in by})
        diffs = [by[(TP, sd)] - by[(TUNE, sd)] for sd in seeds]
        m, sd_ = mean_std([d * 100 for d in diffs])
        out.append(f"| {s:g} | {m:+.2f} ± {sd_:.2f} | {sum(d > 0 for d in diffs)} | "
                   f"{sum(d < 0 for d in diffs)} | {sum(d == 0 for d in diffs)} |")
    return out


def finetuned_accuracy(workload: Any, compact: nn.Module, epochs: float,
                       seed: int) -> tuple[float, float]:
    before = workload.evaluate(compact, "test")
    workload.finetune(compact, epochs, float(workload.config.finetune_lr), seed)
    return before, workload.evaluate(compact, "test")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.25, 0.5, 0.625, 0.75])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--finetune-epochs", type=float, default=3.0)
    parser.add_argument("--baseline-epochs", type=float, default=None)
    parser.add_argument("--models", nargs="+", default=["digits", "resnet20"],
                        choices=["digits", "resnet20"])
    parser.add_argument("--rounds", type=int, default=11, help="interleaved latency rounds")
    parser.add_argument("--repeats", type=int, default=10, help="forward passes per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--macs-tol", type=float, default=0.02)
    parser.add_argument("--bisect-steps", type=int, default=14)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    argv_used = list(argv) if argv is not None else sys.argv[1:]
    if args.quick:
        args.sparsities, args.seeds = [0.5], args.seeds[:1]
        args.rounds, args.repeats, args.warmup, args.finetune_epochs = 1, 2, 1, 0.25
        args.baseline_epochs = args.baseline_epochs or 1.0
        args.bisect_steps, args.macs_tol = 6, 0.05
    torch.set_num_threads(args.threads)
    workload = cpu_digits(args.baseline_epochs)

    header = [command_line(MODULE, argv_used), *machine_lines(),
              f"torch-pruning {version('torch-pruning')}; accuracy seeds {args.seeds} (digits test split, "
              f"after {args.finetune_epochs:g} fine-tune epochs at lr "
              f"{workload.config.finetune_lr}); latency ratio: median over {args.rounds} interleaved "
              f"rounds of (median of {args.repeats} forwards) / dense's in the same round"]
    start = time.perf_counter()
    headers = ["model", "method", "channel sparsity (tune_prune) / tp pruning_ratio",
               "MACs ratio", "params ratio", "latency ratio b1", "latency ratio b64",
               "dense latency b1 / b64 (ms)", "test acc % before FT", "test acc % after FT",
               "seeds"]
    rows: list[list] = []
    records: list[dict[str, Any]] = []
    footer: list[str] = ["Compact shapes (Conv2d out_channels in model order):", ""]
    for name in args.models:
        if name == "digits":
            torch.manual_seed(0)
            dense = load_or_train_baseline(workload, args.seeds[0], args.cache).eval()
            shape = (1, 8, 8)
        else:
            torch.manual_seed(0)
            dense = resnet20().eval()
            shape = (3, 32, 32)
        x1 = torch.randn(1, *shape)
        x64 = torch.randn(64, *shape)
        macs_d, par_d = count_macs(dense, x1), count_params(dense)
        for s in args.sparsities:
            ours = tune_prune_compact(dense, x1, s)
            macs_o = count_macs(ours, x1)
            ratio, macs_t = match_tp_ratio(dense, x1, macs_o, args.macs_tol,
                                           args.bisect_steps, s)
            theirs = tp_compact(dense, x1, ratio)
            same = _widths(ours) == _widths(theirs)
            footer.append(f"- {name} s={s:g}: tp pruning_ratio {ratio:.4f}; per-layer widths "
                          f"{'IDENTICAL' if same else 'DIFFERENT'} (tune_prune {_widths(ours)}"
                          + ("" if same else f", torch-pruning {_widths(theirs)}") + ")")
            models = {"dense": dense, "ours": ours.eval(), "tp": theirs.eval()}
            lat1 = latencies(models, x1, args.rounds, args.repeats, args.warmup)
            lat64 = latencies(models, x64, args.rounds, args.repeats, args.warmup)
            for method, key, knob, macs in ((TUNE, "ours", f"{s:g}", macs_o),
                                            (TP, "tp", f"{ratio:.4f}", macs_t)):
                accs_before, accs_after = [], []
                if name == "digits":
                    for seed in args.seeds:
                        base = load_or_train_baseline(workload, seed, args.cache)
                        compact = (tune_prune_compact(base, x1, s) if key == "ours"
                                   else tp_compact(base, x1, ratio))
                        b, a = finetuned_accuracy(workload, compact, args.finetune_epochs, seed)
                        accs_before.append(b)
                        accs_after.append(a)
                        records.append({"model": name, "method": method, "sparsity": s,
                                        "tp_ratio": ratio, "seed": seed, "acc_before_ft": b,
                                        "acc_after_ft": a})
                rows.append([
                    name, method, knob, f"{macs / macs_d:.3f}",
                    f"{count_params(models[key]) / par_d:.3f}",
                    f"{lat1[key]:.3f}", f"{lat64[key]:.3f}",
                    f"{lat1['dense'] * 1e3:.3f} / {lat64['dense'] * 1e3:.2f}",
                    pm(accs_before) if accs_before else "n/a (random init)",
                    pm(accs_after) if accs_after else "n/a",
                    len(accs_after) if accs_after else 0,
                ])
            print(f"{name} s={s}: ours MACs {macs_o / macs_d:.3f}, tp ratio {ratio:.4f} MACs "
                  f"{macs_t / macs_d:.3f}", flush=True)
        if name == "digits":
            dense_accs = [workload.evaluate(load_or_train_baseline(workload, sd, args.cache),
                                            "test") for sd in args.seeds]
            rows.append([name, "dense baseline", "0", "1.000", "1.000", "1.000", "1.000", "",
                         pm(dense_accs), pm(dense_accs), len(dense_accs)])
    header.append(f"wall time {time.perf_counter() - start:.0f} s; " + machine_lines()[-1])
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "runs.csv", records)
    footer += ["", *paired_lines(records)]
    return write_results(args.out, header, headers, rows, footer=footer)


if __name__ == "__main__":
    main()
