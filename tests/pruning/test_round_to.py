"""``round_to``: kept channels per layer (group) a multiple of it, never zero; speedup works."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.pruning.models import build, dummy_input
from tune_prune.errors import ConfigError
from tune_prune.pruning import FPGMPruner, L1NormPruner, L2NormPruner
from tune_prune.pruning.pruners.allocation import num_pruned, rounded_prune
from tune_prune.pruning.speedup import speedup_model
from tune_prune.workloads.mnist1d import Mnist1dCNN


def _kept(masks: dict) -> dict[str, int]:
    out = {}
    for name, per in masks.items():
        w = per["weight"]
        out[name] = int((w.reshape(w.size(0), -1).abs().sum(1) != 0).sum())
    return out


def _prune(model, x, mode, sparsity, round_to, types=("Conv2d",), cls=L1NormPruner, **kw):
    key = "total_sparsity" if mode == "global" else "sparsity_per_layer"
    p = cls(model, [{"op_types": list(types), key: sparsity}], mode=mode, dummy_input=x,
            round_to=round_to, **kw)
    _, masks = p.compress()
    p._unwrap_model()
    return masks


@pytest.mark.parametrize("n", [1, 3, 8, 16, 25, 64])
@pytest.mark.parametrize("round_to", [1, 2, 3, 4, 8])
def test_rounded_prune_rule(n: int, round_to: int) -> None:
    for s in (0.0, 0.1, 0.25, 0.5, 0.625, 0.75, 0.9, 0.99):
        prune = rounded_prune(n, num_pruned(s, n), round_to)
        kept = n - prune
        assert 1 <= kept <= n
        if round_to == 1:
            assert prune == num_pruned(s, n)
        elif n < round_to:
            assert kept == n  # too narrow to round: not pruned
        else:
            assert kept % round_to == 0 and kept >= round_to
            # rounded down (prunes more) unless that would go below round_to
            assert kept <= max(n - num_pruned(s, n), round_to)


@pytest.mark.parametrize("mode", ["normal", "dependency_aware", "global"])
@pytest.mark.parametrize("round_to", [2, 3, 4, 8])
@pytest.mark.parametrize("sparsity", [0.2, 0.5, 0.8, 0.95])
def test_kept_channels_are_multiples_and_never_zero(mode, round_to, sparsity) -> None:
    model, x = build("residual"), dummy_input("residual")
    masks = _prune(model, x, mode, sparsity, round_to)
    for name, kept in _kept(masks).items():
        assert kept >= 1, name
        n = masks[name]["weight"].size(0)
        assert kept % round_to == 0 or (kept == n and n < round_to), (name, kept)
    if mode == "dependency_aware":  # coupled layers keep the same channels
        rows = {n: (m["weight"].flatten(1) != 0).any(1) for n, m in masks.items()}
        assert torch.equal(rows["conv1"], rows["layer1.conv2"])
        assert torch.equal(rows["layer2.conv2"], rows["layer2.shortcut.0"])


def test_round_to_one_is_the_default_and_rounding_prunes_the_lowest() -> None:
    x = dummy_input("residual")
    for mode in ("normal", "dependency_aware", "global"):
        key = "total_sparsity" if mode == "global" else "sparsity_per_layer"
        explicit = _prune(build("residual"), x, mode, 0.3, 1)
        default = L1NormPruner(build("residual"), [{"op_types": ["Conv2d"], key: 0.3}],
                               mode=mode, dummy_input=x).compress()[1]
        assert explicit.keys() == default.keys()
        for name in default:
            assert torch.equal(explicit[name]["weight"], default[name]["weight"])
    # normal mode, 8 channels, s=0.3: NNI prunes 2 (keeps 6); round_to=4 keeps the best 4
    model = build("residual")
    l1 = model.layer1.conv1.weight.detach().abs().flatten(1).sum(1)
    masks = _prune(model, x, "normal", 0.3, 4)
    kept = (masks["layer1.conv1"]["weight"].flatten(1) != 0).any(1)
    assert sorted(kept.nonzero().flatten().tolist()) == sorted(torch.topk(l1, 4).indices.tolist())


def test_group_conv_blocks_round_the_group_total() -> None:
    model, x = build("groupconv"), dummy_input("groupconv")
    masks = _prune(model, x, "dependency_aware", 0.3, 4)
    rows = (masks["gconv"]["weight"].flatten(1) != 0).any(1)
    assert int(rows.sum()) % 4 == 0
    assert int(rows[:4].sum()) == int(rows[4:].sum())  # the same count in each block


@pytest.mark.parametrize("cls", [L1NormPruner, L2NormPruner, FPGMPruner])
def test_speedup_after_round_to_gives_multiple_widths(cls) -> None:
    model, x = build("residual"), dummy_input("residual")
    masks = _prune(copy.deepcopy(model), x, "dependency_aware", 0.6, 4, cls=cls,
                   normalizer="mean", bn_scale=True, input_weights=True)
    compact, remaining, _ = speedup_model(model, masks, x)  # checks the function is kept
    assert remaining == {}
    widths = [m.out_channels for m in compact.modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 4 == 0 for w in widths) and min(widths) >= 4
    torch.manual_seed(0)
    cnn, x1 = Mnist1dCNN(width=10).eval(), torch.randn(2, 1, 40)
    masks = _prune(copy.deepcopy(cnn), x1, "normal", 0.5, 4, types=("Conv1d",))
    compact, remaining, _ = speedup_model(cnn, masks, x1)
    assert remaining == {}
    assert [m.out_channels for m in compact.modules() if isinstance(m, nn.Conv1d)] == [4, 4, 4]
    assert compact.fc.in_features == 4 * 5


@pytest.mark.parametrize("value", [0, -2, 2.5, True, "4", None])
def test_bad_round_to_raises_config_error(value: object) -> None:
    for cls in (L1NormPruner, L2NormPruner, FPGMPruner):
        with pytest.raises(ConfigError, match=rf"round_to={value!r}"):
            cls(None, None, round_to=value)
