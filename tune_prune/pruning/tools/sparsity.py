"""Sparsity bookkeeping against the ORIGINAL model, so schedules never compound.

Every target in a config_list is a fraction of the original model's weights. Once a
model has been physically shrunk (speedup), a layer has fewer weights than it had,
both because its own output channels went and because its input channels went with
the layer before it. Measuring what is already gone per layer, from weight counts of
the original versus the compact layer, and asking the pruner only for the rest
(``(s - c) / (1 - c)``) keeps the schedule on target.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

Masks = dict[str, dict[str, torch.Tensor]]

# The config validator wants sparsities strictly below 1.
_MAX_SPARSITY = 1.0 - 1e-9


def layer_weight_counts(model: nn.Module, names: Iterable[str]) -> dict[str, int]:
    """Weight elements of each named layer; 0 for a layer the model no longer has."""
    modules = dict(model.named_modules())
    out: dict[str, int] = {}
    for name in names:
        weight = getattr(modules.get(name), "weight", None)
        out[name] = int(weight.numel()) if isinstance(weight, torch.Tensor) else 0
    return out


def layer_kept_counts(model: nn.Module, masks: Mapping[str, Mapping[str, torch.Tensor]] | None,
                      names: Iterable[str]) -> dict[str, int]:
    """Weight elements of each named layer that are neither removed nor masked."""
    counts = layer_weight_counts(model, names)
    out = {}
    for name, count in counts.items():
        mask = (masks or {}).get(name, {}).get("weight")
        out[name] = int(mask.detach().ne(0).sum().item()) if mask is not None and count else count
    return out


def relative_sparsity(origin_sparsity: float, removed: float) -> float:
    """Sparsity to ask of a compact model so that the original model reaches ``origin_sparsity``.

    ``removed`` is the fraction of the original weights already physically gone. The
    result is clamped to [0, 1): a layer already past its target is left alone.
    """
    if removed >= 1.0:
        return 0.0
    value = (origin_sparsity - removed) / (1.0 - removed)
    return min(max(0.0, value), _MAX_SPARSITY)


def compute_sparsity(
    origin_model: nn.Module,
    compact_model: nn.Module,
    compact_model_masks: Masks | None,
    config_list: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Per canonical entry: (current2origin, compact2origin, compact2compact) sparsities.

    - current2origin: fraction of the original weights removed or masked now;
    - compact2origin: fraction of the original weights physically removed (speedup);
    - compact2compact: fraction of the compact model's weights that are masked.
    Each is a list of ``{"op_names": [...], "total_sparsity": x}`` aligned with
    ``config_list`` (NNI's ``compute_sparsity`` shape).
    """
    current2origin, compact2origin, compact2compact = [], [], []
    for entry in config_list:
        names = list(entry["op_names"])
        origin = sum(layer_weight_counts(origin_model, names).values())
        compact = sum(layer_weight_counts(compact_model, names).values())
        kept = sum(layer_kept_counts(compact_model, compact_model_masks, names).values())
        current2origin.append({"op_names": names, "total_sparsity": 1 - kept / origin if origin else 0.0})
        compact2origin.append({"op_names": names, "total_sparsity": 1 - compact / origin if origin else 0.0})
        compact2compact.append({"op_names": names, "total_sparsity": 1 - kept / compact if compact else 0.0})
    return current2origin, compact2origin, compact2compact


def removed_fraction(origin_model: nn.Module, model: nn.Module, masks: Masks | None,
                     names: Iterable[str]) -> float:
    """Fraction of the original selected weights that are gone (removed or masked)."""
    names = list(names)
    origin = sum(layer_weight_counts(origin_model, names).values())
    kept = sum(layer_kept_counts(model, masks, names).values())
    return 1.0 - kept / origin if origin else 0.0
