"""Sparsity bookkeeping against the ORIGINAL model, so schedules never compound.

Every target in a config_list is a fraction of the original layer. Once a model has
been physically shrunk (speedup), a layer has fewer weights than it had, both because
its own output channels went and because its input channels went with the layer
before it. Only the first is this layer's pruning: counting the second too would
make a channel schedule stall (50% of channels removes ~75% of a middle conv's
weights). So what is already gone is measured in output rows of the original layer
(times the unmasked fraction of what remains), and the pruner is asked only for the
rest, ``(s - c) / (1 - c)``, which keeps the schedule on target without compounding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tune_prune.pruning.masks import Masks

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


def _weight(model_modules: Mapping[str, nn.Module], name: str) -> torch.Tensor | None:
    weight = getattr(model_modules.get(name), "weight", None)
    return weight if isinstance(weight, torch.Tensor) else None


def layer_kept_fractions(origin_model: nn.Module, model: nn.Module, masks: Masks | None,
                         names: Iterable[str]) -> dict[str, tuple[float, float]]:
    """Per layer: (kept fraction of its own units, kept fraction of its original weights).

    The first counts what the layer's own pruning removed, in the units its sparsity
    is defined in: output rows physically removed (speedup), times the fraction of the
    compact layer's weights not masked. Input channels removed because the layer
    *before* lost outputs do not count (they are the other layer's pruning). The second
    counts every original weight that is gone, for reporting.
    """
    origin_modules = dict(origin_model.named_modules())
    modules = dict(model.named_modules())
    out: dict[str, tuple[float, float]] = {}
    for name in names:
        origin_w, weight = _weight(origin_modules, name), _weight(modules, name)
        if origin_w is None or origin_w.numel() == 0:
            continue
        if weight is None or weight.numel() == 0:
            out[name] = (0.0, 0.0)
            continue
        mask = (masks or {}).get(name, {}).get("weight")
        unmasked = float(mask.detach().ne(0).float().mean()) if mask is not None else 1.0
        rows = weight.shape[0] / origin_w.shape[0] if weight.dim() else 1.0
        out[name] = (rows * unmasked, weight.numel() * unmasked / origin_w.numel())
    return out


def _entry_sparsity(origin_model: nn.Module, model: nn.Module, masks: Masks | None,
                    names: Sequence[str], which: int) -> float:
    """Weighted by original weight counts: 1 - kept, with ``which`` picking the measure."""
    counts = layer_weight_counts(origin_model, names)
    fractions = layer_kept_fractions(origin_model, model, masks, names)
    total = sum(counts[n] for n in fractions)
    if not total:
        return 0.0
    return 1.0 - sum(counts[n] * f[which] for n, f in fractions.items()) / total


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

    - current2origin: fraction of the entry's original units removed or masked now;
    - compact2origin: fraction of them physically removed (speedup);
    - compact2compact: fraction of the compact layers' weights that are masked.
    Units are the ones the config's sparsity is defined in (see
    :func:`layer_kept_fractions`). Each is a list of ``{"op_names", "total_sparsity"}``
    aligned with ``config_list`` (NNI's ``compute_sparsity`` shape).
    """
    current2origin, compact2origin, compact2compact = [], [], []
    for entry in config_list:
        names = list(entry["op_names"])
        current = _entry_sparsity(origin_model, compact_model, compact_model_masks, names, 0)
        removed = _entry_sparsity(origin_model, compact_model, None, names, 0)
        compact = sum(layer_weight_counts(compact_model, names).values())
        masked = sum(
            int(mask.eq(0).sum())
            for n in names
            if (mask := (compact_model_masks or {}).get(n, {}).get("weight")) is not None
        )
        current2origin.append({"op_names": names, "total_sparsity": current})
        compact2origin.append({"op_names": names, "total_sparsity": removed})
        compact2compact.append({"op_names": names, "total_sparsity": masked / compact if compact else 0.0})
    return current2origin, compact2origin, compact2compact


def removed_fraction(origin_model: nn.Module, model: nn.Module, masks: Masks | None,
                     names: Iterable[str]) -> float:
    """Fraction of the selected layers' original units gone (removed or masked).

    This is the sparsity a config_list's targets are defined in; it does not count a
    layer's input channels removed because the layer before it lost outputs.
    """
    return _entry_sparsity(origin_model, model, masks, list(names), 0)


def removed_weight_fraction(origin_model: nn.Module, model: nn.Module, masks: Masks | None,
                            names: Iterable[str]) -> float:
    """Fraction of the selected layers' original weights gone, input-channel losses included."""
    return _entry_sparsity(origin_model, model, masks, list(names), 1)
