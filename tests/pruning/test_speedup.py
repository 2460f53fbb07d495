"""Physical channel removal: function preserved, leftovers re-indexed, history rebuilds."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from tests.pruning.models import MODEL_NAMES, build, dummy_input
from tests.pruning.models import masked_reference as _masked
from tune_prune.errors import SpeedupError
from tune_prune.pruning.dependency import channel_groups
from tune_prune.pruning.speedup import (
    extend_masks_to_batchnorms,
    rebuild_compact_model,
    speedup_model,
)

TOL = 1e-5




def _row_mask(module, idx):
    w = torch.ones_like(module.weight)
    w[idx] = 0
    out = {"weight": w}
    if getattr(module, "bias", None) is not None:
        b = torch.ones_like(module.bias)
        b[idx] = 0
        out["bias"] = b
    return out


def _group_masks(name, seed, fraction=0.5):
    """Random filter masks, consistent within each channel group (classifier left alone).

    A BN fed by an add (concat model's bn_cat) is masked on the same group channels, as a
    dependency-aware pruner + BN extension would leave it.
    """
    model, x = build(name), dummy_input(name)
    g = torch.Generator().manual_seed(seed)
    mods = dict(model.named_modules())
    masks = {}
    for group in channel_groups(model, x):
        if group.feeds_output:
            continue
        k = max(1, int(group.num_channels * fraction))
        pruned = torch.randperm(group.num_channels, generator=g)[:k].tolist()
        for member in group.members:
            masks[member] = _row_mask(mods[member], group.to_member(member, pruned))
        if set(group.members) == {"branch_a", "branch_b", "branch_c"}:
            idx = group.to_member("branch_c", pruned)
            masks["bn_cat"] = _row_mask(mods["bn_cat"], idx)
    return model, x, masks


def _out(model, x):
    with torch.no_grad():
        return model.eval()(x)


def _nparams(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_speedup_equals_masked_model_and_removes_everything(name, seed):
    model, x, masks = _group_masks(name, seed)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = _masked(model, extend_masks_to_batchnorms(model, masks, x))
    compact, remaining, history = speedup_model(model, masks, x)
    assert (_out(compact, x) - _out(ref, x)).abs().max() <= TOL
    assert remaining == {}
    assert _nparams(compact) < 0.6 * _nparams(model)
    json.dumps(history)
    # the argument model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_uncoupled_per_layer_masks_leave_reindexed_masks(name):
    """Normal-mode masks (independent per layer): only fully dead groups go, the rest stays."""
    model, x = build(name), dummy_input(name)
    g = torch.Generator().manual_seed(3)
    masks = {}
    for n, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            rows = m.weight.shape[0]
            masks[n] = _row_mask(m, torch.randperm(rows, generator=g)[: rows // 2].tolist())
    ext = extend_masks_to_batchnorms(model, masks, x)
    ref = _masked(model, ext)
    compact, remaining, _ = speedup_model(model, masks, x)
    assert (_out(compact, x) - _out(ref, x)).abs().max() <= TOL
    assert "fc" in remaining or "fc3" in remaining  # classifier rows never removed
    cmods = dict(compact.named_modules())
    for n, entry in remaining.items():
        for p, m in entry.items():
            param = getattr(cmods[n], p)
            assert m.shape == param.shape
            assert torch.all(param[m == 0] == 0)  # zeros are held where masks say so
    # holding the remaining masks keeps the function
    assert (_out(_masked(compact, remaining), x) - _out(ref, x)).abs().max() <= TOL


def test_classifier_output_channels_are_kept():
    model, x = build("residual"), dummy_input("residual")
    masks = {"fc": _row_mask(model.fc, [0, 1, 2])}
    compact, remaining, _ = speedup_model(model, masks, x)
    assert compact.fc.out_features == 10
    assert (remaining["fc"]["weight"][:3] == 0).all()


def test_concat_offsets_are_pruned_correctly():
    model, x = build("concat"), dummy_input("concat")
    mods = dict(model.named_modules())
    # group channels: a[1] = c[1]; b[0] = c[4]; b[3] = c[7]; c[9] alone (b[5] alive)
    masks = {
        "branch_a": _row_mask(mods["branch_a"], [1]),
        "branch_b": _row_mask(mods["branch_b"], [0, 3]),
        "branch_c": _row_mask(mods["branch_c"], [1, 4, 7, 9]),
        "bn_cat": _row_mask(mods["bn_cat"], [1, 4, 7, 9]),
    }
    compact, remaining, _ = speedup_model(model, masks, x)
    assert (compact.branch_a.out_channels, compact.branch_b.out_channels) == (3, 4)
    assert compact.branch_c.out_channels == 7 and compact.head.in_channels == 7
    assert compact.fc.in_features == 8 * 16
    assert (remaining["branch_c"]["bias"] == 0).nonzero().flatten().tolist() == [6]
    ref = _masked(model, masks)
    assert (_out(compact, x) - _out(ref, x)).abs().max() <= TOL


def test_zero_conv_without_bn_mask_is_extended_and_removed():
    model, x = build("depthwise"), dummy_input("depthwise")
    masks = {"pw": _row_mask(model.pw, [0, 5])}
    ext = extend_masks_to_batchnorms(model, masks, x)
    assert (ext["bn_pw"]["weight"] == 0).nonzero().flatten().tolist() == [0, 5]
    assert "bn_pw" not in masks  # input not mutated
    compact, remaining, _ = speedup_model(model, masks, x)
    assert compact.pw.out_channels == 14 and compact.fc.in_features == 14
    assert remaining == {}
    assert (_out(compact, x) - _out(_masked(model, ext), x)).abs().max() <= TOL


def test_slim_style_bn_masks_remove_the_producing_layer_rows():
    model, x = build("mlp"), dummy_input("mlp")
    masks = {"bn1": _row_mask(model.bn1, [0, 1, 2, 3])}
    compact, remaining, _ = speedup_model(model, masks, x)
    assert compact.fc1.out_features == 28 and compact.fc2.in_features == 28
    assert remaining == {}
    assert (_out(compact, x) - _out(_masked(model, masks), x)).abs().max() <= TOL


def test_fine_grained_masks_remove_nothing_but_keep_function():
    model, x = build("residual"), dummy_input("residual")
    g = torch.Generator().manual_seed(0)
    masks = {"layer1.conv1": {"weight": (torch.rand(8, 8, 3, 3, generator=g) > 0.5).float()}}
    compact, remaining, history = speedup_model(model, masks, x)
    assert _nparams(compact) == _nparams(model)
    assert torch.equal(remaining["layer1.conv1"]["weight"], masks["layer1.conv1"]["weight"])
    assert history["modules"] == {}


def test_fully_dead_group_keeps_one_channel():
    model, x = build("mlp"), dummy_input("mlp")
    masks = {"fc2": _row_mask(model.fc2, list(range(32)))}
    compact, remaining, _ = speedup_model(model, masks, x)
    assert compact.fc2.out_features == 1
    assert (remaining["fc2"]["weight"] == 0).all()
    assert (_out(compact, x) - _out(_masked(model, masks), x)).abs().max() <= TOL


def test_group_conv_is_left_alone_but_function_kept():
    model, x = build("groupconv"), dummy_input("groupconv")
    masks = {n: _row_mask(getattr(model, n), [0, 4]) for n in ("conv1", "gconv", "conv3")}
    compact, remaining, _ = speedup_model(model, masks, x)
    assert compact.gconv.out_channels == 8 and compact.conv1.out_channels == 8
    assert compact.conv3.out_channels == 6
    assert set(remaining) == {"conv1", "gconv"}
    assert (_out(compact, x) - _out(_masked(model, masks), x)).abs().max() <= TOL


class _InputResidual(nn.Module):
    """conv(x) + x on the model input, then a sigmoid between two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 3, 3, padding=1)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = self.conv0(x) + x
        return self.conv2(torch.sigmoid(self.conv1(y))).mean((2, 3))


