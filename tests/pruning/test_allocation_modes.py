"""LevelPruner's layer-adaptive modes beyond NNI: ``lamp`` (LAMP scores) and ``erk`` (ERK)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.pruning.models import conv_linear_net as _net
from tune_prune.errors import ConfigError
from tune_prune.pruning.pruners import (
    FPGMPruner,
    L1NormPruner,
    L2NormPruner,
    LevelPruner,
    allocation,
)
from tune_prune.pruning.pruners.registry import PRUNERS

MODES = ("lamp", "erk")


def _cfg(total: float, **extra: object) -> list[dict[str, object]]:
    return [{"op_types": ["Conv2d", "Linear"], "total_sparsity": total, **extra}]


LAYERS = ("0", "2", "4", "5")


def _pruned(masks: dict, name: str) -> int:
    return int((masks[name]["weight"] == 0).sum())


def _total(masks: dict) -> tuple[int, int]:
    pruned = sum(_pruned(masks, n) for n in LAYERS)
    total = sum(masks[n]["weight"].numel() for n in LAYERS)
    return pruned, total


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    return {n: modules[n].weight.detach().clone() for n in LAYERS}


def _prunes_smallest_per_layer(masks: dict, weights: dict[str, torch.Tensor]) -> None:
    for name, w in weights.items():
        keep = masks[name]["weight"].bool()
        if bool((~keep).any()) and bool(keep.any()):
            assert w.abs()[~keep].max() <= w.abs()[keep].min()


# ------------------------------------------------------------- exact totals
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("target", [0.1, 0.5, 0.8, 0.95, 0.98])
def test_exact_overall_sparsity_and_smallest_weights_per_layer(mode: str, target: float) -> None:
    model = _net()
    weights = _weights(model)
    _, masks = LevelPruner(model, _cfg(target), mode=mode).compress()
    pruned, total = _total(masks)
    assert pruned == int(target * total)
    _prunes_smallest_per_layer(masks, weights)
    for name in LAYERS:  # every layer keeps something (LAMP: score 1; ERK: density > 0)
        assert bool(masks[name]["weight"].bool().any())


# --------------------------------------------------------------------- LAMP
def _tiny() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(3, 1, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0, 3.0]]))
        model[1].weight.copy_(torch.tensor([[0.1, -0.2], [0.3, 0.4]]))
    return model


def test_lamp_scores_by_hand() -> None:
    # squares 1, 4, 9: suffix sums 14, 13, 9
    a = allocation.lamp_scores(torch.tensor([[1.0, 2.0, 3.0]]))
    assert torch.allclose(a, torch.tensor([[1 / 14, 4 / 13, 1.0]], dtype=torch.float64))
    # squares .01, .04, .09, .16: suffix sums .30, .29, .25, .16
    b = allocation.lamp_scores(torch.tensor([[0.4, 0.2], [0.1, 0.3]]))
    expect = torch.tensor([[1.0, 4 / 29], [1 / 30, 9 / 25]], dtype=torch.float64)
    assert torch.allclose(b, expect)
    assert b.max().item() == 1.0
    # previously pruned elements stay -inf and are left out of the sums
    c = allocation.lamp_scores(torch.tensor([0.5, float("-inf"), 0.2, 0.0]))
    assert c[1].item() == float("-inf")
    assert torch.allclose(c[[0, 2, 3]], torch.tensor([1.0, 0.04 / 0.29, 0.0], dtype=torch.float64))
    # all survivors zero: the top one still scores 1
    z = allocation.lamp_scores(torch.tensor([0.0, 0.0, float("-inf")]))
    assert sorted(z.tolist()) == [float("-inf"), 0.0, 1.0]


def test_lamp_global_ranking_by_hand() -> None:
    # scores: A [1/14, 4/13, 1], B [1/30, 4/29, 9/25, 1] -> order B0, A0, B1, A1, B2, ...
    cfg = [{"op_types": ["Linear"], "total_sparsity": 0.5}]  # int(3.5) = 3 of 7
    _, masks = LevelPruner(_tiny(), cfg, mode="lamp").compress()
    assert masks["0"]["weight"].tolist() == [[0.0, 1.0, 1.0]]
    assert masks["1"]["weight"].tolist() == [[0.0, 0.0], [1.0, 1.0]]
    # plain global magnitude would take B's three smallest instead
    _, glob = LevelPruner(_tiny(), cfg, mode="global").compress()
    assert glob["0"]["weight"].tolist() == [[1.0, 1.0, 1.0]]
    cfg = [{"op_types": ["Linear"], "total_sparsity": 0.6}]  # int(4.2) = 4: A1 next
    _, masks = LevelPruner(_tiny(), cfg, mode="lamp").compress()
    assert masks["0"]["weight"].tolist() == [[0.0, 0.0, 1.0]]
    assert masks["1"]["weight"].tolist() == [[0.0, 0.0], [1.0, 1.0]]


def _lopsided() -> nn.Sequential:
    """A 2-weight layer far smaller in magnitude than a 1000-weight layer."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(2, 1, bias=False), nn.Linear(100, 10, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1e-6, 2e-6]]))
        model[1].weight.copy_(torch.rand(10, 100) + 0.5)
    return model


