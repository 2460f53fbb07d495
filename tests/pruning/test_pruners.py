"""One-shot pruners: ranking, counting per mode, dependency-aware coupling, NNI contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.pruning.models import build, dummy_input
from tests.pruning.models import conv_linear_net as _net
from tune_prune.errors import ConfigError, PrunerError
from tune_prune.pruning.masks import is_wrapped
from tune_prune.pruning.pruners import (
    FPGMPruner,
    L1NormPruner,
    L2NormPruner,
    LevelPruner,
    Pruner,
    get_pruner_class,
)

CHANNEL_PRUNERS = [L1NormPruner, L2NormPruner, FPGMPruner]


def _direct_metric(cls: type[Pruner], w: torch.Tensor) -> torch.Tensor:
    """The pruner's criterion computed straight from the definition (NNI_V2_SEMANTICS)."""
    if cls is LevelPruner:
        return w.abs()
    rows = w.reshape(w.size(0), -1).double()
    if cls is L1NormPruner:
        return rows.abs().sum(1)
    if cls is L2NormPruner:
        return rows.pow(2).sum(1).sqrt()
    n = rows.size(0)
    return torch.stack(
        [sum((rows[i] - rows[j]).pow(2).sum().sqrt() for j in range(n)) for i in range(n)]
    )


def _unit_keep(mask: torch.Tensor, channel: bool) -> torch.Tensor:
    return mask.reshape(mask.size(0), -1)[:, 0].bool() if channel else mask.bool()


@pytest.mark.parametrize("cls", [LevelPruner, *CHANNEL_PRUNERS])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.75])
def test_normal_mode_prunes_lowest_ranked_units(cls: type[Pruner], sparsity: float) -> None:
    model = _net()
    weights = {
        n: m.weight.detach().clone() for n, m in model.named_modules() if hasattr(m, "weight")
    }
    pruner = cls(model, [{"op_types": ["Conv2d", "Linear"], "sparsity": sparsity}])
    _, masks = pruner.compress()
    assert set(masks) == {"0", "2", "4", "5"}
    for name, w in weights.items():
        metric = _direct_metric(cls, w).reshape(-1)
        keep = _unit_keep(masks[name]["weight"], cls is not LevelPruner).reshape(-1)
        n = metric.numel()
        assert int((~keep).sum()) == int(sparsity * n)
        assert metric[~keep].max() <= metric[keep].min()
        assert masks[name]["weight"].shape == w.shape


def test_pruned_filter_zeroes_weight_and_bias_and_level_masks_weight_only() -> None:
    model = _net()
    _, masks = L1NormPruner(model, [{"op_names": ["0"], "sparsity": 0.5}]).compress()
    keep = masks["0"]["weight"].reshape(10, -1)
    assert torch.equal(keep.amin(1), keep.amax(1))  # whole filters
    assert torch.equal(masks["0"]["bias"], keep[:, 0])
    assert "bias" not in masks.get("2", {})  # conv without bias
    assert torch.all(model[0].bias[masks["0"]["bias"] == 0] == 0)
    _, level_masks = LevelPruner(_net(), [{"op_names": ["0"], "sparsity": 0.5}]).compress()
    assert set(level_masks["0"]) == {"weight"}


def test_total_sparsity_in_normal_mode_is_uniform_per_layer() -> None:
    _, masks = L1NormPruner(_net(), [{"op_types": ["Conv2d"], "total_sparsity": 0.5}]).compress()
    assert _unit_keep(masks["0"]["weight"], True).sum() == 5
    assert _unit_keep(masks["2"]["weight"], True).sum() == 6


def test_global_mode_counts_weight_elements_and_uses_one_threshold() -> None:
    model = _net()
    cfg = [{"op_types": ["Conv2d", "Linear"], "total_sparsity": 0.6}]
    _, masks = L1NormPruner(model, cfg, mode="global").compress()
    total = sum(m["weight"].numel() for m in masks.values())
    pruned = sum(int((m["weight"] == 0).sum()) for m in masks.values())
    biggest_unit = max(m["weight"][0].numel() for m in masks.values())
    assert int(0.6 * total) <= pruned < int(0.6 * total) + biggest_unit
    kept_metrics, pruned_metrics = [], []
    for name, per in masks.items():
        metric = _direct_metric(L1NormPruner, dict(model.named_modules())[name].weight.detach())
        keep = _unit_keep(per["weight"], True)
        kept_metrics.append(metric[keep])
        pruned_metrics.append(metric[~keep])
        n = keep.numel()
        assert int(keep.sum()) >= n - int(0.99 * n)
    # one threshold, except where the per-layer cap protects a layer's best units
    assert torch.cat(pruned_metrics).max() <= torch.cat(kept_metrics).max()


