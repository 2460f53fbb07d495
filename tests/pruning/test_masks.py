"""Hook-based masking: exact zeros through training, clean unwrap, atomic save/load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tune_prune.errors import ConfigError
from tune_prune.pruning.masks import (
    held_masks,
    is_wrapped,
    load_masks_file,
    masks_from_zeros,
    merge_masks,
    save_masks,
    unwrap_model,
    wrap_model,
)


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _masks(model: nn.Sequential) -> dict:
    conv_mask = torch.ones_like(model[0].weight)
    conv_mask[:2] = 0
    lin_mask = (torch.rand_like(model[3].weight) > 0.5).float()
    return {"0": {"weight": conv_mask, "bias": torch.tensor([0.0, 0, 1, 1])}, "3": {"weight": lin_mask}}


def _train(model, opt, steps):
    x = torch.randn(16, 1, 8, 8)
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
])
def test_pruned_weights_stay_zero_after_optimizer_steps_with_stale_momentum(make_opt):
    model = _model()
    opt = make_opt(model.parameters())
    _train(model, opt, 3)  # momentum/Adam moments are now non-zero everywhere
    masks = _masks(model)
    wrap_model(model, masks)
    x = torch.randn(16, 1, 8, 8)
    for _ in range(20):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        assert torch.all(model[0].weight[masks["0"]["weight"] == 0] == 0)
        assert torch.all(model[0].bias[:2] == 0)
        assert torch.all(model[3].weight[masks["3"]["weight"] == 0] == 0)
    # surviving weights did train
    assert model[0].weight[2:].abs().sum() > 0


def test_an_optimizer_step_reapplies_only_the_masks_of_the_tensors_it_stepped():
    """Another model's optimizer must not touch (nor pay for) this wrapped model's masks."""
    wrapped, plain = _model(), _model()
    masks = _masks(wrapped)
    wrap_model(wrapped, masks)
    try:
        with torch.no_grad():
            wrapped[0].weight.fill_(1.0)  # masked entries now non-zero, out of band
        _train(plain, torch.optim.SGD(plain.parameters(), lr=0.1), 1)
        assert torch.all(wrapped[0].weight == 1.0)  # untouched by the plain model's step
        opt = torch.optim.SGD([wrapped[3].weight], lr=0.0)  # steps only the Linear weight
        opt.step()
        assert torch.all(wrapped[0].weight == 1.0)
        assert torch.all(wrapped[3].weight[masks["3"]["weight"] == 0] == 0)
        torch.optim.SGD(wrapped.parameters(), lr=0.0).step()
        assert torch.all(wrapped[0].weight[:2] == 0) and torch.all(wrapped[0].weight[2:] == 1.0)
    finally:
        unwrap_model(wrapped)


def test_unwrap_keeps_object_classes_names_and_zeros():
    model = _model()
    names_before = [n for n, _ in model.named_modules()]
    state_keys = list(model.state_dict())
    masks = _masks(model)
    same = wrap_model(model, masks)
    assert same is model and is_wrapped(model)
    assert list(model.state_dict()) == state_keys  # no wrapper names leak into checkpoints
    assert unwrap_model(model) is model
    assert not is_wrapped(model)
    assert [n for n, _ in model.named_modules()] == names_before
    assert type(model[0]) is nn.Conv2d and type(model[3]) is nn.Linear
    assert torch.all(model[0].weight[:2] == 0)
    # after unwrapping, training no longer holds the mask
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _train(model, opt, 1)
    assert model[3].weight[masks["3"]["weight"] == 0].abs().sum() > 0


def test_forward_sees_masked_weights_even_after_direct_writes():
    model = _model()
    masks = _masks(model)
    wrap_model(model, masks)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    model(torch.randn(1, 1, 8, 8))
    assert torch.all(model[0].weight[:2] == 0)
    assert held_masks(model)["0"]["weight"].shape == model[0].weight.shape


def test_bad_masks_name_module_and_shape():
    model = _model()
    with pytest.raises(ConfigError, match="'nope'"):
        wrap_model(model, {"nope": {"weight": torch.ones(1)}})
    with pytest.raises(ConfigError, match=r"shape \(2,\)"):
        wrap_model(model, {"0": {"weight": torch.ones(2)}})


def test_merge_and_zero_masks_and_roundtrip(tmp_path):
    a = {"x": {"weight": torch.tensor([1.0, 1, 0, 1])}}
    b = {"x": {"weight": torch.tensor([1.0, 0, 1, 1])}, "y": {"weight": torch.ones(2)}}
    merged = merge_masks(a, b)
    assert merged["x"]["weight"].tolist() == [1, 0, 0, 1]
    assert merged["y"]["weight"].tolist() == [1, 1]
    model = _model()
    masks = _masks(model)
    wrap_model(model, masks)
    unwrap_model(model)
    found = masks_from_zeros(model, ["0"])
    assert torch.equal(found["0"]["weight"], masks["0"]["weight"])
    save_masks(masks, tmp_path / "m" / "masks.pt")
    loaded = load_masks_file(tmp_path / "m" / "masks.pt")
    assert torch.equal(loaded["3"]["weight"], masks["3"]["weight"])
    assert not list((tmp_path / "m").glob("*.tmp"))
