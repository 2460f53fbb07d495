"""Masks are validated by one function, whichever consumer receives them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tune_prune.errors import ConfigError, SpeedupError
from tune_prune.pruning.masks import check_masks, wrap_model
from tune_prune.pruning.measure import count_macs, count_params
from tune_prune.pruning.speedup import speedup_model


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))


BAD = [
    ({"9": {"weight": torch.ones(4, 1, 3, 3)}}, "module '9' is not in the model"),
    ({"0": {"scale": torch.ones(4)}}, "has no tensor 'scale'"),
    ({"0": {"weight": torch.ones(4, 1, 2, 2)}}, r"shape \(4, 1, 2, 2\) does not match the tensor's shape \(4, 1, 3, 3\)"),
]


@pytest.mark.parametrize("masks,message", BAD)
def test_every_consumer_rejects_bad_masks_with_the_same_message(masks, message) -> None:
    dummy = torch.randn(1, 1, 6, 6)
    for call in (lambda: check_masks(_model(), masks), lambda: wrap_model(_model(), masks),
                 lambda: count_params(_model(), masks), lambda: count_macs(_model(), dummy, masks)):
        with pytest.raises(ConfigError, match=message):
            call()
    with pytest.raises(SpeedupError, match=message):  # speedup keeps its own error class
        speedup_model(_model(), masks, dummy)


def test_good_masks_pass_and_return_the_modules() -> None:
    model = _model()
    modules = check_masks(model, {"0": {"weight": torch.ones(4, 1, 3, 3)}})
    assert modules["0"] is model[0]
