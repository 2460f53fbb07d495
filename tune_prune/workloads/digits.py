"""The default workload: scikit-learn's 8x8 digits with a small residual CNN.

Chosen because it ships with scikit-learn (no download), trains to >95% in seconds on
a laptop CPU, and still has what makes channel pruning non-trivial: BatchNorm, a
residual add that ties channels together, and a strided 1x1-conv downsample.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tune_prune.errors import ConfigError, WorkloadError
from tune_prune.workloads.base import (
    SPLITS,
    Batch,
    ClassificationWorkload,
    InMemorySplits,
    TrainConfig,
    resolve_device,
    with_overrides,
)

logger = logging.getLogger(__name__)


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn + shortcut; a 1x1 conv+BN shortcut when the shape changes.

    Option-B (projection) shortcuts keep every channel dependency visible to a
    graph tracer such as torch-pruning, unlike zero-padding shortcuts.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class DigitsResNet(nn.Module):
    """stem conv 1->w, block(w), strided block(w->2w), global average pool, Linear(2w, 10)."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


@dataclass(frozen=True)
class DigitsConfig(TrainConfig):
    """Digits settings; the split is fixed by ``split_seed`` so every trial sees the same data."""

    width: int = 16
    split_seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
            raise ConfigError(f"width must be a positive integer, got {self.width!r}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                raise ConfigError(f"{name} must be in (0, 0.5), got {value!r}")


class DigitsWorkload(InMemorySplits, ClassificationWorkload):
    """8x8 digits (1797 samples, 10 classes), stratified 60/20/20 split, standardised.

    The whole data set lives on ``device`` as float tensors. Training is deterministic
    for a given seed on a given machine and thread count (CPU kernels are; CUDA conv
    kernels may not be bit-exact).
    """

    name = "digits"
    model_version = "1"

    def __init__(self, config: DigitsConfig | None = None, **overrides: Any) -> None:
        self.config = with_overrides(config or DigitsConfig(), overrides, self.name)
        self.device = resolve_device(self.config.device)
        self._data = self._load()

    def _load(self) -> dict[str, Batch]:
        try:
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split
        except ImportError as exc:  # pragma: no cover - sklearn is a dependency
            raise WorkloadError("the digits workload needs scikit-learn") from exc
        cfg = self.config
        bunch = load_digits()
        x = torch.tensor(bunch.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
        y = torch.tensor(bunch.target, dtype=torch.long)
        idx = list(range(len(y)))
        held = cfg.val_fraction + cfg.test_fraction
        train_idx, rest = train_test_split(
            idx, test_size=held, random_state=cfg.split_seed, stratify=bunch.target
        )
        val_idx, test_idx = train_test_split(
            rest,
            test_size=cfg.test_fraction / held,
            random_state=cfg.split_seed,
            stratify=bunch.target[rest],
        )
        mean, std = x[train_idx].mean(), x[train_idx].std()
        x = (x - mean) / std
        out = {}
        for split, ids in zip(SPLITS, (train_idx, val_idx, test_idx)):
            t = torch.tensor(sorted(ids), dtype=torch.long)
            out[split] = (x[t].to(self.device), y[t].to(self.device))
        return out

    def build_model(self) -> nn.Module:
        return DigitsResNet(self.config.width)