def test_input_coupled_and_non_zero_preserving_groups_are_skipped():
    torch.manual_seed(0)
    model, x = _InputResidual().eval(), torch.randn(2, 3, 8, 8)
    masks = {"conv0": _row_mask(model.conv0, [1]), "conv1": _row_mask(model.conv1, [2])}
    compact, remaining, _ = speedup_model(model, masks, x)
    assert compact.conv0.out_channels == 3  # coupled to the model input
    assert compact.conv1.out_channels == 6  # sigmoid(0) = 0.5 is not dead
    assert set(remaining) == {"conv0", "conv1"}
    assert (_out(compact, x) - _out(_masked(model, masks), x)).abs().max() <= TOL


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_rebuild_from_history_after_weights_only_roundtrip(name, tmp_path):
    model, x, masks = _group_masks(name, seed=7)
    compact, remaining, history = speedup_model(model, masks, x)
    torch.save(compact.state_dict(), tmp_path / "compact.pt")
    torch.save(remaining, tmp_path / "masks.pt")
    (tmp_path / "history.json").write_text(json.dumps(history))

    fresh = build(name, seed=123)  # a freshly built original with other weights
    history2 = json.loads((tmp_path / "history.json").read_text())
    rebuilt = rebuild_compact_model(fresh, history2)
    rebuilt.load_state_dict(torch.load(tmp_path / "compact.pt", weights_only=True))
    assert torch.load(tmp_path / "masks.pt", weights_only=True) == remaining == {}
    assert (_out(rebuilt, x) - _out(compact, x)).abs().max() == 0


def test_rebuild_keeps_original_values_at_kept_indices():
    model, x, masks = _group_masks("residual", seed=1)
    compact, _, history = speedup_model(model, masks, x)
    rebuilt = rebuild_compact_model(copy.deepcopy(model), history)
    # compact weights are the masked weights; the kept channels were never masked
    for k, v in compact.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v), k


def test_iterated_speedups_rebuild_step_by_step():
    model, x, masks = _group_masks("depthwise", seed=0, fraction=0.25)
    c1, _, h1 = speedup_model(model, masks, x)
    masks2 = {"pw": _row_mask(c1.pw, [0])}
    c2, _, h2 = speedup_model(c1, masks2, x)
    rebuilt = rebuild_compact_model(rebuild_compact_model(build("depthwise"), h1), h2)
    rebuilt.load_state_dict(c2.state_dict())
    assert (_out(rebuilt, x) - _out(c2, x)).abs().max() == 0


def test_errors_name_field_and_value():
    model, x = build("mlp"), dummy_input("mlp")
    with pytest.raises(SpeedupError, match="nope"):
        speedup_model(model, {"nope": {"weight": torch.ones(1)}}, x)
    with pytest.raises(SpeedupError, match=r"fc1.*shape"):
        speedup_model(model, {"fc1": {"weight": torch.ones(3, 3)}}, x)
    with pytest.raises(SpeedupError, match="format"):
        rebuild_compact_model(build("mlp"), {"format": "other", "modules": {}})
    bad = {"format": "tune_prune.speedup/1", "modules": {"zz": {"type": "Linear"}}}
    with pytest.raises(SpeedupError, match="zz"):
        rebuild_compact_model(build("mlp"), bad)
