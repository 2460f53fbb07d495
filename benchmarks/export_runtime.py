"""What do channels_last and ONNX Runtime buy for the exported (channel-pruned) model on CPU?

Issue 14, item 2. Models: the CIFAR ResNet-20 (``tune_prune.workloads.cifar.CifarResNet
(blocks_per_stage=3)``, 32x32 inputs) and the digits ResNet
(``tune_prune.workloads.digits.DigitsResNet()``, 8x8 inputs), both random init (seed 0;
latency does not depend on the weights), dense and channel-pruned at each
``--sparsities`` (dependency-aware L1 masks from ``benchmarks/speedup_latency.py``'s
``l1_group_masks`` + ``speedup_model``, as that script does; with ``--round-to 8 16``
also ``L1NormPruner(mode="dependency_aware", round_to=r)``, whose kept channels per
group are a multiple of r, the widths ONNX Runtime's blocked layout wants). For each
model, sparsity (and round_to) and batch size (1 and 64), the median CPU latency of one
forward in each runtime:

1. ``eager NCHW``: the eager PyTorch model, default (contiguous NCHW) layout: the baseline;
2. ``eager channels_last``: model and input in ``torch.channels_last`` (the input is
   converted outside the timed region);
3. ``ONNX Runtime``: the ``model.onnx`` that ``tune_prune.export.save_pruned`` writes
   (the package's own export path, exported with a dummy input of that batch size; the
   file's batch dimension is dynamic, but exporting per batch size keeps the runs the
   recorded table was made with), run by an ``onnxruntime.InferenceSession`` on
   ``CPUExecutionProvider`` with ``intra_op_num_threads = --threads``,
   ``inter_op_num_threads = 1`` and ``graph_optimization_level = ORT_ENABLE_ALL``;
4. ``TorchScript frozen``: ``torch.jit.freeze(torch.jit.trace(model, x))`` (skipped with
   ``--no-jit``, reported as failed if tracing or freezing raises).

Every variant's output is checked against eager NCHW's before timing (max abs diff
printed; a diff above ``--tol``, 1e-4 by default, raises :class:`AgreementError`).
Timing: ``--warmup`` untimed then ``--repeats`` timed calls (median) per variant, in
``--rounds`` interleaved rounds (the variant order rotates each round) so that whatever
else the machine is doing hits all variants alike; the table reports the median over
rounds, and speed-up = eager NCHW's latency / the variant's. Torch variants run under
``torch.inference_mode()``; ORT's input is a NumPy array made once, outside the timing.

    python benchmarks/export_runtime.py [--threads 1] [--rounds 7] [--repeats 10]
    python benchmarks/export_runtime.py --quick     # seconds; the numbers mean little

onnxruntime is optional (``pip install 'tune_prune[runtime]'``); without it the ORT
rows say "skipped" and the rest runs. The package never imports onnxruntime.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

try:
    from benchmarks.speedup_latency import l1_group_masks
except ImportError:  # run as a file: benchmarks/ is not a package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.speedup_latency import l1_group_masks

from tune_prune.export import save_pruned
from tune_prune.export.folder import ONNX_FILE
from tune_prune.pruning.measure import count_macs
from tune_prune.pruning.pruners.norm import L1NormPruner
from tune_prune.pruning.speedup import speedup_model
from tune_prune.workloads.cifar import CifarResNet
from tune_prune.workloads.digits import DigitsResNet

EAGER, CHANNELS_LAST, ORT, JIT = (
    "eager NCHW",
    "eager channels_last",
    "ONNX Runtime",
    "TorchScript frozen",
)
VARIANTS = (EAGER, CHANNELS_LAST, ORT, JIT)
HEADERS = [
    "model",
    "channel sparsity",
    "MACs / sample",
    "batch",
    "variant",
    "latency ms (median)",
    "speed-up vs eager NCHW",
    "max abs diff vs eager",
]

#: name -> (builder, input shape without the batch dimension)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "resnet20": (lambda: CifarResNet(blocks_per_stage=3, width=16), (3, 32, 32)),
    "digits": (lambda: DigitsResNet(width=16), (1, 8, 8)),
}


class AgreementError(AssertionError):
    """A runtime's output differs from eager PyTorch's by more than the tolerance."""


Forward = Callable[[], Any]  # one forward on the variant's prepared input; returns its output


@dataclass
class Case:
    """One (model, sparsity, batch): the variants' forwards and what was measured."""

    model: str
    sparsity: float
    macs: int
    batch: int
    round_to: int = 1
    forwards: dict[str, Forward] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # variant -> why it did not run
    diffs: dict[str, float] = field(default_factory=dict)
    times: dict[str, list[float]] = field(default_factory=dict)
    widths: str = ""  # the distinct conv widths, e.g. "12/24/48"


