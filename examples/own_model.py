"""Search pruning schedules for your own model: a small CNN trained on scikit-learn's digits.

The pattern for your project: a model class, DataLoaders, weights saved with
``torch.save(model.state_dict(), path)``, and a ``workload(**options)`` factory that
hands them to :func:`tune_prune.workloads.from_dataloaders`::

    python examples/own_model.py      # pretrain (a few seconds) and save the weights
    python -m tune_prune.search --workload examples/own_model.py:workload

Offline: the data ships with scikit-learn. The weights live next to this file
(``own_model.pt``) unless ``weights=PATH`` (``--workload-option weights=PATH``) or the
``OWN_MODEL_WEIGHTS`` environment variable names another file. The factory pretrains
them once when the file is missing, under a file lock and with an atomic rename, so
concurrent Ray workers neither train twice nor read a half-written file.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from tune_prune.atomic import atomic_torch_save, file_lock
from tune_prune.workloads import Workload, from_dataloaders

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "own_model.pt"
PRETRAIN_EPOCHS = 8
PRETRAIN_LR = 0.05
SEED = 0


class SmallCNN(nn.Module):
    """Two conv-BN-ReLU stages (the second strided), global average pool, linear head."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def digits_splits() -> dict[str, TensorDataset]:
    """The 1797 8x8 digits as 1x8x8 tensors in [0, 1], split by a fixed permutation."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SEED))
    bounds = {"train": (0, 1197), "val": (1197, 1497), "select": (1497, 1647), "test": (1647, len(y))}
    return {name: TensorDataset(x[order[a:b]], y[order[a:b]]) for name, (a, b) in bounds.items()}


def make_loaders(batch_size: int = 64) -> dict[str, DataLoader]:
    """Shuffled train batches; held-out splits in large fixed-order batches."""
    splits = digits_splits()
    loaders = {"train": DataLoader(splits["train"], batch_size=batch_size, shuffle=True)}
    for name in ("val", "select", "test"):
        loaders[name] = DataLoader(splits[name], batch_size=512)
    return loaders


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    return correct / len(loader.dataset)  # type: ignore[arg-type]


def pretrain(path: str | os.PathLike[str], epochs: int = PRETRAIN_EPOCHS) -> float:
    """Train SmallCNN (seeded) and save its state dict to ``path`` atomically; return val accuracy.

    Stands in for your own training script: tune_prune only needs the saved state dict.
    """
    path = Path(path)
    torch.manual_seed(SEED)
    model = SmallCNN()
    splits = digits_splits()
    train = DataLoader(
        splits["train"], batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(SEED)
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=PRETRAIN_LR, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    steps = epochs * len(train)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps))
    )
    model.train()
    for _ in range(epochs):
        for x, y in train:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            schedule.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(model.state_dict(), path)
    return accuracy(model, DataLoader(splits["val"], batch_size=512))


def weights_path(weights: str | os.PathLike[str] | None = None) -> Path:
    """``weights``, else $OWN_MODEL_WEIGHTS, else own_model.pt next to this file."""
    chosen = weights if weights is not None else os.environ.get("OWN_MODEL_WEIGHTS")
    return Path(chosen).expanduser().resolve() if chosen else DEFAULT_WEIGHTS


def ensure_pretrained(path: Path) -> Path:
    """Pretrain into ``path`` unless it exists; one process trains, the others wait for it."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.with_name(path.name + ".lock")):
            if not path.is_file():
                pretrain(path)
    return path


def workload(
    weights: str | os.PathLike[str] | None = None, batch_size: int = 64, **options: Any
) -> Workload:
    """The factory ``--workload examples/own_model.py:workload`` calls (in every Ray worker).

    ``options`` (``--workload-option KEY=VALUE``) go to ``from_dataloaders``:
    finetune_lr, device, lr_schedule, ...
    """
    path = ensure_pretrained(weights_path(weights))
    loaders = make_loaders(batch_size)
    return from_dataloaders(
        SmallCNN,
        loaders["train"],
        loaders["val"],
        loaders["test"],
        select=loaders["select"],
        pretrained=path,
        name="own-model-digits",
        **options,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help=f"where to save the state dict (default {DEFAULT_WEIGHTS})")
    parser.add_argument("--epochs", type=int, default=PRETRAIN_EPOCHS)
    args = parser.parse_args(argv)
    path = weights_path(args.weights)
    val_accuracy = pretrain(path, args.epochs)
    print(f"pretrained SmallCNN: val accuracy {val_accuracy:.3f}, weights saved to {path}")
    option = "" if path == DEFAULT_WEIGHTS else f" --workload-option weights={path}"
    script = os.path.relpath(Path(__file__).resolve())
    print("search pruning schedules for it with:")
    print(f"  python -m tune_prune.search --workload {script}:workload{option} --target-sparsity 0.8")


if __name__ == "__main__":
    main()
