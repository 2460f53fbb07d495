"""Does physical channel removal buy CPU latency in proportion to the MACs it removes?

Builds a CIFAR ResNet-20 (``tune_prune.workloads.cifar.CifarResNet(blocks_per_stage=3)``:
widths 16/32/64, 1x1-conv shortcuts) for 32x32 inputs, masks
50% of every channel group by summed L1 filter norm (dependency-aware, so residual
channels are coupled), speeds it up with tune_prune, and prints a Markdown table of
reductions (dense / pruned) in MACs, params and median CPU latency at batch 1 and 64.

    python benchmarks/speedup_latency.py [--sparsity 0.5] [--repeats 30] [--threads N]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys

import torch
from torch import nn

from tune_prune.pruning.dependency import channel_groups, dependency_aware_masks
from tune_prune.pruning.measure import count_macs, count_params, measure_latency
from tune_prune.pruning.speedup import speedup_model
from tune_prune.workloads.cifar import CifarResNet


def l1_group_masks(model: nn.Module, x: torch.Tensor, sparsity: float) -> dict:
    """Dependency-aware L1 filter masks for every conv (the classifier is left alone)."""
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    metrics = {n: m.weight.detach().abs().flatten(1).sum(1) for n, m in convs.items()}
    groups = channel_groups(model, x)
    return dependency_aware_masks(model, x, metrics, dict.fromkeys(metrics, sparsity), groups)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    dense = CifarResNet(blocks_per_stage=3, width=16).eval()  # ResNet-20
    x1 = torch.randn(1, 3, 32, 32)
    masks = l1_group_masks(dense, x1, args.sparsity)
    compact, remaining, _ = speedup_model(dense, masks, x1)

    widths = (
        compact.stem[0].out_channels,
        compact.layer2[0].conv2.out_channels,
        compact.layer3[0].conv2.out_channels,
    )
    control = CifarResNet(blocks_per_stage=3, widths=widths).eval()  # natively narrow net: what the compact shape can reach
    rows = []
    macs_d, macs_p = count_macs(dense, x1), count_macs(compact, x1)
    par_d, par_p = count_params(dense), count_params(compact)
    rows.append(("MACs (batch 1)", f"{macs_d:,}", f"{macs_p:,}", macs_d / macs_p))
    rows.append(("params", f"{par_d:,}", f"{par_p:,}", par_d / par_p))
    lat = {}
    for batch in (1, 64):
        x = torch.randn(batch, 3, 32, 32)
        # interleave to share whatever else the machine is doing between both models
        times: dict[str, list[float]] = {"dense": [], "compact": [], "control": []}
        for _ in range(args.rounds):
            for key, model in (("dense", dense), ("compact", compact), ("control", control)):
                times[key].append(measure_latency(model, x, args.repeats, args.warmup))
        d, p, c = (statistics.median(times[k]) for k in ("dense", "compact", "control"))
        lat[batch] = d / p
        rows.append((f"latency batch {batch} (ms)", f"{d * 1e3:.2f}", f"{p * 1e3:.2f}", d / p))
        rows.append(
            (
                f"latency batch {batch}, control net {widths} built narrow (ms)",
                f"{d * 1e3:.2f}",
                f"{c * 1e3:.2f}",
                d / c,
            )
        )

    macs_ratio = macs_d / macs_p
    print(f"command: python {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}")
    print(f"sparsity {args.sparsity}; masks left after speedup: {len(remaining)} layers\n")
    print("| quantity | dense | pruned | reduction (dense / pruned) |")
    print("|---|---:|---:|---:|")
    for name, d, p, r in rows:
        print(f"| {name} | {d} | {p} | {r:.2f}x |")
    for batch in (1, 64):
        print(
            f"| latency reduction / MACs reduction, batch {batch} | | | "
            f"{lat[batch] / macs_ratio:.2f} |"
        )
    verdict = "meets" if lat[64] >= 0.8 * macs_ratio else "misses"
    print(f"\nbatch 64 {verdict} the target latency reduction >= 0.8 x MACs reduction")


if __name__ == "__main__":
    main()
