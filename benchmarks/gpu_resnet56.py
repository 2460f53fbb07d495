"""ResNet-56 on CIFAR-shaped synthetic data: masked fine-tune throughput, sped-up latency.

Questions (issue 5, GPU benchmark):

1. How much slower is a fine-tune step (forward + backward + SGD step, batch 128) when
   tune_prune's hooks hold masks on the model (forward pre-hook, gradient hook,
   optimizer step post-hook) than on the same model without masks? Two mask kinds:
   ~50% of Conv+Linear weight elements (``level`` pruner, fine-grained) and 50% of the
   conv filters (``l1`` pruner, dependency-aware). Reported as images/s and as the
   step-time ratio masked / plain (median of per-round ratios).
2. How much inference latency does physically shrinking the model buy? Channel masks
   (L1 filter norm, dependency-aware so coupled residual channels are cut together) at
   one uniform channel sparsity, calibrated by bisection on ``count_macs`` so that
   MACs(pruned) / MACs(dense) is as close as the uniform sparsity allows to 1/2 and
   1/2.5; ``speedup_model`` removes the channels. Eval mode, no autograd
   (``measure_latency``: inference mode), median over repeats, at batch 1 and 128.
   Reported: MACs, params and latency reductions (dense / sped-up).

Model: ``tune_prune.workloads.cifar.CifarResNet(blocks_per_stage=9, width=16)`` (ResNet-56,
1x1-conv shortcuts), random init (seed 0). Data: random tensors (B, 3, 32, 32) and labels
in [0, 10), drawn once on the device from a seeded generator and reused every step.

Commands (from the repository root)::

    # GPU run (device auto-detected; the table records which one)
    python -m benchmarks.gpu_resnet56 --out /tmp/gpu_resnet56
    python -m benchmarks.gpu_resnet56 --amp --out /tmp/gpu_resnet56_amp   # bf16 autocast
    # CPU end-to-end run with a small budget (slow: ResNet-56 at batch 32 on CPU)
    python -m benchmarks.gpu_resnet56 --device cpu --threads 1 --batch 32 --steps 3 \\
        --rounds 2 --repeats 3
    # CPU smoke run (ResNet-8, batch 8, seconds; the numbers mean nothing)
    python -m benchmarks.gpu_resnet56 --quick --device cpu

(``python benchmarks/gpu_resnet56.py ...`` works too.)

On CUDA: warm-up steps/forwards before timing, ``torch.cuda.synchronize()`` around every
timed region, ``torch.backends.cudnn.benchmark = True`` unless ``--no-cudnn-benchmark``;
``--amp`` runs forward (and loss) under bf16 autocast (off by default).

What this does NOT claim: nothing about accuracy (synthetic data, untrained model; the
masks are magnitude masks of a random init). The sped-up shapes come from a *uniform*
channel sparsity, so the achieved MACs reduction is printed and may miss 2x / 2.5x by a
few percent (channel counts are integers). Timings are of this process on this device
only; the masked-step ratio says what tune_prune's hooks cost, not what sparse kernels
could save (masked layers still run dense kernels).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tune_prune.pruning.dependency import channel_groups, dependency_aware_masks
from tune_prune.pruning.masks import unwrap_model, wrap_model
from tune_prune.pruning.measure import count_macs, count_params, measure_latency, sparsity_report
from tune_prune.pruning.speedup import speedup_model
from tune_prune.search.build import make_config_list, make_pruner
from tune_prune.workloads.cifar import CifarResNet

try:
    from experiments._common import command_line, machine_lines, markdown_table, write_results
except ModuleNotFoundError:  # run as a file (python benchmarks/gpu_resnet56.py): add the root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from experiments._common import command_line, machine_lines, markdown_table, write_results

MODULE = "benchmarks.gpu_resnet56"
NOTE = "synthetic data: no accuracy claims"
HEADERS = [
    "measurement",
    "variant",
    "device",
    "batch",
    "MACs dense/this",
    "params dense/this",
    "ms (median)",
    "images/s",
    "step time this/plain",
    "latency dense/this",
]


# --------------------------------------------------------------------------- device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available here")
    return device


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_names(device: torch.device) -> tuple[str, str]:
    """(short name for the table's device column, long description for the header)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(index)
        props = torch.cuda.get_device_properties(index)
        cudnn = torch.backends.cudnn.version()
        return name, (
            f"device: cuda:{index} {name}, {props.total_memory / 2**30:.0f} GiB, "
            f"CUDA {torch.version.cuda}, cuDNN {cudnn}"
        )
    threads = torch.get_num_threads()
    name = f"CPU {cpu_name()} ({threads} thread{'s' if threads != 1 else ''})"
    return name, (
        f"device: cpu, {cpu_name()}, {os.cpu_count()} logical CPUs, "
        f"torch.get_num_threads() = {threads}"
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, enabled: bool) -> Any:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def synthetic_batch(batch: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random CIFAR-shaped images and labels in [0, 10), drawn on ``device`` (seeded)."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(batch, 3, 32, 32, generator=g, device=device)
    y = torch.randint(0, 10, (batch,), generator=g, device=device)
    return x, y


# --------------------------------------------------------------------------- masks


def pruner_masks(model: nn.Module, pruner: str, mode: str, kind: str, sparsity: float,
                 dummy: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """Masks of one ``compress()`` of a library pruner on a copy of ``model`` (left unwrapped)."""
    work = copy.deepcopy(model)
    p = make_pruner(pruner, mode, dummy)
    p.reset(work, make_config_list(kind, mode, sparsity))
    _, masks = p.compress()
    p.unwrap_model()
    return masks


class ChannelCalibrator:
    """Dependency-aware L1 filter masks at a uniform sparsity, sped up, MACs counted."""

    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        self.model, self.x = model.eval(), x
        convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        self.metrics = {n: m.weight.detach().abs().flatten(1).sum(1) for n, m in convs.items()}
        self.groups = channel_groups(model, x)  # traced once, reused for every sparsity
        self.dense_macs = count_macs(model, x)
        self.dense_params = count_params(model)

    def compact(self, sparsity: float) -> tuple[nn.Module, float]:
        """The sped-up model at ``sparsity`` and its MACs(pruned) / MACs(dense)."""
        masks = dependency_aware_masks(
            self.model, self.x, self.metrics, dict.fromkeys(self.metrics, sparsity), self.groups
        )
        compact, remaining, _ = speedup_model(self.model, masks, self.x)
        if remaining:
            raise RuntimeError(f"speedup left masks on {sorted(remaining)}")
        return compact.eval(), count_macs(compact, self.x) / self.dense_macs

    def calibrate(self, reduction: float, steps: int) -> tuple[float, nn.Module, float, int]:
        """Bisect the channel sparsity so MACs ratio ~ 1 / reduction.

        The ratio is a step function of the sparsity (integer channel counts), so the
        visited point closest to the target in log ratio is kept.
        Returns (sparsity, compact model, achieved MACs ratio, bisection steps used).
        """
        target = 1.0 / reduction
        lo, hi = 0.0, 0.95
        best: tuple[float, float, nn.Module, float] | None = None  # (error, s, model, ratio)
        used = 0
        for used in range(1, steps + 1):  # noqa: B007 - `used` is reported
            s = 0.5 * (lo + hi)
            compact, ratio = self.compact(s)
            err = abs(math.log(ratio / target))
            if best is None or err < best[0]:
                best = (err, s, compact, ratio)
            if err < 0.005:
                break
            if ratio > target:
                lo = s
            else:
                hi = s
        assert best is not None
        return best[1], best[2], best[3], used


# --------------------------------------------------------------------------- timing


def time_train_steps(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                     y: torch.Tensor, steps: int, amp: bool) -> float:
    """Seconds per fine-tune step (forward + cross-entropy + backward + SGD step)."""
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    sync(x.device)
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with autocast(x.device, amp):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    sync(x.device)
    return (time.perf_counter() - start) / steps


def train_rows(args: argparse.Namespace, base: nn.Module, device: torch.device,
               dev_name: str) -> tuple[list[list], list[str]]:
    """Plain vs masked fine-tune steps, interleaved rounds (median)."""
    dummy = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(args.seed))
    masks = {
        f"masked: level, {args.weight_sparsity:.0%} of Conv+Linear weights": pruner_masks(
            base, "level", "normal", "weights", args.weight_sparsity, dummy),
        f"masked: l1 dependency-aware, {args.channel_sparsity:.0%} of conv filters": pruner_masks(
            base, "l1", "dependency_aware", "channels", args.channel_sparsity, dummy),
    }
    models = {"plain": copy.deepcopy(base).to(device)}
    models.update({k: copy.deepcopy(base).to(device) for k in masks})
    opts = {
        k: torch.optim.SGD(m.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                           weight_decay=5e-4)
        for k, m in models.items()
    }
    x, y = synthetic_batch(args.batch, device, args.seed)

    def run(key: str, steps: int) -> float:
        # Masks are held only while their own model runs: tune_prune's optimizer step
        # post-hook is global, so a model left wrapped would tax the plain model's steps.
        if key in masks:
            wrap_model(models[key], masks[key])
        try:
            return time_train_steps(models[key], opts[key], x, y, steps, args.amp)
        finally:
            if key in masks:
                unwrap_model(models[key])

    for key in models:  # warm-up (cuDNN autotuning, allocator, optimizer state)
        run(key, args.warmup)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.rounds):  # interleaved so drift hits every variant alike
        for key in models:
            times[key].append(run(key, args.steps))

    rows, notes = [], []
    plain = statistics.median(times["plain"])
    for key in models:
        t = statistics.median(times[key])
        ratios = sorted(a / b for a, b in zip(times[key], times["plain"]))
        label = key
        if key in masks:
            frac = sparsity_report(models[key], masks[key])["sparsity"]
            label = f"{key} (hooks; {frac:.1%} of those weights zero)"
            notes.append(
                f"{key}: step time masked/plain per round {ratios[0]:.3f}-{ratios[-1]:.3f}"
            )
        rows.append([
            "fine-tune step (fwd+bwd+SGD)", label, dev_name, args.batch, "", "",
            f"{t * 1e3:.3f}", f"{args.batch / t:.1f}",
            f"{statistics.median(ratios):.3f}" if key in masks else f"{t / plain:.3f}", "",
        ])
        models[key].to("cpu")
    return rows, notes


def latency_rows(args: argparse.Namespace, base: nn.Module, device: torch.device,
                 dev_name: str) -> tuple[list[list], list[str]]:
    """Dense vs sped-up (one per MACs-reduction target) inference latency."""
    x1 = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(args.seed))
    cal = ChannelCalibrator(copy.deepcopy(base), x1)
    variants: dict[str, tuple[nn.Module, float, float]] = {
        "dense": (cal.model, 1.0, 1.0)
    }
    notes = []
    for reduction in args.targets:
        s, compact, ratio, used = cal.calibrate(reduction, args.bisect_steps)
        p_ratio = count_params(compact) / cal.dense_params
        variants[f"sped-up, {reduction:g}x MACs target (channel sparsity {s:.4f})"] = (
            compact, ratio, p_ratio)
        notes.append(
            f"{reduction:g}x target: uniform channel sparsity {s:.4f} ({used} bisection steps); "
            f"achieved MACs pruned/dense = {ratio:.4f} (target {1 / reduction:.4f}, "
            f"reduction {1 / ratio:.3f}x); params pruned/dense = {p_ratio:.4f}"
        )
    for model, _, _ in variants.values():
        model.to(device).eval()

    rows = []
    for batch in args.latency_batches:
        x, _ = synthetic_batch(batch, device, args.seed + 1)
        times: dict[str, list[float]] = {k: [] for k in variants}
        with autocast(device, args.amp):
            for _ in range(args.rounds):  # interleaved rounds; each a median of repeats
                for key, (model, _, _) in variants.items():
                    times[key].append(measure_latency(model, x, args.repeats, args.warmup))
        dense = statistics.median(times["dense"])
        for key, (_, m_ratio, p_ratio) in variants.items():
            t = statistics.median(times[key])
            rows.append([
                "inference latency (eval, no grad)", key, dev_name, batch,
                f"{1 / m_ratio:.3f}", f"{1 / p_ratio:.3f}", f"{t * 1e3:.3f}",
                f"{batch / t:.1f}", "", f"{dense / t:.3f}",
            ])
            if key != "dense":
                notes.append(
                    f"batch {batch}, {key}: latency reduction / MACs reduction = "
                    f"{(dense / t) * m_ratio:.2f}"
                )
    for model, _, _ in variants.values():
        model.to("cpu")
    return rows, notes


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:0")
    parser.add_argument("--blocks-per-stage", type=int, default=9, help="9: ResNet-56")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128, help="fine-tune batch (and latency)")
    parser.add_argument("--latency-batches", type=int, nargs="+", default=None,
                        help="inference batch sizes (default: 1 and --batch)")
    parser.add_argument("--steps", type=int, default=50, help="timed fine-tune steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up steps / forwards")
    parser.add_argument("--repeats", type=int, default=50,
                        help="timed forwards per latency measurement (median)")
    parser.add_argument("--targets", type=float, nargs="+", default=[2.0, 2.5],
                        help="MACs reductions (dense / pruned) of the sped-up models")
    parser.add_argument("--bisect-steps", type=int, default=14)
    parser.add_argument("--weight-sparsity", type=float, default=0.5)
    parser.add_argument("--channel-sparsity", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (off by default)")
    parser.add_argument("--no-cudnn-benchmark", dest="cudnn_benchmark", action="store_false")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write results.md/.csv here")
    parser.add_argument("--quick", action="store_true",
                        help="smoke budget: ResNet-8, batch 8, 2 repeats (numbers meaningless)")
    args = parser.parse_args(argv)
    if args.quick:
        args.blocks_per_stage, args.batch = 1, 8
        args.steps, args.rounds, args.warmup, args.repeats, args.bisect_steps = 2, 1, 1, 2, 10
    if args.latency_batches is None:
        args.latency_batches = [1, args.batch]
    return args


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv)
    argv_used = list(argv) if argv is not None else sys.argv[1:]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cudnn_before = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    dev_name, dev_line = device_names(device)
    try:
        tp_version = version("torch-pruning")
    except PackageNotFoundError:  # pragma: no cover
        tp_version = "not installed"

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    base = CifarResNet(args.blocks_per_stage, args.width)
    depth = 6 * args.blocks_per_stage + 2
    x1 = torch.zeros(1, 3, 32, 32)
    try:
        t_rows, t_notes = train_rows(args, base, device, dev_name)
        l_rows, l_notes = latency_rows(args, base, device, dev_name)
    finally:
        torch.backends.cudnn.benchmark = cudnn_before
    header = [
        command_line(MODULE, argv_used),
        dev_line,
        f"torch {torch.__version__}, torch-pruning {tp_version}",
        *machine_lines(),
        f"model: ResNet-{depth} = CifarResNet(blocks_per_stage={args.blocks_per_stage}, "
        f"width={args.width}), random init (seed {args.seed}), "
        f"{count_params(base):,} params, {count_macs(base, x1):,} MACs per image",
        f"{NOTE} (random tensors 3x32x32, labels in [0, 10), seeded, generated on the device)",
        f"amp (bf16 autocast): {'on' if args.amp else 'off'}; cudnn.benchmark: "
        + (str(args.cudnn_benchmark) if device.type == "cuda" else "n/a (cpu)"),
        f"fine-tune: SGD lr {args.lr} momentum 0.9 nesterov wd 5e-4, cross-entropy, batch "
        f"{args.batch}, {args.warmup} warm-up + {args.steps} timed steps x {args.rounds} "
        "interleaved rounds (median)",
        f"latency: measure_latency (eval, inference mode, cuda sync), {args.warmup} warm-up + "
        f"{args.repeats} forwards (median) x {args.rounds} interleaved rounds (median)",
        *l_notes[: len(args.targets)],
        f"wall time {time.perf_counter() - start:.0f} s",
    ]
    footer = [
        "Ratios: `MACs/params/latency dense/this` = reduction vs the dense model (higher is "
        "smaller/faster); `step time this/plain` = cost of holding masks (median of per-round "
        "ratios; above 1 is slower). Masked steps run dense kernels: zeros are not skipped.",
        "",
        *(f"- {n}" for n in (*t_notes, *l_notes[len(args.targets):])),
    ]
    rows = t_rows + l_rows
    if args.out is not None:
        return write_results(args.out, header, HEADERS, rows, footer=footer)
    text = "\n".join(
        [*(f"    {h}" for h in header), "", markdown_table(HEADERS, rows), "", *footer]
    ).rstrip() + "\n"
    print(text, flush=True)
    return text


if __name__ == "__main__":
    main()