def _two_layers() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    with torch.no_grad():
        model[0].weight.copy_(torch.rand(10, 10) * 0.01 + 0.001)  # all smaller than layer 1
        model[1].weight.copy_(torch.rand(10, 10) + 1.0)
    return model


def test_global_mode_level_is_exact_and_cap_protects_a_small_layer() -> None:
    model = _two_layers()
    cfg = [{"op_types": ["Linear"], "total_sparsity": 0.5, "max_sparsity_per_layer": {"0": 0.3}}]
    _, masks = LevelPruner(model, cfg, mode="global").compress()
    pruned0 = int((masks["0"]["weight"] == 0).sum())
    pruned1 = int((masks["1"]["weight"] == 0).sum())
    assert pruned0 == 30  # capped at int(0.3 * 100)
    assert pruned0 + pruned1 == 100  # the rest of the total comes from the other layer
    both = [{"op_types": ["Linear"], "total_sparsity": 0.5, "max_sparsity_per_layer": 0.3}]
    _, masks = LevelPruner(_two_layers(), both, mode="global").compress()
    assert [int((masks[n]["weight"] == 0).sum()) for n in ("0", "1")] == [30, 30]
    # without the cap, the small layer goes first
    _, masks = LevelPruner(
        _two_layers(), [{"op_types": ["Linear"], "total_sparsity": 0.5}], mode="global"
    ).compress()
    assert int((masks["0"]["weight"] == 0).sum()) == 99  # default cap 0.99 keeps 1 element


def test_balance_mode_prunes_int_sparsity_per_bank() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(12, 6), nn.Conv2d(2, 4, (2, 4)))
    cfg = [{"op_types": ["Linear", "Conv2d"], "sparsity": 0.6}]
    _, masks = LevelPruner(model, cfg, mode="balance", balance_gran=[4]).compress()
    banks = masks["0"]["weight"].reshape(6, 3, 4)
    assert torch.all((banks == 0).sum(-1) == int(0.6 * 4))
    w = model[0].weight.detach().reshape(6, 3, 4).abs()
    pruned_max = torch.where(banks == 0, w, torch.zeros_like(w)).amax(-1)
    kept_min = torch.where(banks == 1, w, torch.full_like(w, 1e9)).amin(-1)
    assert torch.all(pruned_max <= kept_min)
    conv_banks = masks["1"]["weight"].reshape(4, 2, 2, 4)
    assert torch.all((conv_banks == 0).sum(-1) == 2)
    # two-dim granularity: 2x4 blocks over the conv's kernel
    _, masks = LevelPruner(
        nn.Sequential(nn.Conv2d(2, 4, (2, 4))),
        [{"op_types": ["Conv2d"], "sparsity": 0.5}],
        mode="balance",
        balance_gran=[2, 4],
    ).compress()
    assert torch.all((masks["0"]["weight"] == 0).sum((-1, -2)) == 4)


def test_balance_mode_errors() -> None:
    cfg = [{"op_types": ["Linear"], "sparsity": 0.5}]
    with pytest.raises(ConfigError, match="balance_gran"):
        LevelPruner(nn.Sequential(nn.Linear(10, 6)), cfg, mode="balance")
    with pytest.raises(ConfigError, match=r"balance_gran=\[4\]"):
        LevelPruner(nn.Sequential(nn.Linear(10, 6)), cfg, mode="balance", balance_gran=[4])


# ------------------------------------------------------------- dependency-aware
def _keep(masks: dict, name: str) -> list[int]:
    return _unit_keep(masks[name]["weight"], True).int().tolist()


