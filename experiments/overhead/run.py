"""What tune_prune's machinery costs: masked training steps, one pruning step, one speedup.

Questions: (1) how much slower is a training step with masks held by tune_prune's hooks
(forward pre-hook, gradient hook, optimizer step post-hook) than a plain one (target:
at most 1.10x)? (2) what does one ``compress()`` cost per pruner on the digits model,
relative to one epoch of fine-tuning? (3) what does one ``speedup_model`` call cost?

    python -m experiments.overhead.run            # full, ~1-3 min on 1 thread
    python -m experiments.overhead.run --quick    # smoke run, seconds

(1) (``masked_step_rows``; benchmarks/masked_step.py runs it alone): the same SGD(momentum, weight decay) steps on a
plain model and on an identical copy with 50% of every Conv/Linear weight masked
(fine-grained, random), interleaved rounds, median. Models: the digits ResNet (batch 64,
1x8x8) and a CIFAR-shaped CNN, ``cifar_cnn`` (batch 64, 3x32x32).
(2) times ``compress()`` alone (pruner built beforehand) on a fresh copy of the trained
digits baseline, 50% sparsity; statistics pruners run their trainer for one epoch of
digits batches (16), so their cost is mostly that training. (3) times ``speedup_model``
with L1 dependency-aware 50% channel masks on the digits ResNet and the CIFAR ResNet-20
of experiments/speedup/run.py, ``count_macs`` with masks (which speeds up a copy), and
the whole prune + physical removal path next to torch-pruning's (same compact shape).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experiments._common import (
    DEFAULT_CACHE,
    command_line,
    cpu_digits,
    machine_lines,
    write_results,
)
from experiments.speedup.run import resnet20, tp_compact, tune_prune_compact
from tune_prune.pruning import (
    ActivationAPoZRankPruner,
    ActivationMeanRankPruner,
    FPGMPruner,
    L1NormPruner,
    L2NormPruner,
    LevelPruner,
    SlimPruner,
    TaylorFOWeightPruner,
)
from tune_prune.pruning.masks import unwrap_model, wrap_model
from tune_prune.pruning.measure import count_macs
from tune_prune.pruning.speedup import speedup_model
from tune_prune.workloads import load_or_train_baseline

MODULE = "experiments.overhead.run"
HERE = Path(__file__).resolve().parent
RAY_NOTE = (
    "Not measured here: Ray Tune per-trial overhead and search wall time vs concurrency; "
    "`python benchmarks/ray_overhead.py` measures them (see the Ray overhead section of "
    "experiments/README.md)."
)


def cifar_cnn() -> nn.Module:
    """A plain CIFAR-sized CNN (no residuals), 32x32 inputs; benchmarks/masked_step.py times it."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def _steps(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
           n: int) -> float:
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(n):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - start) / n


def masked_step_rows(name: str, build: Callable[[], nn.Module], shape: tuple[int, ...],
                     steps: int, rounds: int, batch: int = 64) -> list[list]:
    """Plain vs masked (50 % of Conv/Linear weights, tune_prune hooks) SGD steps, interleaved."""
    torch.manual_seed(0)
    plain = build()
    masked = copy.deepcopy(plain)
    g = torch.Generator().manual_seed(0)
    masks = {
        n: {"weight": (torch.rand(m.weight.shape, generator=g) > 0.5).float()}
        for n, m in masked.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    }
    wrap_model(masked, masks)
    x, y = torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g)
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
            for k, m in (("plain", plain), ("masked", masked))}
    times: dict[str, list[float]] = {"plain": [], "masked": []}
    for key, model in (("plain", plain), ("masked", masked)):
        _steps(model, opts[key], x, y, 3)  # warm-up
    for _ in range(rounds):  # interleaved so load drift hits both alike
        for key, model in (("plain", plain), ("masked", masked)):
            times[key].append(_steps(model, opts[key], x, y, steps))
    unwrap_model(masked)
    p, m = statistics.median(times["plain"]), statistics.median(times["masked"])
    ratios = sorted(a / b for a, b in zip(times["masked"], times["plain"]))
    r = statistics.median(ratios)
    verdict = "meets" if r <= 1.10 else "MISSES"
    return [
        [f"training step, batch {batch}", name, "plain", f"{p * 1e3:.3f}", "1.000",
         f"{steps} steps x {rounds} interleaved rounds"],
        [f"training step, batch {batch}", name, "masked (tune_prune hooks, 50% weights)",
         f"{m * 1e3:.3f}", f"{r:.3f}",
         f"median of per-round masked/plain ratios (range {ratios[0]:.3f}-{ratios[-1]:.3f}); "
         f"{verdict} target <= 1.10"],
    ]