def test_lamp_never_prunes_a_layer_entirely() -> None:
    # cap 1.0: nothing protects the small layer except LAMP's score of 1
    cfg = [{"op_types": ["Linear"], "total_sparsity": 0.98, "max_sparsity_per_layer": 1.0}]
    _, glob = LevelPruner(_lopsided(), cfg, mode="global").compress()
    assert _pruned(glob, "0") == 2  # magnitude alone wipes the small layer out
    _, masks = LevelPruner(_lopsided(), cfg, mode="lamp").compress()
    # LAMP: the small layer scores 1/5 and 1, the big one's k-th largest about 1/k, so
    # the 21 survivors of the 1002 are the small layer's two and the big layer's top 19
    assert _pruned(masks, "0") == 0 and _pruned(masks, "1") == int(0.98 * 1002)
    # the most extreme target still leaves each layer its top weight
    cfg[0]["total_sparsity"] = 0.999  # int(1000.998) = 1000 = all but the two tops
    _, masks = LevelPruner(_lopsided(), cfg, mode="lamp").compress()
    assert [int(masks[n]["weight"].sum()) for n in ("0", "1")] == [1, 1]


def test_lamp_is_invariant_to_a_layer_scale() -> None:
    model, scaled = _net(), _net()
    with torch.no_grad():
        scaled[2].weight.mul_(1e-3)
        scaled[4].weight.mul_(50.0)
    _, a = LevelPruner(model, _cfg(0.9), mode="lamp").compress()
    _, b = LevelPruner(scaled, _cfg(0.9), mode="lamp").compress()
    for n in LAYERS:
        assert torch.equal(a[n]["weight"], b[n]["weight"])


# ---------------------------------------------------------------------- ERK
def _two_linear() -> nn.Sequential:
    torch.manual_seed(4)
    return nn.Sequential(nn.Linear(100, 10, bias=False), nn.Linear(10, 10, bias=False))


def test_erk_allocation_by_hand() -> None:
    # A: 10x100 (n 1000, dims sum 110), B: 10x10 (n 100, sum 20); total 1100.
    # 0.5: keep 550 = eps * (110 + 20) -> eps = 550/130: A 465.38, B 84.62;
    # floors 465 + 84 = 549, the larger remainder (B) takes the last one.
    model = _two_linear()
    weights = {n: m.weight.detach().clone() for n, m in model.named_children()}
    cfg = [{"op_types": ["Linear"], "total_sparsity": 0.5}]
    _, masks = LevelPruner(model, cfg, mode="erk").compress()
    assert [int(masks[n]["weight"].sum()) for n in ("0", "1")] == [465, 85]
    # densities proportional to sum/prod: 0.465 vs 0.85 ~ 0.11 : 0.2
    assert math.isclose((465.38 / 1000) / (84.62 / 100), 0.11 / 0.2, rel_tol=1e-3)
    for n, w in weights.items():
        keep = masks[n]["weight"].bool()
        assert w.abs()[~keep].max() <= w.abs()[keep].min()
    caps = {"0": 0.99, "1": 0.99}
    assert allocation.erk_kept({"0": (10, 100), "1": (10, 10)}, 0.5, caps) == {"0": 465, "1": 85}
    # conv: kept proportional to out + in + kh + kw
    shapes = {"c": (8, 3, 3, 3), "l": (10, 200)}  # sums 17 and 210, n 216 and 2000
    kept = allocation.erk_kept(shapes, 0.9, {"c": 0.99, "l": 0.99})
    goal = 2216 - int(0.9 * 2216)
    assert sum(kept.values()) == goal
    eps = goal / (17 + 210)
    assert abs(kept["c"] - 17 * eps) < 1 and abs(kept["l"] - 210 * eps) < 1


