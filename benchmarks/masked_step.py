"""Cost of a masked training step against a plain one (issue 2 target: at most 1.10x).

Run:  ./run.sh python benchmarks/masked_step.py [--steps 100] [--batch 64] [--threads 1]

A small residual-free CNN on 32x32 inputs; half of every conv/linear weight masked
(fine-grained). Both variants run the same SGD-with-momentum steps; the masked model
is wrapped with tune_prune's hooks (forward pre-hook, gradient hook, optimizer step
post-hook). Prints a Markdown table with the median step time of several rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn

from tune_prune.pruning.masks import unwrap_model, wrap_model


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def time_steps(model: nn.Module, steps: int, batch: int) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(5):  # warm-up
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    plain, masked = make_model(), make_model()
    masks = {
        name: {"weight": (torch.rand_like(m.weight) > 0.5).float()}
        for name, m in masked.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }
    wrap_model(masked, masks)
    plain_times, masked_times = [], []
    for _ in range(args.rounds):  # interleave so drift hits both equally
        plain_times.append(time_steps(plain, args.steps, args.batch))
        masked_times.append(time_steps(masked, args.steps, args.batch))
    unwrap_model(masked)
    p, m = statistics.median(plain_times), statistics.median(masked_times)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"{args.steps} steps x {args.rounds} rounds (median)\n")
    print("| variant | ms / step | ratio |")
    print("|---|---|---|")
    print(f"| plain | {p * 1e3:.2f} | 1.00 |")
    print(f"| masked (tune_prune hooks) | {m * 1e3:.2f} | {m / p:.3f} |")


if __name__ == "__main__":
    main()