@pytest.mark.parametrize("cls", CHANNEL_PRUNERS)
def test_dependency_aware_residual_concat_depthwise(cls: type[Pruner]) -> None:
    cfg = [{"op_types": ["Conv2d"], "sparsity": 0.5}]
    _, m = cls(build("residual"), cfg, "dependency_aware", dummy_input("residual")).compress()
    assert _keep(m, "conv1") == _keep(m, "layer1.conv2")
    assert _keep(m, "layer2.conv2") == _keep(m, "layer2.shortcut.0")
    assert sum(_keep(m, "conv1")) == 4 and sum(_keep(m, "layer2.conv2")) == 8

    _, m = cls(build("concat"), cfg, "dependency_aware", dummy_input("concat")).compress()
    c = _keep(m, "branch_c")
    assert _keep(m, "branch_a") == c[:4] and _keep(m, "branch_b") == c[4:]
    assert sum(c) == 5

    _, m = cls(build("depthwise"), cfg, "dependency_aware", dummy_input("depthwise")).compress()
    assert _keep(m, "conv1") == _keep(m, "dw") and sum(_keep(m, "dw")) == 4


def test_dependency_aware_group_metric_is_sum_and_min_sparsity() -> None:
    model = build("residual")
    cfg = [
        {"op_names": ["conv1"], "sparsity": 0.75},
        {"op_names": ["layer1.conv2"], "sparsity": 0.5},
    ]
    w = {n: dict(model.named_modules())[n].weight.detach() for n in ("conv1", "layer1.conv2")}
    fused = sum(_direct_metric(L1NormPruner, x) for x in w.values())
    _, m = L1NormPruner(
        model, cfg, mode="dependency_aware", dummy_input=dummy_input("residual")
    ).compress()
    keep = torch.tensor(_keep(m, "conv1")).bool()
    assert keep.tolist() == _keep(m, "layer1.conv2")
    assert int((~keep).sum()) == int(8 * 0.5)  # min member sparsity
    assert fused[~keep].max() <= fused[keep].min()


def test_dependency_aware_group_conv_prunes_equally_per_group() -> None:
    cfg = [{"op_types": ["Conv2d"], "sparsity": 0.5}]
    _, m = L1NormPruner(
        build("groupconv"), cfg, "dependency_aware", dummy_input("groupconv")
    ).compress()
    for name in ("conv1", "gconv"):
        keep = _keep(m, name)
        assert sum(keep[:4]) == 2 and sum(keep[4:]) == 2


def test_dependency_aware_needs_dummy_input() -> None:
    with pytest.raises(PrunerError, match="dummy_input"):
        L1NormPruner(
            build("residual"), [{"op_types": ["Conv2d"], "sparsity": 0.5}], mode="dependency_aware"
        )


# --------------------------------------------------------------- NNI contract
def _train(model: nn.Module, steps: int = 20) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x = torch.randn(4, 3, 8, 8)
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("name", ["level", "l1"])
def test_masks_survive_training_and_unwrap_keeps_model(name: str) -> None:
    model = _net().train()
    classes = {n: type(m) for n, m in model.named_modules()}
    pruner = get_pruner_class(name)(model, [{"op_types": ["Conv2d", "Linear"], "sparsity": 0.5}])
    returned, masks = pruner.compress()
    assert returned is model and pruner.bound_model is model
    _train(model)
    for n, per in masks.items():
        for pname, mask in per.items():
            assert torch.all(getattr(dict(model.named_modules())[n], pname)[mask == 0] == 0)
    pruner._unwrap_model()
    assert not is_wrapped(model)
    assert {n: type(m) for n, m in model.named_modules()} == classes
    for n, per in masks.items():
        assert torch.all(dict(model.named_modules())[n].weight[per["weight"] == 0] == 0)
        assert int((dict(model.named_modules())[n].weight == 0).sum()) >= int(
            (per["weight"] == 0).sum()
        )