def test_erk_dense_capping() -> None:
    # 0.2: keep 880, eps = 880/130 = 6.77 -> B would keep 135 > 100: B dense, A keeps 780
    cfg = [{"op_types": ["Linear"], "total_sparsity": 0.2}]
    _, masks = LevelPruner(_two_linear(), cfg, mode="erk").compress()
    assert _pruned(masks, "1") == 0 and _pruned(masks, "0") == 220
    # three layers: the two small ones cap, the re-solve puts everything on the big one
    kept = allocation.erk_kept(
        {"big": (50, 400), "s1": (4, 4), "s2": (3, 5)}, 0.3, {"big": 0.99, "s1": 0.99, "s2": 0.99}
    )
    total = 20000 + 16 + 15
    assert kept == {"big": total - int(0.3 * total) - 31, "s1": 16, "s2": 15}


def test_erk_max_sparsity_per_layer() -> None:
    # A capped at 0.3 (keeps >= 700) and B at the default 0.99 (keeps >= 1): only
    # 300 + 99 = 399 of the 550 can go, both layers stop at their caps
    cfg = [{"op_types": ["Linear"], "total_sparsity": 0.5, "max_sparsity_per_layer": {"0": 0.3}}]
    _, masks = LevelPruner(_two_linear(), cfg, mode="erk").compress()
    assert (_pruned(masks, "0"), _pruned(masks, "1")) == (300, 99)
    # a cap that still allows the target: the other layer absorbs the remainder exactly
    cfg = [{"op_types": ["Linear"], "total_sparsity": 0.3, "max_sparsity_per_layer": {"0": 0.3}}]
    _, masks = LevelPruner(_two_linear(), cfg, mode="erk").compress()
    assert (_pruned(masks, "0"), _pruned(masks, "1")) == (300, 30)
    # uncapped, ERK at 0.3 prunes more of A: keep 770 -> eps 5.92, B would keep 118.5
    # (dense), A keeps 670
    free = [{"op_types": ["Linear"], "total_sparsity": 0.3}]
    _, masks = LevelPruner(_two_linear(), free, mode="erk").compress()
    assert (_pruned(masks, "0"), _pruned(masks, "1")) == (330, 0)


def test_lamp_max_sparsity_per_layer() -> None:
    _, free = LevelPruner(_net(), _cfg(0.45), mode="lamp").compress()
    assert _pruned(free, "4") > 1152  # uncapped, LAMP prunes the big linear beyond 30%
    cap = {"4": 0.3}
    _, masks = LevelPruner(_net(), _cfg(0.45, max_sparsity_per_layer=cap), mode="lamp").compress()
    assert _pruned(masks, "4") == int(0.3 * 3840)
    pruned, total = _total(masks)
    assert pruned == int(0.45 * total)  # the other layers absorb the rest
    # a target the caps forbid: every layer stops at its cap (default 0.99 elsewhere)
    _, masks = LevelPruner(_net(), _cfg(0.9, max_sparsity_per_layer=cap), mode="lamp").compress()
    caps = {"0": 0.99, "2": 0.99, "4": 0.3, "5": 0.99}
    for n in LAYERS:
        assert _pruned(masks, n) == int(caps[n] * masks[n]["weight"].numel())


