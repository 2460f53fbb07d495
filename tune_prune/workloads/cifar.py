"""CIFAR-10 with a ResNet-56, read from the python-pickle batches without torchvision.

The model uses option-B shortcuts (1x1 conv + BN where the shape changes): the
zero-padding option-A shortcut is a non-module tensor op whose channel mapping a
dependency tracer such as torch-pruning cannot follow, so pruning the stage outputs
would break it. Option B costs two small 1x1 convs and keeps every group traceable.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tune_prune.errors import ConfigError, WorkloadError
from tune_prune.workloads.base import (
    Batch,
    ClassificationWorkload,
    InMemorySplits,
    TrainConfig,
    resolve_device,
    with_overrides,
)
from tune_prune.workloads.digits import BasicBlock

logger = logging.getLogger(__name__)

BATCH_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
EXPECTED_FILES = (*TRAIN_FILES, TEST_FILE)

_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
_STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


# --------------------------------------------------------------------------- reading


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


def _allowed_globals() -> dict[tuple[str, str], Any]:
    import _codecs

    reconstruct = _numpy_reconstruct()
    return {
        # The CIFAR files were written by Python 2 / numpy 1: numpy.core paths.
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 protocol-2 pickles encode bytes payloads through _codecs.encode.
        ("_codecs", "encode"): _codecs.encode,
    }


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and plain containers, and nothing else.

    The CIFAR batches are pickles (the data set's own format), and a pickle can name
    any importable callable. Whitelisting the handful of globals a numpy array needs
    means a tampered or wrong file fails with an error instead of running code.
    """

    def __init__(self, file: io.BufferedIOBase) -> None:
        # latin1 (as torchvision does): Python 2 str payloads become the exact bytes numpy wants.
        super().__init__(file, encoding="latin1")
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in a CIFAR batch"
            ) from None


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file as ``(uint8 images N x 3 x 32 x 32, int64 labels N)``."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = _NumpyOnlyUnpickler(fh).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise WorkloadError(f"cannot read CIFAR batch {str(path)!r}: {exc}") from exc
    if not isinstance(raw, dict):
        raise WorkloadError(f"CIFAR batch {str(path)!r} is a {type(raw).__name__}, not a dict")
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
    if "data" not in entry or "labels" not in entry:
        raise WorkloadError(
            f"CIFAR batch {str(path)!r} lacks 'data'/'labels' keys (has {sorted(entry)})"
        )
    data = np.asarray(entry["data"])
    labels = np.asarray(entry["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise WorkloadError(
            f"CIFAR batch {str(path)!r}: data must be uint8 of shape (N, 3072), "
            f"got {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise WorkloadError(
            f"CIFAR batch {str(path)!r}: labels must be N ints in 0..9, got shape {labels.shape}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def find_batch_dir(data_dir: str | Path) -> Path:
    """``data_dir`` itself or its ``cifar-10-batches-py`` child, whichever holds the files."""
    root = Path(data_dir).expanduser()
    for candidate in (root / BATCH_DIR, root):
        if all((candidate / f).is_file() for f in EXPECTED_FILES):
            return candidate
    where = root / BATCH_DIR if (root / BATCH_DIR).is_dir() else root
    missing = [f for f in EXPECTED_FILES if not (where / f).is_file()]
    state = "does not exist" if not root.exists() else f"lacks {missing}"
    raise WorkloadError(
        f"CIFAR-10 data_dir {str(root)!r} {state}; expected the python-pickle batches "
        f"{list(EXPECTED_FILES)} in it or in its {BATCH_DIR}/ subfolder "
        "(the 'CIFAR-10 python version' archive, extracted)"
    )


# --------------------------------------------------------------------------- model


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: 3 stages of n basic blocks at w, 2w, 4w channels.

    ``blocks_per_stage=3`` is ResNet-20, 9 is ResNet-56. ``widths`` overrides the three
    stage widths (e.g. a natively narrow net with a pruned model's shape, to compare).
    """

    def __init__(
        self,
        blocks_per_stage: int = 9,
        width: int = 16,
        num_classes: int = 10,
        widths: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        stage_widths = tuple(widths) if widths is not None else (width, 2 * width, 4 * width)
        if len(stage_widths) != 3 or min(stage_widths) < 1:
            raise ValueError(f"widths must be three positive channel counts, got {widths!r}")
        self.stem = nn.Sequential(
            nn.Conv2d(3, stage_widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(stage_widths[0]),
            nn.ReLU(inplace=True),
        )
        layers, in_ch = [], stage_widths[0]
        for stage, out_ch in enumerate(stage_widths):
            blocks = []
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_ch, out_ch, stride))
                in_ch = out_ch
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


# --------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Cifar10Config(TrainConfig):
    """CIFAR-10 settings; ``val_size`` images are held out of the training batches."""

    data_dir: str = dataclasses.field(default="data", metadata={"cache_key": False})
    synthetic: bool = False
    synthetic_train_size: int = 1024
    synthetic_test_size: int = 256
    blocks_per_stage: int = 9
    width: int = 16
    val_size: int = 5000
    split_seed: int = 0
    augment: bool = True
    batch_size: int = 128
    eval_batch_size: int = 1000
    baseline_epochs: float = 60.0
    baseline_lr: float = 0.1
    finetune_lr: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("blocks_per_stage", "width", "synthetic_train_size", "synthetic_test_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if (
            isinstance(self.val_size, bool)
            or not isinstance(self.val_size, int)
            or self.val_size < 1
        ):
            raise ConfigError(f"val_size must be a positive integer, got {self.val_size!r}")


class Cifar10Workload(InMemorySplits, ClassificationWorkload):
    """CIFAR-10 / ResNet-56 (option-B shortcuts), data held as uint8 on ``device``.

    Augmentation (4-pixel-pad random crop, horizontal flip) runs batched on the device
    and draws from the seeded generator, so a run is reproducible up to CUDA kernel
    nondeterminism. ``synthetic=True`` makes CIFAR-shaped, learnable random data for
    benchmarks and tests where the data set is absent.
    """

    name = "cifar10"
    model_version = "1"

    def __init__(self, config: Cifar10Config | None = None, **overrides: Any) -> None:
        base = config or Cifar10Config()
        if "data_dir" in overrides and overrides["data_dir"] is not None:
            overrides["data_dir"] = str(overrides["data_dir"])
        self.config = with_overrides(base, overrides, self.name)
        self.device = resolve_device(self.config.device)
        self._data = self._load()
        self._mean, self._std = _MEAN.to(self.device), _STD.to(self.device)

    def _load(self) -> dict[str, Batch]:
        cfg = self.config
        if cfg.synthetic:
            # val_size is meant for the real 50k images; synthetic val matches test size.
            val_size = cfg.synthetic_test_size
            train_x, train_y = _synthetic(cfg.synthetic_train_size + val_size, 1)
            test_x, test_y = _synthetic(cfg.synthetic_test_size, 2)
        else:
            folder = find_batch_dir(cfg.data_dir)
            train_x, train_y = _concat(read_cifar_batch(folder / f) for f in TRAIN_FILES)
            test_x, test_y = read_cifar_batch(folder / TEST_FILE)
            val_size = cfg.val_size
            logger.info(
                "read CIFAR-10 from %s: %d train, %d test", folder, len(train_y), len(test_y)
            )
        if val_size >= len(train_y):
            raise ConfigError(
                f"val_size must be smaller than the {len(train_y)} training images, got {val_size}"
            )
        perm = np.random.default_rng(cfg.split_seed).permutation(len(train_y))
        val_idx, train_idx = np.sort(perm[:val_size]), np.sort(perm[val_size:])
        parts = {
            "train": (train_x[train_idx], train_y[train_idx]),
            "val": (train_x[val_idx], train_y[val_idx]),
            "test": (test_x, test_y),
        }
        return {
            split: (
                torch.from_numpy(np.ascontiguousarray(x)).to(self.device),
                torch.from_numpy(np.ascontiguousarray(y)).to(self.device),
            )
            for split, (x, y) in parts.items()
        }

    def build_model(self) -> nn.Module:
        return CifarResNet(self.config.blocks_per_stage, self.config.width)

    def prepare_batch(self, x: Tensor, y: Tensor, train: bool, generator: torch.Generator) -> Batch:
        """uint8 -> normalised float on device; random crop + flip when training."""
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if train and self.config.augment:
            x = _augment(x, generator)
        x = (x.float() / 255.0 - self._mean) / self._std
        return x, y


def _concat(parts: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*parts)
    return np.concatenate(xs), np.concatenate(ys)


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise around 10 fixed class templates: right shape and dtype, and learnable."""
    templates = np.random.default_rng(0).integers(0, 256, size=(10, 3, 32, 32))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.int64)
    noise = rng.integers(0, 256, size=(n, 3, 32, 32))
    images = (templates[labels] + noise) // 2
    return images.astype(np.uint8), labels


def _augment(x: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Batched random crop (zero padding) and horizontal flip, randomness from ``generator``."""
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(x.device)
    flips = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (offsets[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (offsets[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    out = padded[batch, chan, rows, cols]
    return torch.where(flips[:, None, None, None], out.flip(3), out)