# ----------------------------------------------------------------------------- variants


def import_onnxruntime() -> Any | None:
    """onnxruntime, or None when it is not installed (the ORT variant is then skipped)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


def make_eager(model: nn.Module, x: torch.Tensor) -> Forward:
    return lambda: model(x)


def make_channels_last(model: nn.Module, x: torch.Tensor) -> Forward:
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    return lambda: model_cl(x_cl)


def make_ort(model: nn.Module, x: torch.Tensor, threads: int, workdir: Path) -> Forward:
    """Export through tune_prune's own path (``save_pruned(..., dummy_input=x)``) and open
    the ``model.onnx`` in ONNX Runtime. Raises RuntimeError when no ONNX file was written."""
    ort = import_onnxruntime()
    if ort is None:
        raise ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")
    folder = save_pruned(workdir, model, dummy_input=x)
    path = folder / ONNX_FILE
    if not path.is_file():
        raise RuntimeError("tune_prune's ONNX export wrote no model.onnx (see the warning logged)")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    feed = {name: x.numpy().copy()}
    return lambda: session.run(None, feed)[0]


def make_jit(model: nn.Module, x: torch.Tensor) -> Forward:
    with torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.trace(copy.deepcopy(model).eval(), x))
    return lambda: frozen(x)


def _as_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, (list, tuple)):
        out = out[0]
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    return out.detach().float().contiguous()


def check_agreement(case: Case, tol: float) -> None:
    """Record every variant's max abs diff from eager NCHW's output; raise past ``tol``."""
    with torch.inference_mode():
        ref = _as_tensor(case.forwards[EAGER]())
        for name, fwd in case.forwards.items():
            out = _as_tensor(fwd())
            if out.shape != ref.shape:
                raise AgreementError(
                    f"{case.model} s={case.sparsity} batch {case.batch}: {name} output shape "
                    f"{tuple(out.shape)} != eager {tuple(ref.shape)}"
                )
            diff = (out - ref).abs().max().item()
            case.diffs[name] = diff
            if not diff <= tol:  # also catches NaN
                raise AgreementError(
                    f"{case.model} s={case.sparsity} batch {case.batch}: {name} differs from "
                    f"eager NCHW by max abs {diff:.3g} > tol {tol:g}"
                )


def time_forward(fwd: Forward, repeats: int, warmup: int) -> float:
    """Median wall-clock seconds of one call (as ``measure_latency``, for any callable)."""
    with torch.inference_mode():
        for _ in range(warmup):
            fwd()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fwd()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


# ----------------------------------------------------------------------------- building


def pruned_models(
    name: str, sparsities: Sequence[float], round_tos: Sequence[int] = (1,)
) -> list[tuple[float, int, nn.Module, int]]:
    """(sparsity, round_to, eval model, MACs per sample): the dense model (0, 1), then each
    sparsity at each round_to (1: ``l1_group_masks``, the recorded table's masks; r > 1:
    ``L1NormPruner(mode="dependency_aware", round_to=r)``)."""
    build, shape = MODELS[name]
    torch.manual_seed(0)
    dense = build().eval()
    x1 = torch.randn(1, *shape)
    out = [(0.0, 1, dense, count_macs(dense, x1))]
    for s in sparsities:
        if s <= 0:
            continue
        for r in round_tos:
            if r == 1:
                masks = l1_group_masks(dense, x1, s)
            else:
                work = copy.deepcopy(dense)
                config = [{"op_types": ["Conv2d"], "sparsity_per_layer": s}]
                pruner = L1NormPruner(work, config, mode="dependency_aware", dummy_input=x1, round_to=r)
                _, masks = pruner.compress()
                pruner._unwrap_model()
            compact, _remaining, _ = speedup_model(copy.deepcopy(dense), masks, x1)
            compact.eval()
            out.append((s, r, compact, count_macs(compact, x1)))
    return out


def conv_widths(model: nn.Module) -> str:
    """The distinct output-channel counts of the model's convs, ascending ("12/24/48")."""
    widths = sorted({m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)})
    return "/".join(str(w) for w in widths)


