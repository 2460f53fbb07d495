"""Size and cost of a (masked) model: parameters, MACs, sparsity and latency.

What is counted
---------------
* ``count_params``: parameter elements; with masks, a masked tensor counts its non-zero
  mask entries (a dead filter's weights and its zeroed bias do not count). BN
  running statistics are buffers and never count.
* ``count_macs``: multiply-accumulates of the ops `torch.utils.flop_counter` knows
  (conv, linear/matmul, bmm, attention): flops / 2, for the batch in `dummy_input`.
  Element-wise ops, BN, pooling and activations are not counted. With masks, the
  structured part is counted on a sped-up copy (dead channels removed along with the
  consumers' input channels), then each Conv/Linear that still carries a weight mask
  counts ``dense MACs * nonzero / numel`` (= nonzero weights x output positions).
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tune_prune.errors import ConfigError, SpeedupError
from tune_prune.pruning.dependency import forward
from tune_prune.pruning.masks import Masks, check_masks

logger = logging.getLogger(__name__)

__all__ = ["count_macs", "count_params", "measure_latency", "repeat_batch", "sparsity_report"]



def count_params(model: nn.Module, masks: Masks | None = None) -> int:
    """Number of parameter elements; masked tensors count only their non-zero mask entries."""
    masks = masks or {}
    modules = check_masks(model, masks)
    total = 0
    for mname, module in modules.items():
        entry = masks.get(mname, {})
        for pname, param in module.named_parameters(recurse=False):
            mask = entry.get(pname)
            total += int((mask != 0).sum()) if mask is not None else param.numel()
    return total


def _dense_layer_macs(model: nn.Module, dummy_input: Any) -> tuple[int, dict[str, int]]:
    """Total MACs from FlopCounterMode, and per Conv/Linear MACs from forward hooks."""
    per_layer: dict[str, int] = {}
    hooks = []

    def make_hook(name: str):
        def hook(mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            if isinstance(mod, nn.modules.conv._ConvNd):
                k = mod.weight[0].numel()  # in_channels/groups * prod(kernel)
                per_layer[name] = per_layer.get(name, 0) + out.numel() * k
            else:
                per_layer[name] = per_layer.get(name, 0) + out.numel() * mod.in_features

        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)):
            hooks.append(mod.register_forward_hook(make_hook(name)))
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            forward(model, dummy_input)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return counter.get_total_flops() // 2, per_layer


def count_macs(model: nn.Module, dummy_input: Any, masks: Masks | None = None) -> int:
    """MACs of one forward pass on `dummy_input` (see module docstring for what counts).

    With masks the model is sped up on a copy; if that is impossible (SpeedupError) every
    masked Conv/Linear is discounted by its weight density instead.
    """
    if not masks:
        return _dense_layer_macs(model, dummy_input)[0]
    check_masks(model, masks)
    from tune_prune.pruning.speedup import speedup_model  # speedup imports dependency only

    try:
        compact, remaining, _ = speedup_model(model, masks, dummy_input)
    except SpeedupError as exc:
        logger.warning("count_macs: speedup failed (%s); discounting masked layers only", exc)
        compact, remaining = model, masks
    total, per_layer = _dense_layer_macs(compact, dummy_input)
    for name, entry in remaining.items():
        mask = entry.get("weight")
        if mask is None or name not in per_layer:
            continue
        density = float((mask != 0).sum()) / mask.numel()
        total -= round(per_layer[name] * (1.0 - density))
    return int(total)


def sparsity_report(model: nn.Module, masks: Masks) -> dict[str, Any]:
    """Per-layer and total fraction of masked weight elements (weight masks only).

    Returns ``{"layers": {name: {"total": n, "pruned": z, "sparsity": z/n}},
    "total": n_all, "pruned": z_all, "sparsity": z_all/n_all}`` over masked layers.
    """
    check_masks(model, masks)
    layers: dict[str, dict[str, float]] = {}
    n_all = z_all = 0
    for name, entry in masks.items():
        mask = entry.get("weight")
        if mask is None:
            continue
        n, z = mask.numel(), int((mask == 0).sum())
        layers[name] = {"total": n, "pruned": z, "sparsity": z / n if n else 0.0}
        n_all += n
        z_all += z
    return {
        "layers": layers,
        "total": n_all,
        "pruned": z_all,
        "sparsity": z_all / n_all if n_all else 0.0,
    }


def measure_latency(
    model: nn.Module, input: Any, repeats: int = 20, warmup: int = 5, threads: int | None = None
) -> float:
    """Median wall-clock seconds of one forward pass under torch.inference_mode (eval mode).

    ``threads``: torch's intra-op thread count during the measurement (warm-up included),
    restored afterwards, also when the forward pass raises; None keeps the current one.
    """
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"measure_latency: repeats={repeats} must be >= 1, warmup={warmup} >= 0")
    if threads is not None and threads < 1:
        raise ConfigError(f"measure_latency: threads={threads} must be >= 1 (or None)")
    was_training = model.training
    model.eval()
    cuda = any(p.is_cuda for p in model.parameters())
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = []
    previous_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(int(threads))
        with torch.inference_mode():
            for _ in range(warmup):
                forward(model, input)
            for _ in range(repeats):
                sync()
                start = time.perf_counter()
                forward(model, input)
                sync()
                times.append(time.perf_counter() - start)
    finally:
        if threads is not None:
            torch.set_num_threads(previous_threads)
        model.train(was_training)
    return statistics.median(times)


def repeat_batch(dummy_input: Any, batch_size: int) -> Any:
    """``dummy_input`` grown (or cut) to ``batch_size`` along dim 0 by repeating its rows.

    Tensors of a tuple, list or dict of inputs are repeated alike; a 0-d tensor and
    anything that is not a tensor are passed through unchanged.
    """
    if batch_size < 1:
        raise ConfigError(f"repeat_batch: batch_size={batch_size} must be >= 1")
    if isinstance(dummy_input, torch.Tensor):
        if dummy_input.dim() == 0 or dummy_input.shape[0] == 0:
            return dummy_input
        n = dummy_input.shape[0]
        reps = -(-batch_size // n)  # ceil
        return dummy_input.repeat(reps, *([1] * (dummy_input.dim() - 1)))[:batch_size]
    if isinstance(dummy_input, dict):
        return {k: repeat_batch(v, batch_size) for k, v in dummy_input.items()}
    if isinstance(dummy_input, (tuple, list)):
        return type(dummy_input)(repeat_batch(v, batch_size) for v in dummy_input)
    return dummy_input
