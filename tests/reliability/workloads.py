"""Deliberately broken user workloads (``tests.reliability.workloads:<factory>``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tune_prune.workloads.digits import DigitsWorkload


class _TensorScore(DigitsWorkload):
    name = "tensor_score"

    def evaluate(self, model: nn.Module, split: str = "val") -> Any:
        return torch.tensor(super().evaluate(model, split))  # a tensor, not a float


class _NaNScore(DigitsWorkload):
    name = "nan_score"

    def evaluate(self, model: nn.Module, split: str = "val") -> Any:
        return float("nan")


class _StringScore(DigitsWorkload):
    name = "string_score"

    def evaluate(self, model: nn.Module, split: str = "val") -> Any:
        return "0.9"


class _NoLayers(nn.Module):
    """Ten logits without any Conv2d or Linear: nothing a pruner can select."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(1)
        self.scale = nn.Parameter(torch.ones(10))

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x).flatten(1)[:, :10] * self.scale


class _NoPrunable(DigitsWorkload):
    name = "no_prunable"

    def build_model(self) -> nn.Module:
        return _NoLayers()


class _LinearOnly(DigitsWorkload):
    """Linear layers only: fine for weight pruning, nothing for channel (Conv2d) pruning."""

    name = "linear_only"

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def tensor_score(**kw: Any) -> DigitsWorkload:
    return _TensorScore(**kw)


def nan_score(**kw: Any) -> DigitsWorkload:
    return _NaNScore(**kw)


def string_score(**kw: Any) -> DigitsWorkload:
    return _StringScore(**kw)


def no_prunable(**kw: Any) -> DigitsWorkload:
    return _NoPrunable(**kw)


def linear_only(**kw: Any) -> DigitsWorkload:
    return _LinearOnly(**kw)


class _Noisy(DigitsWorkload):
    """Fine-tuning draws from the *global* torch RNG (like dropout or augmentation would)."""

    name = "noisy"

    def finetune(self, model: nn.Module, epochs: float, lr: float, seed: int = 0) -> dict[str, Any]:
        stats = super().finetune(model, epochs, lr, seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        return stats


def noisy(**kw: Any) -> DigitsWorkload:
    return _Noisy(**kw)