def build_case(
    name: str, sparsity: float, model: nn.Module, macs: int, batch: int, args: argparse.Namespace,
    workdir: Path, round_to: int = 1,
) -> Case:
    _, shape = MODELS[name]
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, *shape, generator=gen)
    case = Case(name, sparsity, macs, batch, round_to)
    case.widths = conv_widths(model)
    makers: dict[str, Callable[[], Forward]] = {
        EAGER: lambda: make_eager(model, x),
        CHANNELS_LAST: lambda: make_channels_last(model, x),
        ORT: lambda: make_ort(model, x, args.threads, workdir / f"{name}_{sparsity}_{round_to}_{batch}"),
    }
    if not args.no_jit:
        makers[JIT] = lambda: make_jit(model, x)
    else:
        case.notes[JIT] = "skipped (--no-jit)"
    for variant, make in makers.items():
        try:
            case.forwards[variant] = make()
        except ModuleNotFoundError as err:
            if variant != ORT or err.name != "onnxruntime":
                raise
            case.notes[variant] = "skipped (onnxruntime not installed)"
        except Exception as err:  # noqa: BLE001 - report a runtime that cannot run this model
            if variant == EAGER:
                raise
            case.notes[variant] = f"failed: {type(err).__name__}: {str(err)[:80]}"
            print(f"  {name} s={sparsity} b={batch}: {variant} {case.notes[variant]}",
                  file=sys.stderr)
    check_agreement(case, args.tol)
    return case


# ----------------------------------------------------------------------------- output


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}" if seconds < 0.01 else f"{seconds * 1e3:.2f}"


def _sparsity(case: Case) -> str:
    """The sparsity cell: "0.25", or "0.25, round_to 8 (8/24/48)" with the conv widths."""
    if case.round_to == 1:
        return f"{case.sparsity:g}"
    return f"{case.sparsity:g}, round_to {case.round_to} ({case.widths})"


def long_rows(cases: Sequence[Case]) -> list[list[str]]:
    rows = []
    for c in cases:
        base = statistics.median(c.times[EAGER])
        for variant in VARIANTS:
            head = [c.model, _sparsity(c), f"{c.macs:,}", str(c.batch), variant]
            if variant in c.times:
                lat = statistics.median(c.times[variant])
                rows.append(head + [_ms(lat), f"{base / lat:.2f}x", f"{c.diffs[variant]:.1e}"])
            else:
                rows.append(head + [c.notes.get(variant, "not run"), "", ""])
    return rows


def wide_rows(cases: Sequence[Case]) -> tuple[list[str], list[list[str]]]:
    headers = ["model", "channel sparsity", "MACs / sample", "batch", "eager NCHW ms"]
    headers += [f"{v} ms (speed-up)" for v in VARIANTS[1:]]
    rows = []
    for c in cases:
        base = statistics.median(c.times[EAGER])
        row = [c.model, _sparsity(c), f"{c.macs:,}", str(c.batch), _ms(base)]
        for variant in VARIANTS[1:]:
            if variant in c.times:
                lat = statistics.median(c.times[variant])
                row.append(f"{_ms(lat)} ({base / lat:.2f}x)")
            else:
                row.append(c.notes.get(variant, "not run").split(" (")[0])
        rows.append(row)
    return headers, rows


def markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(out)


def _load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def _version(module: Any | None) -> str:
    return "not installed" if module is None else module.__version__


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch and ORT intra-op threads")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["resnet20", "digits"])
    p.add_argument("--sparsities", type=float, nargs="+",
                   help="channel sparsities pruned (default 0.25 0.5; the dense model is "
                   "always included)")
    p.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 1 64)")
    p.add_argument("--round-to", type=int, nargs="+", default=[1], dest="round_to",
                   help="round_to values each sparsity is pruned at (default 1; e.g. 1 8 16: "
                   "kept channels a multiple of r)")
    p.add_argument("--rounds", type=int, help="interleaved rounds, median taken (default 7)")
    p.add_argument("--repeats", type=int, help="timed calls per variant per round (default 10)")
    p.add_argument("--warmup", type=int, help="untimed calls per variant per round (default 3)")
    p.add_argument("--tol", type=float, default=1e-4, help="max abs diff allowed vs eager")
    p.add_argument("--no-jit", action="store_true", help="skip the TorchScript variant")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: defaults become sparsity 0.5 only, batches 1 and 8, "
                   "1 round of 2 repeats after 1 warm-up")
    args = p.parse_args(argv)
    defaults = (
        {"sparsities": [0.5], "batches": [1, 8], "rounds": 1, "repeats": 2, "warmup": 1}
        if args.quick
        else {"sparsities": [0.25, 0.5], "batches": [1, 64], "rounds": 7, "repeats": 10,
              "warmup": 3}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads < 1 or args.rounds < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--threads, --rounds and --repeats must be >= 1, --warmup >= 0")
    if any(r < 1 for r in args.round_to):
        p.error(f"--round-to values must be integers >= 1, got {args.round_to}")
    return args


def main(argv: Sequence[str] | None = None) -> str:
    """Run the benchmark, print the report and return it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    load_start, start = _load(), time.perf_counter()
    torch.set_num_threads(args.threads)
    ort = import_onnxruntime()

    cases: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="export_runtime_") as tmp:
        for name in args.models:
            for sparsity, round_to, model, macs in pruned_models(name, args.sparsities, args.round_to):
                for batch in args.batches:
                    print(f"building {name} s={sparsity:g} round_to {round_to} batch {batch}", file=sys.stderr)
                    cases.append(build_case(name, sparsity, model, macs, batch, args, Path(tmp), round_to))
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
            for case in cases:
                names = list(case.forwards)
                shift = r % len(names)
                for variant in names[shift:] + names[:shift]:  # rotate the order each round
                    t = time_forward(case.forwards[variant], args.repeats, args.warmup)
                    case.times.setdefault(variant, []).append(t)
    wall = time.perf_counter() - start

    lines = [
        f"command: python benchmarks/export_runtime.py {' '.join(shlex.quote(a) for a in argv)}".rstrip(),
        f"torch {torch.__version__}, onnxruntime {_version(ort)}, python "
        f"{platform.python_version()}, {platform.machine()} {os.cpu_count()} logical CPUs (shared)",
        f"threads: torch.get_num_threads() = {torch.get_num_threads()}, ORT intra_op_num_threads "
        f"= {args.threads}, inter_op_num_threads = 1",
        f"load average (1/5/15 min) at start: {load_start}; at end: {_load()}; wall {wall:.0f} s",
    ]
    if ort is None:
        lines.append("onnxruntime is NOT installed: the ONNX Runtime rows are skipped "
                     "(pip install 'tune_prune[runtime]')")
    lines += [
        f"timing: median over {args.rounds} interleaved round(s) of the median of {args.repeats} "
        f"forward(s) after {args.warmup} warm-up; outputs checked against eager NCHW "
        f"(tol {args.tol:g})",
        "",
        markdown(HEADERS, long_rows(cases)),
        "",
        "Summary (latency ms, speed-up vs eager NCHW in brackets):",
        "",
        markdown(*wide_rows(cases)),
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="", flush=True)
    return text


if __name__ == "__main__":
    main()