# ---------------------------------------------------------------- iterative
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("first", "s1", "s2"),
    # normal 0.8 then 0.85: layer "5" has 20 survivors where ERK alone would keep 70
    [("same", 0.5, 0.9), ("normal", 0.5, 0.9), ("normal", 0.8, 0.85)],
)
def test_iterative_keeps_old_pruned_and_reaches_new_target(
    mode: str, first: str, s1: float, s2: float
) -> None:
    model = _net()
    first_mode = mode if first == "same" else "normal"
    _, m1 = LevelPruner(model, _cfg(s1), mode=first_mode).compress()
    again = LevelPruner(model, _cfg(s2), mode=mode)
    again.load_masks(m1)
    _, m2 = again.compress()
    for n in LAYERS:
        assert not torch.any(m2[n]["weight"].bool() & ~m1[n]["weight"].bool())
    pruned, total = _total(m2)
    assert pruned == int(s2 * total)
    # masked weights are zero in the model; the rest are pruned by magnitude per layer
    modules = dict(model.named_modules())
    for n in LAYERS:
        assert torch.all(modules[n].weight[m2[n]["weight"] == 0] == 0)
    # a lower target than what is already pruned never un-prunes
    back = LevelPruner(model, _cfg(0.3), mode=mode)
    back.load_masks(m2)
    _, m3 = back.compress()
    for n in LAYERS:
        assert torch.equal(m3[n]["weight"], m2[n]["weight"])


def test_iterative_erk_equals_one_shot() -> None:
    model = _net()
    _, m1 = LevelPruner(model, _cfg(0.5), mode="erk").compress()
    again = LevelPruner(model, _cfg(0.9), mode="erk")
    again.load_masks(m1)
    _, m2 = again.compress()
    _, once = LevelPruner(_net(), _cfg(0.9), mode="erk").compress()
    for n in LAYERS:
        assert torch.equal(m2[n]["weight"], once[n]["weight"])


def test_iterative_lamp_rescores_survivors_only() -> None:
    # pruned weights leave the sums: after pruning, a layer's survivors score higher
    model = _net()
    w = model[2].weight.detach().abs()
    _, m1 = LevelPruner(model, _cfg(0.5), mode="lamp").compress()
    metric = torch.where(m1["2"]["weight"] == 0, float("-inf"), w)
    rescored = allocation.lamp_scores(metric)
    fresh = allocation.lamp_scores(w)
    alive = m1["2"]["weight"].bool()
    assert torch.all(rescored[~alive] == float("-inf"))
    assert torch.all(rescored[alive] >= fresh[alive])
    assert rescored.max().item() == 1.0


# --------------------------------------------------------- per-layer entries
@pytest.mark.parametrize("mode", MODES)
def test_sparsity_entries_are_one_layer_allocations_like_global(mode: str) -> None:
    cfg = [{"op_types": ["Conv2d", "Linear"], "sparsity": 0.6}]
    _, masks = LevelPruner(_net(), cfg, mode=mode).compress()
    _, glob = LevelPruner(_net(), cfg, mode="global").compress()
    for n in LAYERS:
        assert _pruned(masks, n) == int(0.6 * masks[n]["weight"].numel())
        assert torch.equal(masks[n]["weight"], glob[n]["weight"])
    # two total_sparsity entries: each is its own allocation
    cfg = [
        {"op_types": ["Conv2d"], "total_sparsity": 0.5},
        {"op_types": ["Linear"], "total_sparsity": 0.9},
    ]
    _, masks = LevelPruner(_net(), cfg, mode=mode).compress()
    assert _pruned(masks, "0") + _pruned(masks, "2") == int(0.5 * 1350)
    assert _pruned(masks, "4") + _pruned(masks, "5") == int(0.9 * 3940)


# ------------------------------------------------------------------- errors
def test_bad_mode_and_channel_pruners_reject_element_modes() -> None:
    with pytest.raises(ConfigError, match=r"mode='lampp'.*lamp, erk"):
        LevelPruner(_net(), _cfg(0.5), mode="lampp")
    for cls in (L1NormPruner, L2NormPruner, FPGMPruner):
        for mode in MODES:
            with pytest.raises(ConfigError, match=f"mode='{mode}'"):
                cls(_net(), _cfg(0.5), mode=mode)
    for name, cls in PRUNERS.items():
        if cls is not LevelPruner:
            assert not set(MODES) & set(cls.modes), name
