"""CIFAR-10 with a ResNet-20, read by torchvision from a local folder: a DataLoader workload.

    python examples/cifar10_resnet.py --data-dir ~/data        # check the data, print the command
    python -m tune_prune.search --workload examples/cifar10_resnet.py:workload \\
        --workload-option data_dir=~/data --pretrained resnet20.pt

Needs torchvision (``pip install torchvision``) and CIFAR-10 extracted as torchvision
lays it out, ``DATA_DIR/cifar-10-batches-py/`` (the python version,
https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz). Nothing is downloaded.
``data_dir`` defaults to the ``CIFAR10_DIR`` environment variable. Without
``pretrained`` weights (a ``torch.save(model.state_dict(), path)`` file) the search
first trains the baseline (``baseline_epochs``, default 30).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from tune_prune.errors import WorkloadError
from tune_prune.workloads import Workload, from_dataloaders

BATCH_DIR = "cifar-10-batches-py"
EXPECTED_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
TRAIN_SIZE = 50_000
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut: a 1x1 conv + BN where the shape changes, so a
    pruner's dependency tracer sees every channel the residual add ties together."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """He et al.'s CIFAR ResNet: 3 stages of ``blocks`` blocks (16, 32, 64 channels)."""

    def __init__(self, blocks: int = 3, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        layers: list[nn.Module] = []
        in_ch = width
        for stage in range(3):
            out_ch = width * 2**stage
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(in_ch, out_ch, stride))
                in_ch = out_ch
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def find_data_root(data_dir: str | os.PathLike[str] | None) -> Path:
    """The folder holding ``cifar-10-batches-py`` (``data_dir`` may name either one)."""
    chosen = data_dir if data_dir is not None else os.environ.get("CIFAR10_DIR")
    if not chosen:
        raise WorkloadError(
            "CIFAR-10: no data folder given; pass data_dir=... (--workload-option "
            "data_dir=DIR) or set CIFAR10_DIR to the folder holding cifar-10-batches-py/"
        )
    root = Path(chosen).expanduser().resolve()
    if root.name == BATCH_DIR:
        root = root.parent
    missing = [name for name in EXPECTED_FILES if not (root / BATCH_DIR / name).is_file()]
    if missing:
        raise WorkloadError(
            f"CIFAR-10: {root / BATCH_DIR} lacks {missing}; download "
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it in "
            f"{root} (this example never downloads)"
        )
    return root


def _torchvision() -> Any:
    try:
        import torchvision
    except ImportError as exc:
        raise WorkloadError(
            "CIFAR-10 example: torchvision is not installed; pip install torchvision "
            "(the build matching your torch)"
        ) from exc
    return torchvision


def split_indices(val_size: int) -> tuple[list[int], list[int]]:
    """(train, val) indices into the 50,000 training images, fixed by seed 0."""
    order = torch.randperm(TRAIN_SIZE, generator=torch.Generator().manual_seed(0)).tolist()
    return sorted(order[val_size:]), sorted(order[:val_size])


def build_loader(root: str, split: str, batch_size: int, num_workers: int, val_size: int) -> DataLoader:
    """One split's DataLoader; called lazily in each process (worker processes do not pickle)."""
    tv = _torchvision()
    T = tv.transforms
    normalize = [T.ToTensor(), T.Normalize(MEAN, STD)]
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *normalize])
    eval_tf = T.Compose(normalize)
    train_idx, val_idx = split_indices(val_size)
    if split == "train":
        dataset: Any = Subset(tv.datasets.CIFAR10(root, train=True, transform=train_tf), train_idx)
    elif split == "val":
        dataset = Subset(tv.datasets.CIFAR10(root, train=True, transform=eval_tf), val_idx)
    else:
        dataset = tv.datasets.CIFAR10(root, train=False, transform=eval_tf)
    return DataLoader(
        dataset,
        batch_size=batch_size if split == "train" else 512,
        shuffle=split == "train",
        num_workers=num_workers,
        # Workers restart each epoch, so each fine-tune call's seed reaches the augmentation.
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


def workload(
    data_dir: str | os.PathLike[str] | None = None,
    pretrained: str | os.PathLike[str] | None = None,
    batch_size: int = 128,
    num_workers: int = 2,
    val_size: int = 5000,
    **options: Any,
) -> Workload:
    """The factory for ``--workload examples/cifar10_resnet.py:workload``.

    45,000/5,000 train/val split of the training set (seed 0), the 10,000 test images
    as test. ``options`` go to ``from_dataloaders`` (finetune_lr, device, ...).
    """
    root = str(find_data_root(data_dir))
    _torchvision()  # fail here, not in the first trial
    options.setdefault("baseline_epochs", 30.0)
    options.setdefault("baseline_lr", 0.1)
    loader = functools.partial(
        build_loader, root, batch_size=batch_size, num_workers=num_workers, val_size=val_size
    )
    return from_dataloaders(
        ResNet20,
        functools.partial(loader, "train"),
        functools.partial(loader, "val"),
        functools.partial(loader, "test"),
        pretrained=pretrained,
        name="cifar10-resnet20",
        **options,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="folder holding cifar-10-batches-py/ (default $CIFAR10_DIR)")
    args = parser.parse_args(argv)
    try:
        built = workload(args.data_dir)
        sizes = {split: len(built.loader(split).dataset) for split in built.splits}  # type: ignore[attr-defined, arg-type]
    except WorkloadError as exc:
        sys.exit(str(exc))
    print(f"CIFAR-10 found: {sizes}")
    script = os.path.relpath(Path(__file__).resolve())
    print("search pruning schedules for ResNet-20 with:")
    print(
        f"  python -m tune_prune.search --workload {script}:workload "
        f"--workload-option data_dir={find_data_root(args.data_dir)} [--pretrained resnet20.pt]"
    )


if __name__ == "__main__":
    main()
