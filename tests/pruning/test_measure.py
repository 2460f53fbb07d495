"""Parameter / MAC counts against hand-computed numbers, sparsity report, latency."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.pruning.models import build, dummy_input
from tune_prune.errors import ConfigError
from tune_prune.pruning.measure import count_macs, count_params, measure_latency, sparsity_report


def _tiny():
    """conv(2->4, 3x3, pad 1) -> relu -> flatten -> linear(4*5*5 -> 3) on 1x2x5x5."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(100, 3))
    return model.eval(), torch.randn(1, 2, 5, 5)


# params: conv 4*2*9 + 4 = 76; linear 100*3 + 3 = 303
# MACs:   conv 4 filters * 25 positions * 18 = 1800; linear 100 * 3 = 300
def test_dense_counts_by_hand():
    model, x = _tiny()
    assert count_params(model) == 379
    assert count_macs(model, x) == 2100
    assert count_macs(model, torch.randn(4, 2, 5, 5)) == 4 * 2100  # per batch


def _filters(idx):
    w = torch.ones(4, 2, 3, 3)
    w[idx] = 0
    b = torch.ones(4)
    b[idx] = 0
    return {"0": {"weight": w, "bias": b}}


def test_structured_mask_counts_removed_channels_and_consumers():
    model, x = _tiny()
    masks = _filters([1, 3])
    assert count_params(model, masks) == 379 - 2 * 19  # masked filters and their biases
    # conv: 2 filters * 25 * 18 = 900; linear loses 50 of its 100 inputs: 150
    assert count_macs(model, x, masks) == 1050


def test_fine_grained_mask_counts_nonzero_weights_times_positions():
    model, x = _tiny()
    w = torch.ones(4, 2, 3, 3)
    w.view(-1)[:10] = 0  # 10 weights, no whole filter
    masks = {"0": {"weight": w}}
    assert count_params(model, masks) == 379 - 10
    assert count_macs(model, x, masks) == 2100 - 10 * 25


def test_macs_match_hand_formula_on_residual_model():
    model, x = build("residual"), dummy_input("residual")
    n = x.shape[0]
    # stem 8x3x9 @64, layer1 2x(8x8x9 @64), layer2 conv1 16x8x9 @16, conv2 16x16x9 @16,
    # shortcut 16x8 @16, fc 16x10
    per_sample = 8 * 27 * 64 + 2 * 8 * 72 * 64 + 16 * 72 * 16 + 16 * 144 * 16 + 16 * 8 * 16 + 160
    assert count_macs(model, x) == n * per_sample


def test_masked_model_counts_do_not_change_the_model():
    model, x = build("mlp"), dummy_input("mlp")
    w = torch.ones(32, 16)
    w[:8] = 0
    masks = {"fc1": {"weight": w, "bias": torch.cat([torch.zeros(8), torch.ones(24)])}}
    dense = count_macs(model, x)
    # fc1 rows 0..7 go, with bn1 (extended) and fc2's inputs: 8*16 + 8*32 MACs per sample
    assert count_macs(model, x, masks) == dense - 4 * (8 * 16 + 8 * 32)
    assert model.fc1.out_features == 32


def test_sparsity_report():
    model, _ = _tiny()
    w = torch.ones(3, 100)
    w[0] = 0
    report = sparsity_report(model, {**_filters([0]), "3": {"weight": w}})
    assert report["layers"]["0"] == {"total": 72, "pruned": 18, "sparsity": 0.25}
    assert report["layers"]["3"]["pruned"] == 100
    assert report["total"] == 372 and report["pruned"] == 118
    assert report["sparsity"] == pytest.approx(118 / 372)
    assert sparsity_report(model, {})["sparsity"] == 0.0


def test_unknown_mask_names_and_bad_arguments_raise():
    model, x = _tiny()
    with pytest.raises(ConfigError, match="nope"):
        count_params(model, {"nope": {"weight": torch.ones(1)}})
    with pytest.raises(ConfigError, match="nope"):
        sparsity_report(model, {"nope": {"weight": torch.ones(1)}})
    with pytest.raises(ConfigError, match="nope"):
        count_macs(model, x, {"nope": {"weight": torch.ones(1)}})
    with pytest.raises(ConfigError, match="repeats=0"):
        measure_latency(model, x, repeats=0)


def test_measure_latency_positive_and_restores_mode():
    model, x = _tiny()
    model.train()
    t = measure_latency(model, x, repeats=3, warmup=1)
    assert 0 < t < 1.0
    assert model.training
