"""Property tests: pruned fractions match the requested sparsity at every granularity."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from tune_prune.pruning.pruners import FPGMPruner, L1NormPruner, L2NormPruner, LevelPruner
from tune_prune.pruning.pruners.allocation import balance_allocation, global_allocation

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
sparsities = st.floats(min_value=0.0, max_value=0.95, allow_nan=False)
pruner_classes = st.sampled_from([LevelPruner, L1NormPruner, L2NormPruner, FPGMPruner])


def _layer(kind: str, cout: int, cin: int, k: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "linear":
        return nn.Linear(cin, cout)
    if kind == "conv1d":
        return nn.Conv1d(cin, cout, k)
    return nn.Conv2d(cin, cout, k)


layers = st.builds(
    _layer,
    st.sampled_from(["linear", "conv1d", "conv2d"]),
    st.integers(1, 12),
    st.integers(1, 6),
    st.integers(1, 3),
    st.integers(0, 1000),
)


def _pruned_units(cls: type, mask: torch.Tensor) -> int:
    if cls is LevelPruner:
        return int((mask == 0).sum())
    return int((mask.reshape(mask.size(0), -1).sum(1) == 0).sum())


@FAST
@given(cls=pruner_classes, layer=layers, sparsity=sparsities)
def test_normal_mode_prunes_floor_of_sparsity_units(
    cls: type, layer: nn.Module, sparsity: float
) -> None:
    model = nn.Sequential(layer)
    _, masks = cls(model, [{"op_names": ["0"], "sparsity": sparsity}]).compress()
    mask = masks["0"]["weight"]
    n = mask.numel() if cls is LevelPruner else mask.size(0)
    assert mask.shape == layer.weight.shape
    assert _pruned_units(cls, mask) == int(sparsity * n)


@FAST
@given(cls=pruner_classes, a=layers, b=layers, sparsity=sparsities)
def test_global_mode_meets_total_within_one_unit(
    cls: type, a: nn.Module, b: nn.Module, sparsity: float
) -> None:
    model = nn.Sequential(a, b)  # never run: shapes need not chain
    cfg = [{"op_names": ["0", "1"], "total_sparsity": sparsity}]
    _, masks = cls(model, cfg, mode="global").compress()
    total = a.weight.numel() + b.weight.numel()
    pruned = sum(int((m["weight"] == 0).sum()) for m in masks.values())
    unit = 1 if cls is LevelPruner else max(a.weight[0].numel(), b.weight[0].numel())
    target = int(sparsity * total)
    caps_room = 0
    for layer in (a, b):
        n = layer.weight.numel() if cls is LevelPruner else layer.weight.size(0)
        per_unit = 1 if cls is LevelPruner else layer.weight[0].numel()
        caps_room += int(0.99 * n) * per_unit
        assert n - _pruned_units(cls, masks[str((a, b).index(layer))]["weight"]) >= n - int(
            0.99 * n
        )
    if caps_room >= target:
        assert target <= pruned < target + unit
    else:
        assert pruned == caps_room


@FAST
@given(
    values=st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=30),
    split=st.integers(0, 30),
    sparsity=sparsities,
    cap=st.one_of(st.floats(0.05, 1.0), st.just(1.0)),
)
def test_global_allocation_threshold_and_cap(
    values: list[float], split: int, sparsity: float, cap: float
) -> None:
    split = min(split, len(values))
    metrics = {"a": torch.tensor(values[:split]), "b": torch.tensor(values[split:])}
    keeps = global_allocation(metrics, {"a": 2, "b": 1}, sparsity, {"a": cap, "b": cap})
    for keep in keeps.values():
        n = keep.numel()
        assert int(keep.sum()) >= n - int(cap * n)
    kept = torch.cat([metrics[n][keeps[n]] for n in metrics])
    pruned = torch.cat([metrics[n][~keeps[n]] for n in metrics])
    if cap == 1.0 and kept.numel() and pruned.numel():
        assert pruned.max() <= kept.min()  # no cap: one threshold over both layers
    total = 2 * split + (len(values) - split)
    target = int(sparsity * total)
    removed = 2 * int((~keeps["a"]).sum()) + int((~keeps["b"]).sum())
    if cap == 1.0:
        assert target <= removed < target + 2


@FAST
@given(
    rows=st.integers(1, 4),
    banks=st.integers(1, 4),
    gran=st.sampled_from([1, 2, 3, 4, 8]),
    sparsity=sparsities,
    seed=st.integers(0, 1000),
)
def test_balance_mode_prunes_int_sparsity_in_every_bank(
    rows: int, banks: int, gran: int, sparsity: float, seed: int
) -> None:
    torch.manual_seed(seed)
    metric = torch.rand(rows, banks * gran)
    keep = balance_allocation("w", metric, sparsity, [gran])
    per_bank = (~keep).reshape(rows, banks, gran).sum(-1)
    assert torch.all(per_bank == int(sparsity * gran))
    m = metric.reshape(rows, banks, gran)
    k = keep.reshape(rows, banks, gran)
    pruned_max = torch.where(~k, m, torch.full_like(m, -1.0)).amax(-1)
    kept_min = torch.where(k, m, torch.full_like(m, 2.0)).amin(-1)
    assert torch.all(pruned_max <= kept_min)


@FAST
@given(cls=pruner_classes, layer=layers, s1=sparsities, s2=sparsities)
def test_iterative_pruning_is_cumulative(cls: type, layer: nn.Module, s1: float, s2: float) -> None:
    s1, s2 = min(s1, s2), max(s1, s2)
    model = nn.Sequential(layer)
    _, first = cls(model, [{"op_names": ["0"], "sparsity": s1}]).compress()
    pruner = cls(model, [{"op_names": ["0"], "sparsity": s2}])
    pruner.load_masks(first)
    _, second = pruner.compress()
    old, new = first["0"]["weight"], second["0"]["weight"]
    assert torch.all(new <= old)  # pruned stays pruned
    n = new.numel() if cls is LevelPruner else new.size(0)
    assert _pruned_units(cls, new) == max(int(s2 * n), _pruned_units(cls, old))