def _median_time(fn: Callable[[], Any], setup: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        arg = setup()
        start = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pruner_rows(workload: Any, baseline: nn.Module, repeats: int) -> tuple[list[list], float]:
    w, x = workload, workload.dummy_input()
    conv = [{"op_types": ["Conv2d"], "sparsity_per_layer": 0.5}]
    batches = w.steps_per_epoch()
    stats = (w.trainer, w.traced_optimizer, w.criterion)
    makers: dict[str, Callable[[nn.Module], Any]] = {
        "level (normal)": lambda m: LevelPruner(
            m, [{"op_types": ["Conv2d", "Linear"], "sparsity_per_layer": 0.5}]),
        "level (global)": lambda m: LevelPruner(
            m, [{"op_types": ["Conv2d", "Linear"], "total_sparsity": 0.5}], mode="global"),
        "l1 (normal)": lambda m: L1NormPruner(m, conv),
        "l1 (dependency_aware)": lambda m: L1NormPruner(
            m, conv, mode="dependency_aware", dummy_input=x),
        "l2 (normal)": lambda m: L2NormPruner(m, conv),
        "fpgm (normal)": lambda m: FPGMPruner(m, conv),
        f"taylorfo ({batches} batches)": lambda m: TaylorFOWeightPruner(m, conv, *stats, batches),
        f"apoz ({batches} batches)": lambda m: ActivationAPoZRankPruner(m, conv, *stats, batches),
        f"mean_activation ({batches} batches)": lambda m: ActivationMeanRankPruner(
            m, conv, *stats, batches),
        "slim (1 epoch, global)": lambda m: SlimPruner(
            m, [{"op_types": ["BatchNorm2d"], "total_sparsity": 0.5}], *stats, 1),
    }

    def epoch(model: nn.Module) -> None:
        w.finetune(model, 1.0, float(w.config.finetune_lr), 0)

    ref = _median_time(epoch, lambda: copy.deepcopy(baseline), repeats)
    rows = [["one fine-tune epoch (reference)", "digits", "Workload.finetune(epochs=1)",
             f"{ref * 1e3:.1f}", "1.000", f"{batches} SGD steps of batch 64"]]
    for label, make in makers.items():
        def compress(pruner: Any) -> None:
            pruner.compress()
            pruner._unwrap_model()

        t = _median_time(compress, lambda make=make: make(copy.deepcopy(baseline)), repeats)
        rows.append([f"compress(), 50% sparsity: {label}", "digits", "one pruning step",
                     f"{t * 1e3:.1f}", f"{t / ref:.3f}", "relative to one fine-tune epoch"])
    return rows, ref


def speedup_rows(model: nn.Module, x: torch.Tensor, name: str, ref: float | None,
                 repeats: int) -> list[list]:
    work = copy.deepcopy(model).eval()
    pruner = L1NormPruner(work, [{"op_types": ["Conv2d"], "sparsity_per_layer": 0.5}],
                          mode="dependency_aware", dummy_input=x)
    _, masks = pruner.compress()
    pruner._unwrap_model()
    t_sp = _median_time(lambda _: speedup_model(work, masks, x), lambda: None, repeats)
    t_macs = _median_time(lambda _: count_macs(work, x, masks), lambda: None, repeats)
    t_ours = _median_time(lambda _: tune_prune_compact(work, x, 0.5), lambda: None, repeats)
    t_tp = _median_time(lambda _: tp_compact(work, x, 0.5), lambda: None, repeats)
    rel = (lambda t: f"{t / ref:.3f}") if ref else (lambda t: "")
    note = "relative to one digits fine-tune epoch" if ref else ""
    return [
        ["speedup_model (L1 dep.-aware 50% masks)", name, "one call", f"{t_sp * 1e3:.1f}",
         rel(t_sp), note],
        ["count_macs with masks (speeds up a copy)", name, "one call", f"{t_macs * 1e3:.1f}",
         rel(t_macs), note],
        ["prune 50% channels + physical removal, end to end", name,
         "tune_prune: L1NormPruner(dependency_aware).compress() + speedup_model",
         f"{t_ours * 1e3:.1f}", rel(t_ours), note],
        ["prune 50% channels + physical removal, end to end", name,
         "torch-pruning: MagnitudePruner(L1) build + step()", f"{t_tp * 1e3:.1f}",
         rel(t_tp), "same compact shape as the row above (experiments/speedup)"],
    ]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits-steps", type=int, default=100)
    parser.add_argument("--cifar-steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per pruner/speedup")
    parser.add_argument("--baseline-epochs", type=float, default=None)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    argv_used = list(argv) if argv is not None else sys.argv[1:]
    if args.quick:
        args.digits_steps, args.cifar_steps, args.rounds, args.repeats = 5, 2, 1, 1
        args.baseline_epochs = args.baseline_epochs or 1.0
    torch.set_num_threads(args.threads)
    workload = cpu_digits(args.baseline_epochs)
    header = [command_line(MODULE, argv_used), *machine_lines(),
              f"medians; train steps interleaved over {args.rounds} rounds; "
              f"{args.repeats} timed calls per pruner / speedup; digits baseline seed 0"]
    start = time.perf_counter()
    torch.manual_seed(0)
    baseline = load_or_train_baseline(workload, 0, args.cache)
    rows: list[list] = []
    rows += masked_step_rows("digits ResNet", workload.build_model, (1, 8, 8),
                             args.digits_steps, args.rounds)
    rows += masked_step_rows("CIFAR CNN (benchmarks/masked_step.py)", cifar_cnn, (3, 32, 32),
                             args.cifar_steps, args.rounds)
    p_rows, ref = pruner_rows(workload, baseline, args.repeats)
    rows += p_rows
    rows += speedup_rows(baseline, workload.dummy_input(), "digits ResNet", ref, args.repeats)
    torch.manual_seed(0)
    rows += speedup_rows(resnet20(), torch.randn(1, 3, 32, 32), "CIFAR ResNet-20", None,
                         args.repeats)
    header.append(f"wall time {time.perf_counter() - start:.0f} s; " + machine_lines()[-1])
    headers = ["measurement", "model", "variant", "ms (median)", "ratio", "note"]
    return write_results(args.out, header, headers, rows, footer=[RAY_NOTE])


if __name__ == "__main__":
    main()
