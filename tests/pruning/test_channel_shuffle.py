"""ShuffleNetV2-style channel shuffle: coupled channel groups, even chunks, exact speedup.

A shuffle ``view(b, g, c/g, h, w) -> transpose(1, 2) -> view(b, c, h, w)`` moves channel
``gi * cpg + k`` to ``k * g + gi``; the same code on fewer channels keeps that order only
when channel k goes from all g segments at once, and ``x.chunk(2, dim=1)`` splits a
compact tensor as before only when both halves lose as many channels.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from tests.pruning.models import _randomise_bn
from tests.pruning.models import masked_reference as _masked
from tune_prune.errors import SpeedupError
from tune_prune.pruning.dependency import channel_groups, clear_analysis_cache
from tune_prune.pruning.measure import count_macs
from tune_prune.pruning.pruners import L1NormPruner
from tune_prune.pruning.speedup import (
    extend_masks_to_batchnorms,
    rebuild_compact_model,
    speedup_model,
)

torch.set_num_threads(1)


def shuffle(x: torch.Tensor, groups: int, style: str = "view") -> torch.Tensor:
    b, c, h, w = x.shape
    if style == "view":  # torchvision's channel_shuffle
        x = torch.transpose(x.view(b, groups, c // groups, h, w), 1, 2).contiguous()
        return x.view(b, c, h, w)
    return x.reshape(b, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(b, c, h, w)


class InvertedResidual(nn.Module):
    """ShuffleNetV2 unit: stride 1 chunks the input in two and transforms one half."""

    def __init__(self, inp: int, oup: int, stride: int, style: str) -> None:
        super().__init__()
        self.stride, self.style = stride, style
        bf = oup // 2
        self.branch1 = nn.Sequential()
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, bf, 1, bias=False),
                nn.BatchNorm2d(bf),
                nn.ReLU(),
            )
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else bf, bf, 1, bias=False),
            nn.BatchNorm2d(bf),
            nn.ReLU(),
            nn.Conv2d(bf, bf, 3, stride, 1, groups=bf, bias=False),
            nn.BatchNorm2d(bf),
            nn.Conv2d(bf, bf, 1, bias=False),
            nn.BatchNorm2d(bf),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return shuffle(out, 2, self.style)


class TinyShuffleNet(nn.Module):
    """conv(3->8), a stride-2 unit (8->16) and `blocks` stride-1 units, conv5, fc."""

    def __init__(self, blocks: int = 2, style: str = "view", width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        units = [InvertedResidual(8, width, 2, style)]
        units += [InvertedResidual(width, width, 1, style) for _ in range(blocks)]
        self.stage = nn.Sequential(*units)
        self.conv5 = nn.Sequential(
            nn.Conv2d(width, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.stage(self.conv1(x)))
        return self.fc(x.mean((2, 3)))


def _build(seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return _randomise_bn(TinyShuffleNet(**kwargs), seed + 1)


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))




def _assert_same_function(model, compact, masks, x):
    """Compact == masked model (BN-extended masks) on a fresh random input, eval mode."""
    ref = _masked(model, extend_masks_to_batchnorms(model, masks, x))
    probe = torch.randn(3, *x.shape[1:], generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert torch.allclose(compact.eval()(probe), ref(probe), atol=1e-5, rtol=1e-4)


def _pruned_rows(mask):
    return (mask["weight"].flatten(1) == 0).all(1).nonzero().flatten().tolist()


def _row_mask(module, idx):
    w = torch.ones_like(module.weight)
    w[idx] = 0
    return {"weight": w}


def _group_of(groups, layer):
    return next(g for g in groups if layer in g.members)


@pytest.mark.parametrize("style", ["view", "permute"])
def test_groups_couple_each_channel_of_every_shuffle_segment(style):
    """Stride-2 unit: branch1[j] ~ branch2[j] (shuffle); unit 1: branch[c] ~ y0 pair c // 2
    for the chunk's first half (pairs 0-3); unit 2: branch[c] ~ unit 1 branch[c // 2]."""
    model = _build(style=style)
    group = _group_of(channel_groups(model, X), "stage.0.branch1.2")
    m = group.members
    assert m["stage.0.branch1.2"] == m["stage.0.branch2.5"]
    assert len(set(m["stage.0.branch1.2"])) == group.num_channels == 8
    b1, b2 = m["stage.1.branch2.5"], m["stage.2.branch2.5"]
    assert [m["stage.0.branch1.2"].index(c) for c in b1] == [c // 2 for c in range(8)]
    assert list(b2) == [b1[c // 2] for c in range(8)]
    # pairs 4-7 of the stride-2 unit go into unit 1's branch, coupled to nothing else
    assert not set(m["stage.0.branch1.2"][4:]) & set(b1)
    assert "conv5.0" not in m and not group.feeds_output


@pytest.mark.parametrize("style", ["view", "permute"])
@pytest.mark.parametrize("sparsity", [0.25, 0.5])
def test_dependency_aware_l1_speedup_equals_masked_model(style, sparsity):
    model = _build(style=style)
    pruner = L1NormPruner(
        copy.deepcopy(model),
        [{"op_types": ["Conv2d"], "sparsity": sparsity}],
        mode="dependency_aware",
        dummy_input=X,
    )
    _, masks = pruner.compress()

    def dead(name):
        return set(_pruned_rows(masks[name]))

    # the shuffle couples branch1[j], branch2[j] and unit 1's branch channels 2j, 2j + 1
    pairs = dead("stage.0.branch1.2")
    assert len(pairs) == int(8 * sparsity) and dead("stage.0.branch2.5") == pairs
    assert dead("stage.1.branch2.5") == {c for c in range(8) if c // 2 in pairs}
    compact, remaining, history = speedup_model(model, masks, X)
    _assert_same_function(model, compact, masks, X)
    assert count_macs(compact, X) < count_macs(model, X)
    assert compact.stage[1].branch2[0].out_channels == 8 - int(8 * sparsity)
    # the history rebuilds the compact architecture from a fresh original
    rebuilt = rebuild_compact_model(_build(seed=5, style=style), json.loads(json.dumps(history)))
    rebuilt.load_state_dict(compact.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(X), compact(X))


def test_normal_mode_masks_keep_what_the_shuffle_or_chunk_cannot_lose():
    model = _build()
    pruner = L1NormPruner(copy.deepcopy(model), [{"op_types": ["Conv2d"], "sparsity": 0.5}])
    _, masks = pruner.compress()
    compact, remaining, _ = speedup_model(model, masks, X)
    _assert_same_function(model, compact, masks, X)
    assert count_macs(compact, X) < count_macs(model, X)
    assert remaining  # independent per-layer choices leave zeros in coupled layers


def _pair_masks(model, pairs, units=2):
    """Masks killing the stride-2 unit's output pairs `pairs` with all they are coupled to."""
    group = _group_of(channel_groups(model, X), "stage.0.branch1.2")
    chans = [group.members["stage.0.branch1.2"][j] for j in pairs]
    mods = dict(model.named_modules())
    names = ["stage.0.branch1.2", "stage.0.branch2.5"]
    names += [f"stage.{u}.branch2.5" for u in range(1, units + 1)]
    return {n: _row_mask(mods[n], group.to_member(n, chans)) for n in names}


def test_chunk_halves_lose_as_many_channels():
    """Pairs 1, 2 go to the first half of unit 1's chunk, 5, 6 to the second; in unit 2
    pair 1 comes back in the first half and pair 2 in the second: all removable."""
    model = _build()
    compact, remaining, _ = speedup_model(model, _pair_masks(model, [1, 2, 5, 6]), X)
    assert remaining == {}
    assert compact.stage[0].branch1[2].out_channels == 4
    assert compact.stage[1].branch2[5].out_channels == 4
    assert compact.stage[2].branch2[5].out_channels == 4
    _assert_same_function(model, compact, _pair_masks(model, [1, 2, 5, 6]), X)


def test_uneven_chunk_keeps_the_dead_channels():
    """Pairs 1 and 5 balance unit 1's chunk, but in unit 2 pair 1 lands in the first half
    only: removing it would make chunk(2) split the compact tensor elsewhere."""
    model = _build()
    masks = _pair_masks(model, [1, 5])
    compact, remaining, _ = speedup_model(model, masks, X)
    assert compact.stage[0].branch1[2].out_channels == 8
    assert set(remaining) >= {"stage.0.branch1.2", "stage.0.branch2.5"}
    _assert_same_function(model, compact, masks, X)
    # one stride-1 unit: the same masks are even and go
    small = _build(blocks=1)
    compact, remaining, _ = speedup_model(small, _pair_masks(small, [1, 5], units=1), X)
    assert compact.stage[0].branch1[2].out_channels == 6 and remaining == {}


def test_shuffle_keeps_a_channel_dead_in_one_segment_only():
    """branch1[1] and branch1[6] dead but branch2[1], [6] alive: the chunk would stay even,
    the shuffle would not interleave the compact halves as before."""
    model = _build(blocks=1)
    masks = {"stage.0.branch1.2": _row_mask(model.stage[0].branch1[2], [1, 6])}
    compact, remaining, _ = speedup_model(model, masks, X)
    assert compact.stage[0].branch1[2].out_channels == 8
    assert "stage.0.branch1.2" in remaining
    _assert_same_function(model, compact, masks, X)


@pytest.mark.parametrize("groups", [2, 4])
def test_plain_shuffle_between_convs(groups):
    """conv(3->8) -> shuffle(g) -> conv: conv1's channels k, cpg + k, ... are one."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.groups = groups  # an attribute: the analysis cache keys on it
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 6, 1)
            self.fc = nn.Linear(6, 4)

        def forward(self, x):
            y = shuffle(torch.relu(self.conv1(x)), self.groups, "permute")
            return self.fc(self.conv2(y).mean((2, 3)))

    torch.manual_seed(0)
    model = Net().eval()
    group = _group_of(channel_groups(model, X), "conv1")
    cpg = 8 // groups
    assert group.num_channels == cpg
    assert [group.members["conv1"].index(c) for c in group.members["conv1"]] == [
        c % cpg for c in range(8)
    ]
    masks = {"conv1": _row_mask(model.conv1, [1 + cpg * gi for gi in range(groups)])}
    masks["conv1"]["bias"] = masks["conv1"]["weight"][:, 0, 0, 0].clone()
    compact, remaining, _ = speedup_model(model, masks, X)
    assert compact.conv1.out_channels == compact.conv2.in_channels == 8 - groups
    assert remaining == {}
    _assert_same_function(model, compact, masks, X)


class _GroupSum(nn.Module):
    """Sums the two channel halves through a 5-D view: no adapter knows this op."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 1)

    def forward(self, x):
        y = self.conv1(x)
        b, c, h, w = y.shape
        return self.conv2(y.view(b, 2, c // 2, h, w).sum(1)).mean((2, 3))


def test_unknown_channel_reshape_fails_naming_model_and_op():
    torch.manual_seed(0)
    model = _GroupSum().eval()
    masks = {"conv1": _row_mask(model.conv1, [0])}
    masks["conv1"]["bias"] = masks["conv1"]["weight"][:, 0, 0, 0].clone()
    with pytest.raises(SpeedupError, match=r"_GroupSum.*_Reshape_\d+\(\) \(viewbackward0"):
        speedup_model(model, masks, X)


def test_tracing_error_names_model_and_node(monkeypatch):
    """torch-pruning's own failures (ZeroDivisionError in its reshape mapping on wide
    ShuffleNets without the adapter) come out as SpeedupError naming model and node."""
    index_mapping = pytest.importorskip("torch_pruning.dependency.index_mapping")

    def broken(graph, reshape_node):
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(index_mapping, "update_reshape_index_mapping", broken)
    clear_analysis_cache()
    try:
        with pytest.raises(SpeedupError, match=r"_GroupSum at node _Reshape_\d+\(\).*ZeroDiv"):
            channel_groups(_GroupSum(), X)
    finally:
        clear_analysis_cache()


def test_torchvision_stage_width_traces_and_speeds_up():
    """116 channels, three stride-1 units (plain torch-pruning 1.6.1 raises
    ZeroDivisionError in its reshape index mapping on this model)."""
    model = _build(width=116, blocks=3)
    group = _group_of(channel_groups(model, X), "stage.0.branch1.2")
    assert group.members["stage.0.branch1.2"] == group.members["stage.0.branch2.5"]
    pruner = L1NormPruner(
        copy.deepcopy(model),
        [{"op_types": ["Conv2d"], "sparsity": 0.5}],
        mode="dependency_aware",
        dummy_input=X,
    )
    _, masks = pruner.compress()
    compact, _, _ = speedup_model(model, masks, X)
    _assert_same_function(model, compact, masks, X)
    assert count_macs(compact, X) < 0.8 * count_macs(model, X)
