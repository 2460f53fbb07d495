"""Channel groups and BN following from the torch-pruning adapter, plus dependency-aware masks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.pruning.models import build, dummy_input
from tune_prune.errors import ConfigError
from tune_prune.pruning.dependency import (
    channel_groups,
    dependency_aware_masks,
    following_batchnorms,
)


def _by_members(groups):
    return {frozenset(g.members): g for g in groups}


def test_residual_groups_contain_exactly_the_coupled_convs():
    groups = _by_members(channel_groups(build("residual"), dummy_input("residual")))
    assert set(groups) == {
        frozenset({"conv1", "layer1.conv2"}),  # stem + identity-shortcut block
        frozenset({"layer1.conv1"}),
        frozenset({"layer2.conv1"}),
        frozenset({"layer2.conv2", "layer2.shortcut.0"}),  # 1x1 shortcut add
        frozenset({"fc"}),
    }
    g = groups[frozenset({"conv1", "layer1.conv2"})]
    assert g.num_channels == 8 and g.num_groups == 1 and not g.feeds_output
    assert g.members["conv1"] == g.members["layer1.conv2"]
    assert groups[frozenset({"fc"})].feeds_output


def test_every_layer_in_exactly_one_group():
    for name in ("residual", "concat", "depthwise", "groupconv", "mlp"):
        model = build(name)
        groups = channel_groups(model, dummy_input(name))
        members = [n for g in groups for n in g.members]
        layers = [
            n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
        ]
        assert sorted(members) == sorted(layers), name


def test_concat_offsets_map_branches_into_the_added_conv():
    groups = _by_members(channel_groups(build("concat"), dummy_input("concat")))
    g = groups[frozenset({"branch_a", "branch_b", "branch_c"})]
    assert g.num_channels == 10
    ga, gb, gc = (g.members[n] for n in ("branch_a", "branch_b", "branch_c"))
    # cat([a, b]) + c: a[k] <-> c[k], b[k] <-> c[4 + k]
    assert [gc.index(x) for x in ga] == [0, 1, 2, 3]
    assert [gc.index(x) for x in gb] == [4, 5, 6, 7, 8, 9]
    assert g.to_member("branch_b", [gc[5], gc[0]]) == [1]
    assert g.covered(["branch_a"]) == sorted(ga)
    summed = g.gather({"branch_a": torch.ones(4), "branch_c": torch.arange(10.0)})
    assert summed[gc[0]] == 1.0 and summed[gc[5]] == 5.0


def test_depthwise_conv_is_coupled_to_its_producer():
    groups = _by_members(channel_groups(build("depthwise"), dummy_input("depthwise")))
    g = groups[frozenset({"conv1", "dw"})]
    assert g.members["conv1"] == g.members["dw"]
    assert frozenset({"pw"}) in groups


def test_group_conv_sets_block_constraint_on_itself_and_producer():
    groups = _by_members(channel_groups(build("groupconv"), dummy_input("groupconv")))
    assert groups[frozenset({"gconv"})].num_groups == 2
    assert groups[frozenset({"conv1"})].num_groups == 2
    assert groups[frozenset({"conv3"})].num_groups == 1


def test_module_names_keep_whole_groups_and_reject_unknown():
    model, x = build("residual"), dummy_input("residual")
    groups = channel_groups(model, x, ["layer1.conv2"])
    assert len(groups) == 1 and set(groups[0].members) == {"conv1", "layer1.conv2"}
    with pytest.raises(ConfigError, match="nope"):
        channel_groups(model, x, ["nope"])


def test_tracing_restores_training_mode_and_requires_grad():
    model = build("residual").train()
    model.conv1.weight.requires_grad_(False)
    channel_groups(model, dummy_input("residual"))
    following_batchnorms(model, dummy_input("residual"))
    assert model.training and model.layer1.training
    assert not model.conv1.weight.requires_grad and model.fc.weight.requires_grad


def test_following_batchnorms():
    assert following_batchnorms(build("residual"), dummy_input("residual")) == {
        "conv1": "bn1",
        "layer1.conv1": "layer1.bn1",
        "layer1.conv2": "layer1.bn2",
        "layer2.conv1": "layer2.bn1",
        "layer2.conv2": "layer2.bn2",
        "layer2.shortcut.0": "layer2.shortcut.1",
    }
    # bn_cat is fed by an add, not by a single conv
    assert following_batchnorms(build("concat"), dummy_input("concat")) == {"stem": "bn_stem"}
    assert following_batchnorms(build("mlp"), dummy_input("mlp")) == {"fc1": "bn1"}


def _l1(model, names):
    mods = dict(model.named_modules())
    return {n: mods[n].weight.detach().abs().flatten(1).sum(1) for n in names}


def _pruned_rows(mask):
    return (mask["weight"].flatten(1) == 0).all(1).nonzero().flatten().tolist()


def test_dependency_aware_masks_residual_by_hand():
    model, x = build("residual"), dummy_input("residual")
    names = ["conv1", "layer1.conv2", "layer1.conv1"]
    metrics = _l1(model, names)
    sp = {"conv1": 0.5, "layer1.conv2": 0.25, "layer1.conv1": 0.5}
    masks = dependency_aware_masks(model, x, metrics, sp)
    fused = metrics["conv1"] + metrics["layer1.conv2"]
    expected = sorted(torch.argsort(fused)[:2].tolist())  # int(8 * min(0.5, 0.25)) = 2
    assert _pruned_rows(masks["conv1"]) == expected
    assert _pruned_rows(masks["layer1.conv2"]) == expected
    assert _pruned_rows(masks["layer1.conv1"]) == sorted(
        torch.argsort(metrics["layer1.conv1"])[:4].tolist()
    )
    assert set(masks) == set(names)  # unselected coupled layers get no mask


def test_dependency_aware_masks_group_conv_blocks_and_bias():
    model, x = build("groupconv"), dummy_input("groupconv")
    masks = dependency_aware_masks(model, x, _l1(model, ["gconv"]), {"gconv": 0.5})
    rows = _pruned_rows(masks["gconv"])
    assert len([r for r in rows if r < 4]) == 2 and len([r for r in rows if r >= 4]) == 2
    assert (masks["gconv"]["bias"] == 0).nonzero().flatten().tolist() == rows


def test_dependency_aware_masks_errors():
    model, x = build("residual"), dummy_input("residual")
    metrics = _l1(model, ["conv1"])
    with pytest.raises(ConfigError, match="conv1"):
        dependency_aware_masks(model, x, metrics, {"conv1": 1.0})
    with pytest.raises(ConfigError, match="sparsities"):
        dependency_aware_masks(model, x, metrics, {})
    with pytest.raises(ConfigError, match="bn1"):
        dependency_aware_masks(model, x, {"bn1": torch.ones(8)}, {"bn1": 0.5})


_RES = build("residual")
_RES_GROUPS = channel_groups(_RES, dummy_input("residual"))


@settings(max_examples=25, deadline=None)
@given(
    s1=st.floats(0.0, 0.99),
    s2=st.floats(0.0, 0.99),
    seed=st.integers(0, 2**16),
)
def test_coupled_members_always_share_pruned_indices(s1, s2, seed):
    g = torch.Generator().manual_seed(seed)
    metrics = {
        "layer2.conv2": torch.rand(16, generator=g),
        "layer2.shortcut.0": torch.rand(16, generator=g),
    }
    sp = {"layer2.conv2": s1, "layer2.shortcut.0": s2}
    masks = dependency_aware_masks(_RES, None, metrics, sp, groups=_RES_GROUPS)
    a, b = _pruned_rows(masks["layer2.conv2"]), _pruned_rows(masks["layer2.shortcut.0"])
    assert a == b
    assert len(a) == int(16 * min(s1, s2))