def test_load_masks_reapplies_and_targets_are_cumulative() -> None:
    model = _net()
    cfg = [{"op_types": ["Conv2d"], "sparsity": 0.5}]
    _, first = L1NormPruner(model, cfg).compress()
    fresh = _net()
    pruner = L1NormPruner(fresh, [{"op_types": ["Conv2d"], "sparsity": 0.7}])
    pruner.load_masks(first)
    assert torch.all(fresh[0].weight[first["0"]["weight"] == 0] == 0)
    assert set(pruner.get_masks()) == {"0", "2"}
    _, second = pruner.compress()
    for n in ("0", "2"):
        old = _unit_keep(first[n]["weight"], True)
        new = _unit_keep(second[n]["weight"], True)
        assert not torch.any(new & ~old)  # pruned stays pruned
        assert int((~new).sum()) == int(0.7 * new.numel())  # fraction of the original layer
    # a lower target than what is already pruned never un-prunes
    again = L1NormPruner(_net(), [{"op_types": ["Conv2d"], "sparsity": 0.2}])
    again.load_masks(second)
    _, third = again.compress()
    assert torch.equal(third["0"]["weight"], second["0"]["weight"])


def test_loaded_masks_of_unselected_modules_are_kept() -> None:
    model = _net()
    _, first = L1NormPruner(model, [{"op_names": ["4"], "sparsity": 0.5}]).compress()
    pruner = L1NormPruner(_net(), [{"op_names": ["0"], "sparsity": 0.5}])
    pruner.load_masks(first)
    _, masks = pruner.compress()
    assert set(masks) == {"0", "4"} and torch.equal(masks["4"]["weight"], first["4"]["weight"])


def test_reset_rebinds_and_unbound_pruner_raises() -> None:
    unbound = L1NormPruner(None, None)
    assert unbound.bound_model is None
    with pytest.raises(PrunerError, match="reset"):
        unbound.compress()
    with pytest.raises(PrunerError):
        unbound.load_masks({})
    a, b = _net(), _net()
    pruner = L1NormPruner(a, [{"op_types": ["Conv2d"], "sparsity": 0.5}])
    pruner.compress()
    assert is_wrapped(a)
    cfg = [{"op_types": ["Linear"], "sparsity": 0.25}]
    pruner.reset(b, cfg)
    assert not is_wrapped(a) and pruner.bound_model is b and pruner.config_list is cfg
    assert pruner.get_masks() == {}
    returned, masks = pruner.compress()
    assert returned is b and set(masks) == {"4", "5"}
    unbound.reset(b, cfg)
    assert set(unbound.compress()[1]) == {"4", "5"}
    pruner.reset()
    assert pruner.bound_model is None and not is_wrapped(b)


def test_nni_positional_constructors_and_errors() -> None:
    cfg = [{"op_types": ["Conv2d"], "sparsity": 0.5}]
    p = L1NormPruner(build("residual"), cfg, "dependency_aware", dummy_input("residual"))
    assert p.mode == "dependency_aware"
    p = LevelPruner(
        nn.Sequential(nn.Linear(8, 4)), [{"op_types": ["Linear"], "sparsity": 0.5}], "balance", [4]
    )
    assert p.balance_gran == [4]
    with pytest.raises(ConfigError, match="mode='balance'"):
        L1NormPruner(_net(), cfg, mode="balance")
    with pytest.raises(ConfigError, match="BatchNorm2d"):
        L2NormPruner(build("residual"), [{"op_types": ["BatchNorm2d"], "sparsity": 0.5}])
    with pytest.raises(ConfigError, match="Embedding"):
        FPGMPruner(
            nn.Sequential(nn.Embedding(5, 4)), [{"op_types": ["Embedding"], "sparsity": 0.5}]
        )
    # "default" means the pruner's own default types: a BN/Embedding in the model is fine
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 4))
    _, masks = L1NormPruner(model, [{"op_types": ["default"], "sparsity": 0.5}]).compress()
    assert set(masks) == {"1"}


def test_show_pruned_weights_and_registry(caplog: pytest.LogCaptureFixture) -> None:
    pruner = L1NormPruner(_net(), [{"op_types": ["Conv2d"], "sparsity": 0.5}])
    pruner.compress()
    with caplog.at_level("INFO"):
        counts = pruner.show_pruned_weights()
    assert counts == {"0": (5, 10), "2": (6, 12)}
    assert "simulated prune 0 remain/total: 5/10" in caplog.text
    assert get_pruner_class("l1") is L1NormPruner and get_pruner_class("LEVEL") is LevelPruner
    with pytest.raises(ConfigError, match="known: level, l1"):
        get_pruner_class("nope")
