"""Tiny deterministic models shared by the pruning tests (CPU-fast: 8-16 channels, 8x8 inputs).

Each builder seeds torch itself so that two calls return identical weights; BatchNorm
running statistics are randomised so that eval-mode BN is not the identity.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

IMAGE_SHAPE = (2, 3, 8, 8)
MLP_SHAPE = (4, 16)


def conv_linear_net() -> nn.Sequential:
    """Conv(3->10, 270 w) + conv(10->12, 1080) + linear(192->20, 3840) + linear(20->5, 100), seed 0."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 10, 3),
        nn.ReLU(),
        nn.Conv2d(10, 12, 3, bias=False),
        nn.Flatten(),
        nn.Linear(12 * 4 * 4, 20),
        nn.Linear(20, 5),
    )


def _randomise_bn(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running stats."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


class BasicBlock(nn.Module):
    """ResNet basic block: conv-bn-relu-conv-bn + shortcut (identity or 1x1 conv-bn)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResidualCNN(nn.Module):
    """stem(3->8) + block(8->8, identity) + block(8->16, stride 2, 1x1 shortcut) + fc."""

    def __init__(self, width: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


class ConcatCNN(nn.Module):
    """Two branches concatenated (4 + 6 channels) and added to a 10-channel conv.

    `cat([a, b]) + c` couples a's channels with c[0:4] and b's with c[4:10]: the
    concat offsets matter for both grouping and speedup.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.bn_stem = nn.BatchNorm2d(8)
        self.branch_a = nn.Conv2d(8, 4, 3, 1, 1)
        self.branch_b = nn.Conv2d(8, 6, 1)
        self.branch_c = nn.Conv2d(8, 10, 1)
        self.bn_cat = nn.BatchNorm2d(10)
        self.head = nn.Conv2d(10, 8, 3, 1, 1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn_stem(self.stem(x)))
        y = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1) + self.branch_c(x)
        y = torch.relu(self.bn_cat(y))
        y = nn.functional.max_pool2d(torch.relu(self.head(y)), 2)
        return self.fc(torch.flatten(y, 1))


class DepthwiseCNN(nn.Module):
    """MobileNet-style: conv-bn-relu, depthwise 3x3-bn-relu, pointwise 1x1-bn-relu, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False)
        self.bn_dw = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 16, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn_dw(self.dw(x)))
        x = torch.relu(self.bn_pw(self.pw(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class GroupConvCNN(nn.Module):
    """A grouped (not depthwise) conv: groups=2 over 8 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1)
        self.gconv = nn.Conv2d(8, 8, 3, 1, 1, groups=2)
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.gconv(x))
        x = torch.relu(self.conv3(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class MLP(nn.Module):
    """Linear(16->32)-BN1d-relu, Linear(32->32)-relu, Linear(32->10)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.bn1 = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.fc1(x)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def build(name: str, seed: int = 0) -> nn.Module:
    """Build one of the test models by name with deterministic weights, in eval mode."""
    torch.manual_seed(seed)
    builders = {
        "residual": ResidualCNN,
        "concat": ConcatCNN,
        "depthwise": DepthwiseCNN,
        "groupconv": GroupConvCNN,
        "mlp": MLP,
    }
    return _randomise_bn(builders[name](), seed + 1)


def dummy_input(name: str, seed: int = 0) -> torch.Tensor:
    """A deterministic input batch that fits the named model."""
    g = torch.Generator().manual_seed(seed)
    shape = MLP_SHAPE if name == "mlp" else IMAGE_SHAPE
    return torch.randn(*shape, generator=g)


MODEL_NAMES = ("residual", "concat", "depthwise", "mlp")


def masked_reference(model: nn.Module, masks: dict) -> nn.Module:
    """The reference masked model (a copy in eval mode): weights multiplied by their masks."""
    ref = copy.deepcopy(model)
    mods = dict(ref.named_modules())
    with torch.no_grad():
        for name, entry in masks.items():
            for p, m in entry.items():
                getattr(mods[name], p).mul_(m)
    return ref.eval()
